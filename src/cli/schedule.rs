//! `dag-operator schedule next`: the next ticks of an expression, one RFC3339 UTC instant per
//! line, through the same function the scheduler and the cron-vector test use.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use dag_operator::schedule::next_ticks;

use super::{CliError, rfc3339};

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Print the next ticks of a schedule, strictly after --after.
    Next(NextArgs),
}

#[derive(Args, Debug)]
pub struct NextArgs {
    /// Cron expression (5 or 6 fields), descriptor, or `@every <duration>`; a `CRON_TZ=` or
    /// `TZ=` prefix overrides --timezone.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Print ticks strictly after this instant (RFC3339; default: now).
    #[arg(long, value_parser = rfc3339)]
    pub after: Option<DateTime<Utc>>,
    /// How many ticks to print.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Anchor of `@every` schedules (a DAG's spec.startDate).
    #[arg(long, value_parser = rfc3339)]
    pub start_date: Option<DateTime<Utc>>,
}

pub fn run(cmd: &ScheduleCommand) -> Result<(), CliError> {
    let ScheduleCommand::Next(args) = cmd;
    let after = args.after.unwrap_or_else(Utc::now);
    let ticks = next_ticks(
        &args.cron,
        &args.timezone,
        args.start_date,
        after,
        args.count,
    )
    .map_err(CliError::usage)?;
    let mut out = String::new();
    for tick in ticks {
        out.push_str(&tick.to_rfc3339_opts(SecondsFormat::Secs, true));
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

//! `dag-operator backfill` (SPEC §8): creates a Backfill of a DAG and, with `--wait`, follows
//! it to the end with a progress bar (done/total, rate, ETA). Exit 1 if it failed or is
//! invalid.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use dag_operator::api::backfill::{BackfillOrder, BackfillPhase, DagRef, Reprocess};
use dag_operator::api::{Backfill, BackfillSpec, BackfillStatus};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::kube::with_kube;
use super::{BackfillArgs, CliError, OrderArg, ReprocessArg};

fn spec_of(args: &BackfillArgs, dag: &str) -> BackfillSpec {
    BackfillSpec {
        dag_ref: DagRef {
            name: dag.to_string(),
        },
        start: args.start,
        end: args.end,
        concurrency: i32::try_from(args.concurrency).unwrap_or(i32::MAX),
        dry_run: args.dry_run,
        reprocess: match args.reprocess {
            ReprocessArg::None => Reprocess::None,
            ReprocessArg::Failed => Reprocess::Failed,
            ReprocessArg::All => Reprocess::All,
        },
        order: match args.order {
            OrderArg::OldestFirst => BackfillOrder::OldestFirst,
            OrderArg::NewestFirst => BackfillOrder::NewestFirst,
        },
        suspend: false,
        params: None,
    }
}

pub fn run(args: BackfillArgs) -> Result<(), CliError> {
    let Some(dag) = args.name.clone().or_else(|| args.dag_id.clone()) else {
        return Err(CliError::usage("name the DAG to backfill"));
    };
    if args.end <= args.start {
        return Err(CliError::usage(format!(
            "--end {} must be after --start {}",
            args.end.to_rfc3339(),
            args.start.to_rfc3339()
        )));
    }
    if args.concurrency == 0 || args.concurrency > 10_000 {
        return Err(CliError::usage(format!(
            "--concurrency {} must be between 1 and 10000",
            args.concurrency
        )));
    }
    let (kube, namespace) = (args.kube.clone(), args.namespace.clone());
    with_kube(
        &kube,
        namespace.as_deref(),
        |client, namespace| async move {
            let api: Api<Backfill> = Api::namespaced(client, &namespace);
            let mut bf = Backfill::new("", spec_of(&args, &dag));
            bf.metadata = ObjectMeta {
                generate_name: Some(format!("{}-", truncate(&dag, 200))),
                namespace: Some(namespace.clone()),
                ..Default::default()
            };
            let created = api
                .create(&PostParams::default(), &bf)
                .await
                .map_err(|e| CliError::runtime(format!("cannot create the Backfill: {e}")))?;
            let name = created.metadata.name.clone().unwrap_or_default();
            println!("backfill.dagoperator.io/{name} created in namespace {namespace}");
            if !args.wait {
                return Ok(());
            }
            follow(&api, &name).await
        },
    )
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Polls the Backfill's status until it ends, drawing progress on stderr.
async fn follow(api: &Api<Backfill>, name: &str) -> Result<(), CliError> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut first: Option<(Instant, i64)> = None;
    let mut last_line = String::new();
    loop {
        let status = match api.get(name).await {
            Ok(bf) => bf.status.unwrap_or_default(),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(CliError::runtime(format!(
                    "backfill {name} was deleted before it ended"
                )));
            }
            Err(e) => {
                eprintln!("(cannot read backfill {name}: {e}; retrying)");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let (done, total) = progress(&status);
        let now = Instant::now();
        let origin = *first.get_or_insert((now, done));
        let line = bar(&status, done, total, origin, now);
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if line != last_line {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
        last_line = line;
        let message = ready_message(&status);
        match status.phase {
            Some(BackfillPhase::Succeeded) => {
                if tty {
                    eprintln!();
                }
                println!("backfill {name} succeeded: {message}");
                if !status.planned_dates.is_empty() && status.created_runs == 0 {
                    println!("planned dates (first {}):", status.planned_dates.len());
                    for d in &status.planned_dates {
                        println!("  {}", d.to_rfc3339());
                    }
                }
                return Ok(());
            }
            Some(BackfillPhase::Failed) => {
                if tty {
                    eprintln!();
                }
                return Err(CliError::runtime(format!(
                    "backfill {name} failed: {message}"
                )));
            }
            Some(BackfillPhase::Invalid) if started.elapsed() > Duration::from_secs(10) => {
                if tty {
                    eprintln!();
                }
                return Err(CliError::runtime(format!(
                    "backfill {name} is invalid: {message}"
                )));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn progress(status: &BackfillStatus) -> (i64, i64) {
    let parsed = status.progress.as_deref().and_then(|p| {
        let (a, b) = p.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    parsed.unwrap_or((0, status.total_runs))
}

fn ready_message(status: &BackfillStatus) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// `[#######.............] 412/744  55%  3.1 runs/s  ETA 1m47s  Running`
fn bar(
    status: &BackfillStatus,
    done: i64,
    total: i64,
    origin: (Instant, i64),
    now: Instant,
) -> String {
    const WIDTH: i64 = 30;
    let filled = if total > 0 {
        (done * WIDTH / total).clamp(0, WIDTH)
    } else {
        0
    };
    let pct = if total > 0 { done * 100 / total } else { 0 };
    let elapsed = now.duration_since(origin.0).as_secs_f64();
    let rate = if elapsed >= 1.0 {
        (done - origin.1) as f64 / elapsed
    } else {
        0.0
    };
    let eta = if rate > 0.0 && total > done {
        format_secs(((total - done) as f64 / rate) as u64)
    } else {
        "-".to_string()
    };
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".to_string());
    format!(
        "[{}{}] {done}/{total} {pct:>3}%  {rate:.1} runs/s  ETA {eta}  {phase}, {} running",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        status.active_runs
    )
}

fn format_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_shows_counts_rate_and_eta() {
        let status = BackfillStatus {
            progress: Some("50/100".into()),
            total_runs: 100,
            phase: Some(BackfillPhase::Running),
            active_runs: 5,
            ..Default::default()
        };
        let (done, total) = progress(&status);
        assert_eq!((done, total), (50, 100));
        let t0 = Instant::now();
        let line = bar(&status, done, total, (t0, 0), t0 + Duration::from_secs(10));
        assert!(line.starts_with(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))));
        assert!(line.contains("50/100  50%"), "{line}");
        assert!(line.contains("5.0 runs/s"), "{line}");
        assert!(line.contains("ETA 10s"), "{line}");
        assert!(line.contains("Running, 5 running"), "{line}");
        assert_eq!(format_secs(107), "1m47s");
        assert_eq!(format_secs(7260), "2h01m");
    }
}

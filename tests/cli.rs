//! The `dag-operator` binary as a user runs it: output, exit codes, one-line errors.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dag-operator"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn schedule_next_prints_utc_instants_strictly_after() {
    let o = run(&[
        "schedule",
        "next",
        "--cron",
        "0 0 * * *",
        "--timezone",
        "Europe/Berlin",
        "--after",
        "2024-03-30T23:00:00Z",
        "--count",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "2024-03-31T22:00:00Z\n2024-04-01T22:00:00Z\n2024-04-02T22:00:00Z\n"
    );
}

#[test]
fn schedule_next_defaults_to_one_tick_after_now() {
    let o = run(&["schedule", "next", "--cron", "* * * * * *"]);
    assert!(o.status.success());
    let line = stdout(&o);
    let tick: chrono::DateTime<chrono::Utc> = line.trim().parse().expect("RFC3339");
    let now = chrono::Utc::now();
    assert!(
        tick > now - chrono::Duration::seconds(2) && tick <= now + chrono::Duration::seconds(2)
    );
}

#[test]
fn every_invalid_class_exits_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--cron", "* * *"], "got 3"),
        (&["--cron", "0 24 * * *"], "hour field \"24\""),
        (&["--cron", "*/0 * * * *"], "minute field \"*/0\""),
        (&["--cron", "0 0 * * 1-9/x"], "day-of-week field \"1-9/x\""),
        (
            &["--cron", "0 0 * smarch *"],
            "month field \"smarch\": unknown name",
        ),
        (&["--cron", "0 0 5-1 * *"], "day-of-month field \"5-1\""),
        (&["--cron", "0 0 * * 5#6"], "day-of-week field \"5#6\""),
        (
            &["--cron", "0 0 * * *", "--timezone", "Atlantis/Capital"],
            "unknown time zone \"Atlantis/Capital\"",
        ),
        (
            &["--cron", "CRON_TZ=Nowhere/Town 0 0 * * *"],
            "unknown time zone \"Nowhere/Town\"",
        ),
        (&["--cron", "@every 10m"], "@every needs spec.startDate"),
        (&["--cron", "@every ten"], "invalid @every duration"),
        (&["--cron", "@fortnightly"], "unknown descriptor"),
        (&["--cron", "what is this even"], "expected 5 fields"),
        (&["--cron", ""], "empty schedule"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["schedule", "next"];
        full.extend_from_slice(args);
        let o = run(&full);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should contain {needle:?}"
        );
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["schedule", "next"]).status.code(), Some(2));
    assert_eq!(
        run(&[
            "schedule",
            "next",
            "--cron",
            "* * * * *",
            "--after",
            "yesterday"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn unfinished_subcommands_say_so_and_exit_1() {
    for args in [
        vec!["run"],
        vec!["migrate"],
        vec!["trigger", "etl"],
        vec!["runs"],
        vec![
            "backfill",
            "etl",
            "--start",
            "2024-01-01T00:00:00Z",
            "--end",
            "2024-02-01T00:00:00Z",
        ],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("not implemented yet"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["crds", "--help"],
        vec!["migrate", "--help"],
        vec!["schedule", "next", "--help"],
        vec!["trigger", "--help"],
        vec!["backfill", "--help"],
        vec!["runs", "--help"],
    ] {
        let o = run(&args);
        assert!(o.status.success(), "{args:?}");
        assert!(stdout(&o).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn crds_prints_three_documents() {
    let o = run(&["crds"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 3);
    for name in [
        "dags.dagoperator.io",
        "pools.dagoperator.io",
        "backfills.dagoperator.io",
    ] {
        assert!(text.contains(name), "{name}");
    }
}

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
fn backfill_refuses_a_bad_range_or_concurrency_before_talking_to_the_cluster() {
    // the Go prototype's flag names are accepted too
    for (args, needle) in [
        (
            vec![
                "backfill",
                "etl",
                "--start",
                "2024-02-01T00:00:00Z",
                "--end",
                "2024-01-01T00:00:00Z",
            ],
            "must be after --start",
        ),
        (
            vec![
                "backfill",
                "--backfill-dag-id",
                "etl",
                "--backfill-start",
                "2024-01-01T00:00:00Z",
                "--backfill-end",
                "2024-01-01T00:00:00Z",
            ],
            "must be after --start",
        ),
        (
            vec![
                "backfill",
                "etl",
                "--start",
                "2024-01-01T00:00:00Z",
                "--end",
                "2024-02-01T00:00:00Z",
                "--backfill-concurrency",
                "0",
            ],
            "--concurrency 0",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

/// Runs the binary with no database configured at all (none of the variables the
/// --database-url / --db-* flags read).
fn run_without_database(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dag-operator"));
    for var in [
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_USER",
        "DB_PASSWORD",
        "DB_NAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().expect("binary runs")
}

#[test]
fn migrate_and_runs_without_a_database_are_usage_errors() {
    for args in [
        vec!["migrate"],
        vec!["runs"],
        vec!["runs", "etl", "-o", "json"],
    ] {
        let o = run_without_database(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(
            err.contains("--database-url") && err.contains("--db-host"),
            "{args:?}: {err:?}"
        );
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn runs_with_an_unknown_state_is_a_usage_error() {
    let o = run_without_database(&["runs", "--state", "bogus"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("\"bogus\"") && err.contains("running, success, failed, cancelled"));
    // checked before any connection: the same with a database configured
    let o = run_without_database(&[
        "runs",
        "--database-url",
        "postgres://u@127.0.0.1:1/x",
        "--state",
        "Running!",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn an_unreachable_database_is_one_line_exit_1_without_the_password() {
    for args in [
        vec![
            "migrate",
            "--database-url",
            "postgres://dagop:s3cret@127.0.0.1:1/dagop",
        ],
        // the URL built from the --db-* flags, with a password that needs encoding
        vec![
            "runs",
            "--db-host",
            "127.0.0.1",
            "--db-port",
            "1",
            "--db-user",
            "dagop",
            "--db-password",
            "s3cret/@:?",
        ],
    ] {
        let o = run_without_database(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(
            err.contains("cannot reach PostgreSQL at 127.0.0.1:1/dagop"),
            "{args:?}: {err:?}"
        );
        assert!(!err.contains("s3cret"), "{args:?}: {err:?}");
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn a_malformed_database_url_is_a_usage_error() {
    let o = run_without_database(&["migrate", "--database-url", "not a url"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("invalid database URL"),
        "{}",
        stderr(&o)
    );
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

#[test]
fn run_without_a_database_is_a_usage_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_dag-operator"))
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .output()
        .expect("binary runs");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn trigger_refuses_malformed_params_before_touching_the_cluster() {
    for (params, needle) in [("{oops", "not valid JSON"), ("[1, 2]", "JSON object")] {
        let o = run(&[
            "trigger",
            "etl",
            "--params",
            params,
            "--kubeconfig",
            "/nonexistent",
        ]);
        assert_eq!(o.status.code(), Some(2), "{params}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{params}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1);
    }
}

#[test]
fn run_with_an_unknown_timezone_is_a_usage_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_dag-operator"))
        .args([
            "run",
            "--timezone",
            "Nowhere/Land",
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
        ])
        .output()
        .expect("binary runs");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("Nowhere/Land"), "{}", stderr(&o));
}

#[test]
fn completion_scripts_and_the_kubectl_plugin_name() {
    let o = run(&["completion", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("complete -F _dag__operator"),
        "{}",
        stdout(&o)
    );
    for shell in ["zsh", "fish"] {
        let o = run(&["completion", shell]);
        assert!(
            o.status.success() && stdout(&o).contains("trigger"),
            "{shell}"
        );
    }
    // as a kubectl plugin: the same binary, named kubectl-dag on the PATH
    let dir = std::env::temp_dir().join(format!("dagop-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let plugin = dir.join("kubectl-dag");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dag-operator"), &plugin).expect("symlink");
    let o = Command::new(&plugin)
        .args(["completion", "bash"])
        .output()
        .expect("plugin runs");
    assert!(stdout(&o).contains("kubectl-dag"), "{}", stdout(&o));
    let o = Command::new(&plugin)
        .args([
            "schedule",
            "next",
            "--cron",
            "@daily",
            "--after",
            "2024-01-01T00:00:00Z",
        ])
        .output()
        .expect("plugin runs");
    assert_eq!(stdout(&o).trim(), "2024-01-02T00:00:00Z");
    let _ = std::fs::remove_dir_all(&dir);
}

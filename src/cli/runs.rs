//! `dag-operator runs`: runs newest logical date first, as a table or as JSON. Through the
//! operator's API when `--server` (`DAGOP_SERVER`) is set (`runs_api.rs`: the API's JSON, the
//! latest try of each task), else from PostgreSQL (every column and every task instance).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use dag_operator::graph::TaskState;
use dag_operator::store::{RunFilter, RunRow, RunState, RunStore, TaskRow};
use serde_json::{Value, json};
use uuid::Uuid;

use super::migrate::{block_on, open, store_error};
use super::{CliError, OutputFormat, RunsArgs};

pub fn run(args: &RunsArgs) -> Result<(), CliError> {
    if args
        .server
        .server
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        return super::runs_api::run(args);
    }
    let state = match args.state.as_deref() {
        None => None,
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            CliError::usage(format!(
                "invalid --state {s:?}: expected one of running, success, failed, cancelled"
            ))
        })?),
    };
    let url = args.database.url()?;
    let filter = RunFilter {
        namespace: args.namespace.clone(),
        dag_name: args.name.clone(),
        state,
        limit: i64::from(args.limit),
    };
    let (runs, tasks) = block_on(async {
        let store = open(&url).await?;
        let runs = store
            .list_runs(&filter)
            .await
            .map_err(|e| store_error(&store, "cannot list runs", e))?;
        let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
        let tasks = store
            .task_instances(&ids)
            .await
            .map_err(|e| store_error(&store, "cannot list task instances", e))?;
        Ok((runs, tasks))
    })?;
    let mut by_run: HashMap<Uuid, Vec<TaskRow>> = HashMap::new();
    for t in tasks {
        by_run.entry(t.run_id).or_default().push(t);
    }
    let docs = || -> Vec<Value> {
        runs.iter()
            .map(|r| run_json(r, by_run.get(&r.id).map(Vec::as_slice).unwrap_or(&[])))
            .collect()
    };
    let out = match args.output {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&docs())
                .map_err(|e| CliError::runtime(format!("cannot render JSON: {e}")))?;
            text.push('\n');
            text
        }
        OutputFormat::Yaml => serde_yaml::to_string(&docs())
            .map_err(|e| CliError::runtime(format!("cannot render YAML: {e}")))?,
        OutputFormat::Name => runs.iter().map(|r| format!("run/{}\n", r.id)).collect(),
        OutputFormat::Table | OutputFormat::Wide if runs.is_empty() => {
            eprintln!("No runs found.");
            String::new()
        }
        OutputFormat::Table | OutputFormat::Wide => {
            let lines: Vec<Line> = runs
                .iter()
                .map(|r| line(r, by_run.get(&r.id).map(Vec::as_slice).unwrap_or(&[])))
                .collect();
            table(&lines, args.output == OutputFormat::Wide)
        }
    };
    print!("{out}");
    Ok(())
}

pub(super) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

/// `success=3 running=1`: the latest try of each task, counted by state ("-" for none).
fn task_summary(tasks: &[TaskRow]) -> String {
    let mut latest: BTreeMap<&str, &TaskRow> = BTreeMap::new();
    for t in tasks {
        let slot = latest.entry(t.task_name.as_str()).or_insert(t);
        if t.try_number > slot.try_number {
            *slot = t;
        }
    }
    summary_of(latest.values().map(|t| t.state))
}

/// `success=3 running=1`: tasks counted by state, in lifecycle order ("-" for none).
pub(super) fn summary_of(states: impl IntoIterator<Item = TaskState>) -> String {
    let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for state in states {
        // lifecycle order (TaskState::ALL) is the order of the TASKS column
        let rank = TaskState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(TaskState::ALL.len());
        *counts.entry((rank, state.as_str())).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .into_iter()
        .map(|((_, state), n)| format!("{state}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One run's cells: the table's, then the wide table's.
pub(super) struct Line {
    pub cells: [String; 9],
    pub wide: [String; 4],
}

fn line(r: &RunRow, tasks: &[TaskRow]) -> Line {
    Line {
        cells: [
            r.dag.namespace.clone(),
            r.dag.name.clone(),
            r.id.to_string(),
            r.run_type.as_str().to_string(),
            time(r.logical_date),
            r.state.as_str().to_string(),
            opt_time(r.started_at),
            opt_time(r.ended_at),
            task_summary(tasks),
        ],
        wide: [
            r.attempt.to_string(),
            r.priority.to_string(),
            r.backfill_name.clone().unwrap_or_else(|| "-".into()),
            r.spec_hash
                .as_deref()
                .map(|h| h.chars().take(12).collect())
                .unwrap_or_else(|| "-".into()),
        ],
    }
}

/// The table; `wide` adds the attempt, priority, Backfill and spec version (as kubectl's
/// `-o wide`).
pub(super) fn table(lines: &[Line], wide: bool) -> String {
    let mut header = vec![
        "NAMESPACE",
        "DAG",
        "RUN-ID",
        "TYPE",
        "LOGICAL-DATE",
        "STATE",
        "STARTED",
        "ENDED",
        "TASKS",
    ];
    if wide {
        header.extend(["ATTEMPT", "PRIORITY", "BACKFILL", "SPEC"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for l in lines {
        let mut row = l.cells.to_vec();
        if wide {
            row.extend(l.wide.iter().cloned());
        }
        rows.push(row);
    }
    let mut widths = vec![0usize; rows[0].len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn run_json(r: &RunRow, tasks: &[TaskRow]) -> Value {
    let full = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let opt = |t: Option<DateTime<Utc>>| t.map(full);
    json!({
        "id": r.id,
        "namespace": r.dag.namespace,
        "dag_name": r.dag.name,
        "dag_uid": r.dag_uid,
        "run_type": r.run_type.as_str(),
        "backfill_name": r.backfill_name,
        "logical_date": full(r.logical_date),
        "data_interval_start": full(r.data_interval_start),
        "data_interval_end": full(r.data_interval_end),
        "priority": r.priority,
        "state": r.state.as_str(),
        "params": r.params,
        "attempt": r.attempt,
        "created_at": full(r.created_at),
        "started_at": opt(r.started_at),
        "ended_at": opt(r.ended_at),
        "tasks_summary": task_summary(tasks),
        "task_instances": tasks.iter().map(|t| json!({
            "task_name": t.task_name,
            "try_number": t.try_number,
            "state": t.state.as_str(),
            "pool": t.pool,
            "pool_slots": t.pool_slots,
            "pod_name": t.pod_name,
            "exit_code": t.exit_code,
            "message": t.message,
            "queued_at": opt(t.queued_at),
            "started_at": opt(t.started_at),
            "ended_at": opt(t.ended_at),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, try_number: i32, state: &str) -> TaskRow {
        TaskRow {
            run_id: Uuid::nil(),
            task_name: name.into(),
            try_number,
            state: TaskState::parse(state).expect("a task state"),
            pool: None,
            pool_slots: 1,
            pod_name: None,
            exit_code: None,
            message: None,
            queued_at: None,
            started_at: None,
            ended_at: None,
            attempt: 1,
        }
    }

    #[test]
    fn summary_counts_the_latest_try_of_each_task_in_lifecycle_order() {
        let tasks = [
            task("a", 1, "success"),
            task("b", 1, "failed"),
            task("b", 2, "running"),
            task("c", 1, "success"),
            task("d", 1, "success"),
            task("e", 3, "up_for_retry"),
            task("e", 2, "failed"),
        ];
        assert_eq!(task_summary(&tasks), "running=1 up_for_retry=1 success=3");
        assert_eq!(task_summary(&[]), "-");
    }
}

#[cfg(test)]
mod wide_tests {
    use super::*;
    use dag_operator::store::{DagKey, RunType};

    #[test]
    fn the_wide_table_adds_attempt_priority_backfill_and_spec() {
        let at: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("time");
        let run = RunRow {
            id: Uuid::nil(),
            dag: DagKey::new("ns", "etl"),
            dag_uid: "u".into(),
            run_type: RunType::Backfill,
            backfill_name: Some("q1".into()),
            logical_date: at,
            data_interval_start: at,
            data_interval_end: at,
            priority: 7,
            state: RunState::Success,
            params: json!({}),
            attempt: 2,
            created_at: at,
            started_at: Some(at),
            ended_at: Some(at),
            spec_hash: Some("0123456789abcdef".into()),
        };
        let lines = [line(&run, &[])];
        let narrow = table(&lines, false);
        let wide = table(&lines, true);
        assert!(!narrow.contains("ATTEMPT"), "{narrow}");
        let lines: Vec<&str> = wide.lines().collect();
        assert!(
            lines[0].ends_with("ATTEMPT   PRIORITY   BACKFILL   SPEC"),
            "{wide}"
        );
        assert!(
            lines[1].ends_with("2         7          q1         0123456789ab"),
            "{wide}"
        );
    }
}

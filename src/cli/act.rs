//! `dag-operator cancel | rerun | mark | logs`: run actions and logs through the operator's
//! HTTP API (`--server`), as the caller the kubeconfig names. An action is recorded at once
//! and carried out by the leader; the command waits for the outcome (unless `--no-wait`).

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};
use std::io::Write;

use super::CliError;
use super::server::{Server, ServerArgs};

/// How long a command waits for the leader to carry an action out.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Args, Debug, Clone)]
pub struct ActArgs {
    /// The run's id (as `dag-operator runs` or the UI shows it).
    pub run: String,
    /// Return once the action is recorded, without waiting for its outcome.
    #[arg(long)]
    pub no_wait: bool,
    /// Namespace of the run (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkState {
    Success,
    Failed,
}

#[derive(Args, Debug, Clone)]
pub struct MarkArgs {
    #[command(flatten)]
    pub act: ActArgs,
    /// The state the run (or, with --task, the task) takes.
    #[arg(long, value_enum)]
    pub state: MarkState,
    /// Mark one task of the run instead of the whole run; its downstream tasks are then
    /// decided by their trigger rules.
    #[arg(long)]
    pub task: Option<String>,
    #[command(flatten)]
    pub scope: TaskScope,
}

#[derive(Args, Debug, Clone)]
pub struct ClearArgs {
    #[command(flatten)]
    pub act: ActArgs,
    /// The task to run again in the same run (a running one is stopped first).
    #[arg(long)]
    pub task: String,
    #[command(flatten)]
    pub scope: TaskScope,
}

/// Which tasks besides the one named a task action takes, and whether only to preview it.
#[derive(Args, Debug, Clone, Default)]
pub struct TaskScope {
    /// Also every task downstream of it.
    #[arg(long)]
    pub downstream: bool,
    /// Also every task upstream of it.
    #[arg(long)]
    pub upstream: bool,
    /// Print what would change (the API's dry run) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl TaskScope {
    /// The API's body of a task action.
    fn body(&self, action: &str, task: &str) -> Value {
        json!({"action": action, "task": task, "downstream": self.downstream, "upstream": self.upstream})
    }
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The run's id.
    pub run: String,
    /// The task.
    pub task: String,
    /// The try (default: the task's latest).
    #[arg(long = "try")]
    pub try_number: Option<i32>,
    /// Keep following the log while the Pod runs.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Namespace of the run (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))
}

/// Asks for `action` on a run and (unless `--no-wait`) waits for its outcome.
pub fn act(args: &ActArgs, action: &str) -> Result<(), CliError> {
    ask(args, action, json!({ "action": action }), false)
}

/// Asks for the action `body` on a run — or, with `dry_run`, prints what it would change —
/// and (unless `--no-wait`) waits for its outcome.
fn ask(args: &ActArgs, action: &str, body: Value, dry_run: bool) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let server = Server::connect(&args.server, args.namespace.as_deref()).await?;
        let ns = server.namespace.clone();
        let path = format!("/api/v1/namespaces/{ns}/runs/{}/actions", args.run);
        if dry_run {
            let preview = server
                .send(Method::POST, &format!("{path}?dryRun=true"), Some(&body))
                .await?
                .ok()?
                .json()?;
            print!("{}", preview_text(&preview));
            return if preview["allowed"] == true {
                Ok(())
            } else {
                Err(CliError::runtime(format!(
                    "run {}: {action} would be refused",
                    args.run
                )))
            };
        }
        let asked = server
            .send(Method::POST, &path, Some(&body))
            .await?
            .ok()?
            .json()?;
        let id = asked["id"].as_i64().unwrap_or_default();
        if args.no_wait {
            println!("{action} of run {} asked (action {id})", args.run);
            return Ok(());
        }
        let done = wait_for(&server, &ns, id).await?;
        let message = done["message"].as_str().unwrap_or_default();
        match done["state"].as_str() {
            Some("done") => {
                println!("run {}: {message}", args.run);
                Ok(())
            }
            _ => Err(CliError::runtime(format!(
                "run {}: {action} refused: {message}",
                args.run
            ))),
        }
    })
}

/// Polls an action until it is carried out.
async fn wait_for(server: &Server, ns: &str, id: i64) -> Result<Value, CliError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let action = server
            .send(
                Method::GET,
                &format!("/api/v1/namespaces/{ns}/actions/{id}"),
                None,
            )
            .await?
            .ok()?
            .json()?;
        if action["state"] != "pending" {
            return Ok(action);
        }
        if Instant::now() > deadline {
            return Err(CliError::runtime(format!(
                "action {id} is still pending after {}s: is the operator's leader running?",
                WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn mark(args: &MarkArgs) -> Result<(), CliError> {
    match (&args.task, args.state) {
        (None, _) if args.scope.downstream || args.scope.upstream || args.scope.dry_run => Err(
            CliError::usage("--downstream, --upstream and --dry-run go with --task"),
        ),
        (None, MarkState::Success) => act(&args.act, "mark_success"),
        (None, MarkState::Failed) => act(&args.act, "mark_failed"),
        (Some(task), state) => {
            let action = match state {
                MarkState::Success => "mark_task_success",
                MarkState::Failed => "mark_task_failed",
            };
            ask(
                &args.act,
                action,
                args.scope.body(action, task),
                args.scope.dry_run,
            )
        }
    }
}

/// `dag-operator clear`: one task (and its relatives) runs again in the same run.
pub fn clear(args: &ClearArgs) -> Result<(), CliError> {
    ask(
        &args.act,
        "clear_task",
        args.scope.body("clear_task", &args.task),
        args.scope.dry_run,
    )
}

/// A dry run's answer as lines: what it would say, then each task's change.
fn preview_text(preview: &Value) -> String {
    let mut out = format!(
        "{}{}\n",
        if preview["allowed"] == true {
            "would: "
        } else {
            "refused: "
        },
        preview["message"].as_str().unwrap_or_default()
    );
    if let (Some(from), Some(to)) = (
        preview["runState"]["from"].as_str(),
        preview["runState"]["to"].as_str(),
    ) {
        out.push_str(&format!("run: {from} → {to}\n"));
    }
    for c in preview["changes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} (try {}): {} → {}{}{} [{}]\n",
            c["task"].as_str().unwrap_or_default(),
            c["try"],
            c["from"].as_str().unwrap_or_default(),
            c["to"].as_str().unwrap_or_default(),
            if c["newTry"] == true {
                ", a new try"
            } else {
                ""
            },
            if c["podDeleted"] == true {
                ", its Pod deleted"
            } else {
                ""
            },
            c["reason"].as_str().unwrap_or_default(),
        ));
    }
    out
}

/// Prints a try's log (its latest try by default), following it with `-f`.
pub fn logs(args: &LogsArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let server = Server::connect(&args.server, args.namespace.as_deref()).await?;
        let ns = server.namespace.clone();
        let try_number = match args.try_number {
            Some(n) => n,
            None => {
                let run = server
                    .send(
                        Method::GET,
                        &format!("/api/v1/namespaces/{ns}/runs/{}", args.run),
                        None,
                    )
                    .await?
                    .ok()?
                    .json()?;
                latest_try(&run, &args.task).ok_or_else(|| {
                    CliError::runtime(format!("run {} has no task {:?}", args.run, args.task))
                })?
            }
        };
        let path = format!(
            "/api/v1/namespaces/{ns}/runs/{}/tasks/{}/tries/{try_number}/log{}",
            args.run,
            args.task,
            if args.follow { "?follow=true" } else { "" }
        );
        let response = server.open(Method::GET, &path, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return super::server::Answer { status, body }.ok().map(|_| ());
        }
        let kept = response
            .headers()
            .get("x-dagop-log-source")
            .is_some_and(|v| v == "kept");
        if kept {
            eprintln!("(the Pod is gone: the end of the log the operator kept)");
        }
        let mut body = response.into_body();
        let mut out = std::io::stdout().lock();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CliError::runtime(format!("reading the log: {e}")))?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data)
                    .and_then(|()| out.flush())
                    .map_err(|e| CliError::runtime(format!("writing the log: {e}")))?;
            }
        }
        Ok(())
    })
}

/// The highest try number of `task` in a run's JSON.
fn latest_try(run: &Value, task: &str) -> Option<i32> {
    run["tries"]
        .as_array()?
        .iter()
        .filter(|t| t["task"] == task)
        .filter_map(|t| t["try"].as_i64())
        .max()
        .and_then(|n| i32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_reads_as_lines() {
        let preview = json!({
            "allowed": true,
            "message": "clear b and 1 task below it",
            "runState": {"from": "failed", "to": "running"},
            "changes": [
                {"task": "b", "try": 1, "from": "failed", "to": "pending", "newTry": true, "podDeleted": false, "reason": "selected"},
                {"task": "c", "try": 1, "from": "upstream_failed", "to": "pending", "newTry": true, "podDeleted": false, "reason": "redecided"}
            ]
        });
        assert_eq!(
            preview_text(&preview),
            "would: clear b and 1 task below it\nrun: failed → running\n  b (try 1): failed → pending, a new try [selected]\n  c (try 1): upstream_failed → pending, a new try [redecided]\n"
        );
    }

    #[test]
    fn the_latest_try_of_a_task() {
        let run = json!({"tries": [
            {"task": "a", "try": 1}, {"task": "b", "try": 1}, {"task": "b", "try": 3}, {"task": "b", "try": 2}
        ]});
        assert_eq!(latest_try(&run, "b"), Some(3));
        assert_eq!(latest_try(&run, "a"), Some(1));
        assert_eq!(latest_try(&run, "c"), None);
    }
}

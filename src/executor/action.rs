//! Carrying out what users ask of runs (cancel, re-run, mark) and of their tasks (clear, mark:
//! [`super::task_action`]): the leader's executor polls the
//! pending actions, decides each from the run as it is ([`decide`], pure), writes the change
//! and the outcome in one transaction, then changes memory to match — Pods of an ended run are
//! deleted and its slots freed; a re-run run joins the running ones.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::state;
use super::task_action::{self, TaskVerb};
use super::{ExecError, ExecOutput, Executor, PodLauncher, RunFinished};
use crate::gate::Gate;
use crate::graph::{TaskGraph, TaskState};
use crate::key::Subject;
use crate::report::Notice;
use crate::store::{
    ActionKind, ActionOutcome, ActionWrite, ActionWritten, NewTask, RunAction, RunChange, RunRow,
    RunState, RunStore, TaskRow, latest_tries,
};

/// Most actions carried out in one step.
const ACTIONS_PER_STEP: i64 = 64;

/// The latest try of each task of a run, by task name.
pub fn latest_of_run(tries: &[TaskRow]) -> Vec<TaskRow> {
    let mut out: Vec<TaskRow> = latest_tries(tries).into_values().cloned().collect();
    out.sort_by(|a, b| a.task_name.cmp(&b.task_name));
    out
}

/// The states a re-run runs again.
fn rerun_wanted(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::UpstreamFailed | TaskState::Cancelled
    )
}

/// How long an action may wait to be carried out. It was authorized (by the caller's own
/// Kubernetes rights) when it was asked for; one still pending later than this (the operator
/// down, no leader) is refused as expired rather than carried out on a right its requester may
/// have lost since.
pub const ACTION_EXPIRY: chrono::Duration = chrono::Duration::minutes(10);

/// Decides an action at `now` from its run as it is now (`None`: no such run of the action's
/// DAG), the task graph of the spec version the run executes (`None`: not known; a task
/// action is then refused) and the latest try of each of the run's tasks. The API's dry run
/// and the UI's confirmation show what this decides, before it is asked for.
pub fn decide(
    action: &RunAction,
    run: Option<&RunRow>,
    graph: Option<&TaskGraph>,
    latest: &[TaskRow],
    now: DateTime<Utc>,
) -> ActionWrite {
    let refuse = |message: String| ActionWrite {
        action: action.id,
        outcome: ActionOutcome::Refused,
        message,
        change: None,
    };
    if now - action.requested_at > ACTION_EXPIRY {
        return refuse(format!(
            "expired: asked for at {} and not carried out within {} minutes (the operator was \
             down or without a leader); ask again",
            action.requested_at.to_rfc3339(),
            ACTION_EXPIRY.num_minutes()
        ));
    }
    let Some(run) = run.filter(|r| r.dag == action.dag) else {
        return refuse(format!(
            "no run {} of DAG {}",
            action
                .run_id
                .map_or_else(|| "(none named)".to_string(), |id| id.to_string()),
            action.dag
        ));
    };
    let by = &action.requested_by;
    let set = |to: RunState, tries_to: TaskState, what: &str| ActionWrite {
        action: action.id,
        outcome: ActionOutcome::Done,
        message: format!("{what} by {by}"),
        change: Some(RunChange::SetState {
            run: run.id,
            from: run.state,
            to,
            tries_to,
        }),
    };
    match action.kind {
        ActionKind::Trigger => refuse("a trigger is carried out when it is asked for".into()),
        ActionKind::Cancel => match run.state {
            RunState::Running => set(RunState::Cancelled, TaskState::Cancelled, "cancelled"),
            other => refuse(format!(
                "run {} is {}, not running: nothing to cancel",
                run.id,
                other.as_str()
            )),
        },
        ActionKind::MarkSuccess | ActionKind::MarkFailed => {
            let (to, tries_to, what) = if action.kind == ActionKind::MarkSuccess {
                (RunState::Success, TaskState::Success, "marked success")
            } else {
                (RunState::Failed, TaskState::Failed, "marked failed")
            };
            if run.state == to {
                refuse(format!("run {} is {} already", run.id, to.as_str()))
            } else {
                set(to, tries_to, what)
            }
        }
        ActionKind::ClearTask | ActionKind::MarkTaskSuccess | ActionKind::MarkTaskFailed => {
            let (verb, what) = match action.kind {
                ActionKind::ClearTask => (TaskVerb::Clear, "cleared"),
                ActionKind::MarkTaskSuccess => {
                    (TaskVerb::Mark(TaskState::Success), "marked success")
                }
                _ => (TaskVerb::Mark(TaskState::Failed), "marked failed"),
            };
            let Some(target) = &action.task else {
                return refuse("a task action names no task".into());
            };
            let Some(graph) = graph else {
                return refuse(format!(
                    "the spec version of run {} is not stored: its tasks are not known",
                    run.id
                ));
            };
            match task_action::plan(verb, target, graph, latest) {
                Err(why) => refuse(why),
                Ok(changes) => {
                    let names: Vec<String> = changes
                        .iter()
                        .map(|c| format!("{} ({} → {})", c.task, c.from, c.to()))
                        .collect();
                    ActionWrite {
                        action: action.id,
                        outcome: ActionOutcome::Done,
                        message: format!("{what} by {by}: {}", names.join(", ")),
                        change: Some(RunChange::Tasks {
                            run: run.id,
                            from: run.state,
                            changes,
                        }),
                    }
                }
            }
        }
        ActionKind::Rerun => {
            if run.state == RunState::Running {
                return refuse(format!(
                    "run {} is running: cancel it or wait for it to end, then re-run it",
                    run.id
                ));
            }
            let tasks: Vec<NewTask> = latest
                .iter()
                .filter(|t| rerun_wanted(t.state))
                .map(|t| NewTask {
                    task_name: t.task_name.clone(),
                    pool: t.pool.clone(),
                    pool_slots: t.pool_slots,
                })
                .collect();
            if tasks.is_empty() {
                return refuse(format!(
                    "run {} has no failed, upstream-failed or cancelled task to re-run",
                    run.id
                ));
            }
            let names: Vec<&str> = tasks.iter().map(|t| t.task_name.as_str()).collect();
            ActionWrite {
                action: action.id,
                outcome: ActionOutcome::Done,
                message: format!("re-run of {} by {by}", names.join(", ")),
                change: Some(RunChange::Rerun {
                    run: run.id,
                    from: run.state,
                    tasks,
                }),
            }
        }
    }
}

/// The event an action carried out (or refused) emits on its DAG.
pub fn notice(action: &RunAction, write: &ActionWrite) -> Notice {
    let subject = Subject::Dag(action.dag.clone());
    let run = action
        .run_id
        .map_or_else(String::new, |id| format!("run {id}: "));
    let message = format!("{run}{}", write.message);
    match (write.outcome, action.kind) {
        (ActionOutcome::Refused, _) => Notice::warning(subject, "ActionRefused", message),
        (ActionOutcome::Done, ActionKind::Cancel) => {
            Notice::normal(subject, "RunCancelled", message)
        }
        (ActionOutcome::Done, ActionKind::Rerun) => Notice::normal(subject, "RunRerun", message),
        (ActionOutcome::Done, ActionKind::MarkSuccess | ActionKind::MarkFailed) => {
            Notice::normal(subject, "RunMarked", message)
        }
        (ActionOutcome::Done, ActionKind::Trigger) => {
            Notice::normal(subject, "RunTriggered", message)
        }
        (ActionOutcome::Done, ActionKind::ClearTask) => {
            Notice::normal(subject, "TaskCleared", message)
        }
        (ActionOutcome::Done, ActionKind::MarkTaskSuccess | ActionKind::MarkTaskFailed) => {
            Notice::normal(subject, "TaskMarked", message)
        }
    }
}

impl<S: RunStore, G: Gate, L: PodLauncher> Executor<S, G, L> {
    /// Carries out the pending actions, when the poll is due.
    pub(super) async fn carry_out_actions(&mut self, now: DateTime<Utc>) -> Result<(), ExecError> {
        if self.next_action_poll.is_some_and(|t| t > now) {
            return Ok(());
        }
        let pending = self
            .store
            .pending_actions(self.cfg.namespace.as_deref(), ACTIONS_PER_STEP)
            .await?;
        self.next_action_poll =
            Some(now + chrono::Duration::from_std(self.cfg.action_poll).unwrap_or_default());
        for action in pending {
            self.carry_out(&action, now).await?;
        }
        Ok(())
    }

    async fn carry_out(&mut self, action: &RunAction, now: DateTime<Utc>) -> Result<(), ExecError> {
        let (run, latest, graph) = match action.run_id {
            None => (None, Vec::new(), None),
            Some(id) => match self.live.get(&id) {
                Some(live) => (
                    Some(live.run.clone()),
                    live.tasks.iter().map(|t| t.row.clone()).collect(),
                    Some(live.spec.clone()),
                ),
                None => {
                    let run = self.store.run(id).await?;
                    let tries = match &run {
                        Some(_) => self.store.task_instances(&[id]).await?,
                        None => Vec::new(),
                    };
                    let mut spec = None;
                    if let Some(r) = run.as_ref().filter(|_| action.kind.is_task_action()) {
                        self.resolve_specs(std::slice::from_ref(r), HashMap::new())
                            .await?;
                        spec = r
                            .spec_hash
                            .as_ref()
                            .and_then(|h| self.specs.get(h))
                            .cloned();
                    }
                    (run, latest_of_run(&tries), spec)
                }
            },
        };
        let write = decide(
            action,
            run.as_ref(),
            graph.as_ref().map(|s| &s.graph),
            &latest,
            now,
        );
        let ActionWritten::Recorded(changed) = self.store.write_action(&write).await? else {
            // the run changed under the decision (or another leader did it): next poll
            return Ok(());
        };
        self.emit(ExecOutput::Event(notice(action, &write)));
        match (&write.change, changed) {
            (Some(RunChange::SetState { from, to, .. }), Some(row)) => {
                if *from == RunState::Running {
                    self.ended_by_action(*row, *to, now);
                } else {
                    self.dags_changed.insert(row.dag.clone());
                }
            }
            (Some(RunChange::Rerun { .. }), Some(row)) => {
                self.add_runs(vec![*row], HashMap::new(), now).await?;
            }
            (Some(RunChange::Tasks { changes, .. }), Some(row)) => {
                self.tasks_changed(&row, changes);
                self.add_runs(vec![*row], HashMap::new(), now).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A task action changed tries of a run: a running run leaves memory (to be read again
    /// with its new tries); the holds of the tries it changed go back and their Pods go. The
    /// tries it left running keep their holds (re-adopted as they are).
    fn tasks_changed(&mut self, row: &RunRow, changes: &[crate::store::TaskChange]) {
        let Some(run) = self.live.remove(&row.id) else {
            return;
        };
        for c in changes {
            let Some(index) = run.spec.graph.index_of(&c.task) else {
                continue;
            };
            let Some(task) = run.tasks.get(index) else {
                continue;
            };
            if task.row.try_number != c.try_number {
                continue;
            }
            self.ledger.end(&state::holder(&task.key()));
            if c.kills() {
                self.doomed_pods.push(super::pod_key(&run.run, task));
            }
        }
        self.dirty.remove(&row.id);
        self.admit_dirty = true;
    }

    /// A running run an action ended: out of memory, its slots back, its Pods deleted.
    fn ended_by_action(&mut self, row: RunRow, to: RunState, now: DateTime<Utc>) {
        let id = row.id;
        if let Some(run) = self.live.remove(&id) {
            for task in &run.tasks {
                self.ledger.end(&state::holder(&task.key()));
            }
            self.runs_finished.push(RunFinished::of(&run, to, now));
            self.admit_dirty = true;
        }
        self.dirty.remove(&id);
        self.dags_changed.insert(row.dag.clone());
        self.doomed_runs.push(super::CancelledRun {
            dag: row.dag.clone(),
            run: id,
        });
        self.emit(ExecOutput::RunsEnded(vec![id]));
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::key::DagKey;
    use crate::store::RunType;

    fn at() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn run(state: RunState) -> RunRow {
        RunRow {
            id: Uuid::from_u128(7),
            dag: DagKey::new("a", "etl"),
            dag_uid: "uid".into(),
            run_type: RunType::Scheduled,
            backfill_name: None,
            logical_date: at(),
            data_interval_start: at(),
            data_interval_end: at(),
            priority: 0,
            state,
            params: serde_json::json!({}),
            attempt: 1,
            created_at: at(),
            started_at: Some(at()),
            ended_at: None,
            spec_hash: None,
        }
    }

    fn action(kind: ActionKind) -> RunAction {
        RunAction {
            id: 1,
            dag: DagKey::new("a", "etl"),
            run_id: Some(Uuid::from_u128(7)),
            kind,
            detail: serde_json::json!({}),
            task: None,
            requested_by: "alice".into(),
            requested_at: at(),
            done_at: None,
            outcome: None,
            message: None,
        }
    }

    fn try_of(task: &str, state: TaskState) -> TaskRow {
        TaskRow {
            run_id: Uuid::from_u128(7),
            task_name: task.into(),
            try_number: 1,
            state,
            pool: Some("db".into()),
            pool_slots: 2,
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
    fn an_action_waiting_longer_than_its_expiry_is_refused() {
        let asked = action(ActionKind::Cancel);
        let late = asked.requested_at + ACTION_EXPIRY + chrono::Duration::seconds(1);
        let w = decide(&asked, Some(&run(RunState::Running)), None, &[], late);
        assert_eq!((w.outcome, w.change), (ActionOutcome::Refused, None));
        assert!(w.message.starts_with("expired"), "{}", w.message);
        let on_time = asked.requested_at + ACTION_EXPIRY;
        let w = decide(&asked, Some(&run(RunState::Running)), None, &[], on_time);
        assert_eq!(w.outcome, ActionOutcome::Done);
    }

    #[test]
    fn cancel_ends_a_running_run_and_refuses_a_finished_one() {
        let w = decide(
            &action(ActionKind::Cancel),
            Some(&run(RunState::Running)),
            None,
            &[],
            at(),
        );
        assert_eq!(w.outcome, ActionOutcome::Done);
        assert_eq!(w.message, "cancelled by alice");
        assert_eq!(
            w.change,
            Some(RunChange::SetState {
                run: Uuid::from_u128(7),
                from: RunState::Running,
                to: RunState::Cancelled,
                tries_to: TaskState::Cancelled,
            })
        );
        let w = decide(
            &action(ActionKind::Cancel),
            Some(&run(RunState::Success)),
            None,
            &[],
            at(),
        );
        assert_eq!((w.outcome, w.change), (ActionOutcome::Refused, None));
    }

    #[test]
    fn a_run_of_another_dag_is_not_found() {
        let mut other = run(RunState::Running);
        other.dag = DagKey::new("b", "etl");
        let w = decide(&action(ActionKind::Cancel), Some(&other), None, &[], at());
        assert_eq!(w.outcome, ActionOutcome::Refused);
        assert!(w.message.starts_with("no run"), "{}", w.message);
        let w = decide(&action(ActionKind::Cancel), None, None, &[], at());
        assert_eq!(w.outcome, ActionOutcome::Refused);
    }

    #[test]
    fn rerun_takes_failed_upstream_failed_and_cancelled_tasks_only() {
        let latest = [
            try_of("extract", TaskState::Success),
            try_of("load", TaskState::Failed),
            try_of("report", TaskState::UpstreamFailed),
        ];
        let w = decide(
            &action(ActionKind::Rerun),
            Some(&run(RunState::Failed)),
            None,
            &latest,
            at(),
        );
        assert_eq!(w.outcome, ActionOutcome::Done);
        let Some(RunChange::Rerun { tasks, from, .. }) = w.change else {
            panic!("not a re-run: {w:?}");
        };
        assert_eq!(from, RunState::Failed);
        let names: Vec<&str> = tasks.iter().map(|t| t.task_name.as_str()).collect();
        assert_eq!(names, ["load", "report"]);
        assert_eq!(
            (tasks[0].pool.as_deref(), tasks[0].pool_slots),
            (Some("db"), 2)
        );
        // nothing to re-run, or still running: refused
        let ok = [try_of("extract", TaskState::Success)];
        let w = decide(
            &action(ActionKind::Rerun),
            Some(&run(RunState::Success)),
            None,
            &ok,
            at(),
        );
        assert_eq!(w.outcome, ActionOutcome::Refused);
        let w = decide(
            &action(ActionKind::Rerun),
            Some(&run(RunState::Running)),
            None,
            &latest,
            at(),
        );
        assert_eq!(w.outcome, ActionOutcome::Refused);
    }

    #[test]
    fn mark_relabels_and_refuses_the_same_state() {
        let w = decide(
            &action(ActionKind::MarkSuccess),
            Some(&run(RunState::Failed)),
            None,
            &[],
            at(),
        );
        assert_eq!(w.message, "marked success by alice");
        assert!(matches!(
            w.change,
            Some(RunChange::SetState {
                from: RunState::Failed,
                to: RunState::Success,
                ..
            })
        ));
        let w = decide(
            &action(ActionKind::MarkFailed),
            Some(&run(RunState::Failed)),
            None,
            &[],
            at(),
        );
        assert_eq!(w.outcome, ActionOutcome::Refused);
        let n = notice(&action(ActionKind::MarkFailed), &w);
        assert_eq!((n.reason, n.warning), ("ActionRefused", true));
    }

    #[test]
    fn latest_tries_keeps_the_highest_try_of_each_task() {
        let mut second = try_of("load", TaskState::Success);
        second.try_number = 2;
        let latest = latest_of_run(&[
            try_of("load", TaskState::Failed),
            second,
            try_of("extract", TaskState::Success),
        ]);
        let got: Vec<(&str, i32)> = latest
            .iter()
            .map(|t| (t.task_name.as_str(), t.try_number))
            .collect();
        assert_eq!(got, [("extract", 1), ("load", 2)]);
    }
}

//! Task-level actions (issue 29, item 3), like Airflow's Clear and Mark: which tasks of a run
//! change, and how — pure, so the same function decides what the leader writes and what a
//! confirmation (the API's `?dryRun=true`, the UI's confirmation page) shows beforehand.
//!
//! - **Selection**: the task, with every task below it (`downstream`) and/or above it
//!   (`upstream`), transitively.
//! - **Clear**: each selected task gets a new `pending` try. One already `pending` is left as
//!   it is. An unfinished latest try (queued, running, up for retry) ends `cancelled` first and
//!   its Pod is deleted — as Airflow kills a running task it clears and runs it again.
//! - **Mark success / failed**: each selected task's latest try takes the state (ended now; a
//!   queued or running one has its Pod deleted). One already in that state is left as it is.
//! - **Re-decided**: a task below a changed one that never ran (`upstream_failed`, or
//!   `skipped` by its trigger rule, with no Pod) gets a new `pending` try too, so its trigger
//!   rule decides it again from the new states. Tasks that ran keep their results.
//!
//! The run is (or goes back to) `running`; the executor then decides the pending tasks by
//! their trigger rules and ends the run with the graph's outcome, as always.

use std::collections::BTreeSet;

use crate::graph::{TaskGraph, TaskState};
use crate::store::{ChangeReason, TaskChange, TaskEffect, TaskRow, TaskTarget};

/// What is done to the selected tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskVerb {
    Clear,
    Mark(TaskState),
}

/// The tasks a target selects: the task, and its chosen relatives, by index.
pub fn selection(graph: &TaskGraph, task: usize, target: &TaskTarget) -> BTreeSet<usize> {
    let mut out = BTreeSet::from([task]);
    if target.upstream {
        let mut stack = vec![task];
        while let Some(t) = stack.pop() {
            for &u in graph.upstream(t) {
                if out.insert(u) {
                    stack.push(u);
                }
            }
        }
    }
    if target.downstream {
        out.extend(below(graph, &BTreeSet::from([task])));
    }
    out
}

/// Every task transitively below any of `from` (not `from` themselves, unless below another).
fn below(graph: &TaskGraph, from: &BTreeSet<usize>) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<usize> = from.iter().copied().collect();
    while let Some(t) = stack.pop() {
        for d in 0..graph.len() {
            if graph.upstream(d).contains(&t) && out.insert(d) {
                stack.push(d);
            }
        }
    }
    out
}

/// A task that never ran because of its upstreams' states: decided again when they change.
fn never_ran_by_rule(row: &TaskRow) -> bool {
    matches!(row.state, TaskState::UpstreamFailed | TaskState::Skipped)
        && row.pod_name.is_none()
        && row.started_at.is_none()
}

/// The changes `verb` on `target` makes, given the run's graph and the latest try of each of
/// its tasks, in the graph's task order; an error says why it cannot be done (an unknown
/// task, or nothing would change).
pub fn plan(
    verb: TaskVerb,
    target: &TaskTarget,
    graph: &TaskGraph,
    latest: &[TaskRow],
) -> Result<Vec<TaskChange>, String> {
    let Some(task) = graph.index_of(&target.task) else {
        return Err(format!("no task {:?} in the run's DAG", target.task));
    };
    let rows: Vec<TaskRow> = (0..graph.len())
        .map(|i| {
            let name = graph.name(i);
            latest
                .iter()
                .find(|r| r.task_name == name)
                .cloned()
                .unwrap_or_else(|| TaskRow {
                    // a task without a try (a spec newer than the tries) counts as skipped
                    run_id: uuid::Uuid::nil(),
                    task_name: name.to_string(),
                    try_number: 0,
                    state: TaskState::Skipped,
                    pool: None,
                    pool_slots: 1,
                    pod_name: None,
                    exit_code: None,
                    message: None,
                    queued_at: None,
                    started_at: None,
                    ended_at: None,
                    attempt: 0,
                })
        })
        .collect();
    let change = |i: usize, effect: TaskEffect, why: ChangeReason| TaskChange {
        task: rows[i].task_name.clone(),
        try_number: rows[i].try_number,
        from: rows[i].state,
        effect,
        pool: rows[i].pool.clone(),
        pool_slots: rows[i].pool_slots,
        why,
    };
    let selected = selection(graph, task, target);
    let mut changes: Vec<Option<TaskChange>> = vec![None; graph.len()];
    for &i in &selected {
        let from = rows[i].state;
        changes[i] = match verb {
            TaskVerb::Clear if from == TaskState::Pending => None,
            TaskVerb::Clear => Some(change(i, TaskEffect::NewTry, ChangeReason::Selected)),
            TaskVerb::Mark(to) if from == to => None,
            TaskVerb::Mark(to) => Some(change(i, TaskEffect::Set(to), ChangeReason::Selected)),
        };
    }
    // below what changed, the tasks that never ran are decided again (cascading: one of them
    // re-decided may free the ones below it)
    let mut moved: BTreeSet<usize> = (0..graph.len()).filter(|&i| changes[i].is_some()).collect();
    loop {
        let more: Vec<usize> = below(graph, &moved)
            .into_iter()
            .filter(|&d| changes[d].is_none() && !selected.contains(&d))
            .filter(|&d| never_ran_by_rule(&rows[d]))
            .collect();
        if more.is_empty() {
            break;
        }
        for d in more {
            changes[d] = Some(change(d, TaskEffect::NewTry, ChangeReason::Redecided));
            moved.insert(d);
        }
    }
    let out: Vec<TaskChange> = changes.into_iter().flatten().collect();
    if out.is_empty() {
        return Err(match verb {
            TaskVerb::Clear => format!(
                "nothing to clear: {:?} and the tasks chosen with it are pending already",
                target.task
            ),
            TaskVerb::Mark(to) => format!(
                "nothing to mark: {:?} and the tasks chosen with it are {} already",
                target.task,
                to.as_str()
            ),
        });
    }
    Ok(out)
}

/// The latest states after `changes` (`states[i]` of task `i` of `graph`).
pub fn apply(graph: &TaskGraph, states: &[TaskState], changes: &[TaskChange]) -> Vec<TaskState> {
    let mut out = states.to_vec();
    for c in changes {
        if let Some(i) = graph.index_of(&c.task) {
            out[i] = c.to();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::graph::TriggerRule;
    use TaskState::*;

    fn row(name: &str, state: TaskState, ran: bool) -> TaskRow {
        TaskRow {
            run_id: uuid::Uuid::from_u128(7),
            task_name: name.into(),
            try_number: 1,
            state,
            pool: None,
            pool_slots: 1,
            pod_name: ran.then(|| format!("pod-{name}")),
            exit_code: None,
            message: None,
            queued_at: None,
            started_at: None,
            ended_at: None,
            attempt: 1,
        }
    }

    /// extract → load → report, and extract → audit (all_done)
    fn etl() -> TaskGraph {
        TaskGraph::build([
            ("extract", vec![], TriggerRule::AllSuccess),
            ("load", vec!["extract"], TriggerRule::AllSuccess),
            ("report", vec!["load"], TriggerRule::AllSuccess),
            ("audit", vec!["extract"], TriggerRule::AllDone),
        ])
        .expect("graph")
    }

    fn target(task: &str, downstream: bool, upstream: bool) -> TaskTarget {
        TaskTarget {
            task: task.into(),
            downstream,
            upstream,
        }
    }

    fn summary(changes: &[TaskChange]) -> Vec<(&str, TaskState, TaskState, ChangeReason)> {
        changes
            .iter()
            .map(|c| (c.task.as_str(), c.from, c.to(), c.why))
            .collect()
    }

    #[test]
    fn clearing_a_failed_task_redecides_what_never_ran_below_it() {
        let latest = [
            row("extract", Success, true),
            row("load", Failed, true),
            row("report", UpstreamFailed, false),
            row("audit", Success, true),
        ];
        let got = plan(
            TaskVerb::Clear,
            &target("load", false, false),
            &etl(),
            &latest,
        )
        .expect("changes");
        assert_eq!(
            summary(&got),
            [
                ("load", Failed, Pending, ChangeReason::Selected),
                ("report", UpstreamFailed, Pending, ChangeReason::Redecided),
            ]
        );
        assert!(
            got.iter()
                .all(|c| c.effect == TaskEffect::NewTry && !c.kills())
        );
    }

    #[test]
    fn clearing_with_upstream_takes_the_tasks_above_and_not_the_side_branch() {
        let latest = [
            row("extract", Success, true),
            row("load", Success, true),
            row("report", Failed, true),
            row("audit", Success, true),
        ];
        let got = plan(
            TaskVerb::Clear,
            &target("report", false, true),
            &etl(),
            &latest,
        )
        .expect("changes");
        let names: Vec<&str> = got.iter().map(|c| c.task.as_str()).collect();
        assert_eq!(names, ["extract", "load", "report"]);
    }

    #[test]
    fn clearing_a_running_task_deletes_its_pod_and_a_pending_one_is_refused() {
        let latest = [
            row("extract", Success, true),
            row("load", Running, true),
            row("report", Pending, false),
            row("audit", Success, true),
        ];
        let got = plan(
            TaskVerb::Clear,
            &target("load", false, false),
            &etl(),
            &latest,
        )
        .expect("changes");
        assert_eq!(got.len(), 1);
        assert!(got[0].kills(), "{got:?}");
        let err = plan(
            TaskVerb::Clear,
            &target("report", false, false),
            &etl(),
            &latest,
        )
        .expect_err("nothing to clear");
        assert!(err.starts_with("nothing to clear"), "{err}");
        let err = plan(
            TaskVerb::Clear,
            &target("nope", true, true),
            &etl(),
            &latest,
        )
        .expect_err("unknown");
        assert!(err.contains("no task \"nope\""), "{err}");
    }

    #[test]
    fn marking_success_sets_the_latest_try_and_frees_what_it_held_back() {
        let latest = [
            row("extract", Success, true),
            row("load", Failed, true),
            row("report", UpstreamFailed, false),
            row("audit", Success, true),
        ];
        let got = plan(
            TaskVerb::Mark(Success),
            &target("load", false, false),
            &etl(),
            &latest,
        )
        .expect("changes");
        assert_eq!(
            summary(&got),
            [
                ("load", Failed, Success, ChangeReason::Selected),
                ("report", UpstreamFailed, Pending, ChangeReason::Redecided),
            ]
        );
        assert_eq!(got[0].effect, TaskEffect::Set(Success));
        let err = plan(
            TaskVerb::Mark(Success),
            &target("extract", false, false),
            &etl(),
            &latest,
        )
        .expect_err("already");
        assert!(err.contains("success already"), "{err}");
    }

    fn rule() -> impl Strategy<Value = TriggerRule> {
        prop::sample::select(TriggerRule::ALL.to_vec())
    }

    /// A random DAG of up to 8 tasks (task `i` depends on the `j < i` its mask names), a
    /// latest try of each (state, and whether it ran), a task and the relatives chosen.
    #[allow(clippy::type_complexity)]
    fn case() -> impl Strategy<Value = (TaskGraph, Vec<TaskRow>, TaskTarget)> {
        (1usize..=8).prop_flat_map(|n| {
            (
                prop::collection::vec(any::<u8>(), n),
                prop::collection::vec(rule(), n),
                prop::collection::vec(
                    (prop::sample::select(TaskState::ALL.to_vec()), any::<bool>()),
                    n,
                ),
                0..n,
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(masks, rules, states, task, down, up)| {
                    let names: Vec<String> = (0..masks.len()).map(|i| format!("t{i}")).collect();
                    let graph = TaskGraph::build(masks.iter().zip(&rules).enumerate().map(
                        |(i, (m, r))| {
                            (
                                names[i].as_str(),
                                (0..i)
                                    .filter(|j| m & (1 << j) != 0)
                                    .map(|j| names[j].as_str())
                                    .collect::<Vec<_>>(),
                                *r,
                            )
                        },
                    ))
                    .expect("acyclic");
                    let rows = states
                        .iter()
                        .enumerate()
                        .map(|(i, (s, ran))| row(&names[i], *s, *ran))
                        .collect();
                    (graph, rows, target(&names[task], down, up))
                })
        })
    }

    /// Runs the graph to its end from `states`: every ready task succeeds.
    fn run_out(graph: &TaskGraph, states: &mut [TaskState]) {
        for s in states.iter_mut() {
            if matches!(s, Queued | Running | UpForRetry) {
                *s = Success;
            }
        }
        loop {
            let decisions = graph.evaluate(states);
            if decisions.is_empty() {
                break;
            }
            for (t, d) in decisions {
                states[t] = match d {
                    crate::graph::Decision::Ready => Success,
                    crate::graph::Decision::Skipped => Skipped,
                    crate::graph::Decision::UpstreamFailed => UpstreamFailed,
                };
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// A clear touches the selected closure, and outside it only tasks below a change
        /// that never ran; every selected task not pending gets a new try; clearing the same
        /// selection again finds nothing to do.
        #[test]
        fn clearing_stays_in_its_closure((graph, rows, target) in case()) {
            let task = graph.index_of(&target.task).expect("task");
            let selected = selection(&graph, task, &target);
            let states: Vec<TaskState> = rows.iter().map(|r| r.state).collect();
            match plan(TaskVerb::Clear, &target, &graph, &rows) {
                Err(_) => prop_assert!(selected.iter().all(|&i| states[i] == Pending)),
                Ok(changes) => {
                    let changed: BTreeSet<usize> = changes
                        .iter()
                        .map(|c| graph.index_of(&c.task).expect("known"))
                        .collect();
                    for &i in &selected {
                        prop_assert_eq!(changed.contains(&i), states[i] != Pending);
                    }
                    let below_selected = below(&graph, &selected);
                    for c in &changes {
                        let i = graph.index_of(&c.task).expect("known");
                        prop_assert_eq!(c.effect.clone(), TaskEffect::NewTry);
                        if !selected.contains(&i) {
                            prop_assert_eq!(c.why, ChangeReason::Redecided);
                            prop_assert!(never_ran_by_rule(&rows[i]));
                            prop_assert!(below_selected.contains(&i));
                        }
                    }
                    let after = apply(&graph, &states, &changes);
                    let rows2: Vec<TaskRow> = rows
                        .iter()
                        .zip(&after)
                        .map(|(r, s)| TaskRow { state: *s, ..r.clone() })
                        .collect();
                    let again = TaskTarget { downstream: false, upstream: false, ..target.clone() };
                    prop_assert!(plan(TaskVerb::Clear, &again, &graph, &rows2).is_err());
                }
            }
        }

        /// Marking success sets every selected task success and touches nothing else but
        /// never-ran tasks below; run to its end after it, no task is left pending whose
        /// upstreams are all final, and a selection with its downstream leaves nothing
        /// below it pending either.
        #[test]
        fn marking_success_lets_the_rules_decide_the_rest((graph, rows, target) in case()) {
            let states: Vec<TaskState> = rows.iter().map(|r| r.state).collect();
            let task = graph.index_of(&target.task).expect("task");
            let selected = selection(&graph, task, &target);
            let Ok(changes) = plan(TaskVerb::Mark(Success), &target, &graph, &rows) else {
                prop_assert!(selected.iter().all(|&i| states[i] == Success));
                return Ok(());
            };
            let mut after = apply(&graph, &states, &changes);
            for &i in &selected {
                prop_assert_eq!(after[i], Success);
            }
            for c in &changes {
                let i = graph.index_of(&c.task).expect("known");
                if !selected.contains(&i) {
                    prop_assert!(never_ran_by_rule(&rows[i]));
                    prop_assert_eq!(c.to(), Pending);
                }
            }
            run_out(&graph, &mut after);
            for t in 0..graph.len() {
                if after[t] == Pending {
                    prop_assert!(
                        graph.upstream(t).iter().any(|&u| !after[u].is_terminal()),
                        "t{} left pending with its upstreams final: {:?}", t, after
                    );
                }
            }
        }
    }
}

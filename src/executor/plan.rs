//! The executor's decisions, pure (SPEC §5): from a run's task graph, the latest try of each
//! task, what each running try's Pod says and the time, decide what happens next — a try
//! ends (success, retry or failure: timeouts, stuck Pods, vanished Pods), a retry falls due,
//! a pending task becomes queued, upstream_failed or skipped, the run ends — and when to look
//! again. No I/O: the executor writes what this decides.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::TaskSpec;
use crate::api::dag::RetryBackoff;
use crate::graph::{Decision, RunOutcome, TaskGraph, TaskState};

/// What a task's Pod says about its try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodVerdict {
    Running,
    Succeeded,
    Failed {
        exit_code: Option<i32>,
        message: String,
    },
    /// Pending with an image-pull or scheduling problem
    Stuck(String),
}

/// How the executor sees the Pod of a running try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodSight {
    /// nothing known yet: adopted after a restart, or missing from a relist; a Pod that
    /// stays unseen for the missing grace is taken as gone
    Unseen {
        since: DateTime<Utc>,
    },
    Seen(PodVerdict),
    /// the watch said it was deleted: after the same grace as an unseen Pod the try fails (a
    /// DAG or namespace being deleted usually deletes the Pods first; its runs are cancelled
    /// within that grace instead of failing)
    Gone {
        since: DateTime<Utc>,
    },
}

/// How a try's Pod is seen when the try is written `running` (its create answered): what
/// the watch said of the Pod meanwhile (it may be quicker than the answer) — `seen`, or
/// `deleted_since` when it reported the Pod deleted before the try was written — else running.
pub fn sight_at_start(seen: Option<&PodVerdict>, deleted_since: Option<DateTime<Utc>>) -> PodSight {
    match (seen, deleted_since) {
        (Some(verdict), _) => PodSight::Seen(verdict.clone()),
        (None, Some(since)) => PodSight::Gone { since },
        (None, None) => PodSight::Seen(PodVerdict::Running),
    }
}

/// A task's retry and timeout rules, from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRules {
    pub retries: i32,
    pub retry_delay_seconds: i32,
    pub retry_backoff: RetryBackoff,
    pub max_retry_delay_seconds: i32,
    pub timeout_seconds: Option<i64>,
}

impl From<&TaskSpec> for TaskRules {
    fn from(t: &TaskSpec) -> Self {
        TaskRules {
            retries: t.retries,
            retry_delay_seconds: t.retry_delay_seconds,
            retry_backoff: t.retry_backoff,
            max_retry_delay_seconds: t.max_retry_delay_seconds,
            timeout_seconds: t.timeout_seconds,
        }
    }
}

impl TaskRules {
    /// What a failed try becomes: `up_for_retry` while tries of the attempt are left.
    /// `used` counts the tries of the attempt, the failed one included.
    pub fn after_failure(&self, used: i32) -> TaskState {
        if used <= self.retries {
            TaskState::UpForRetry
        } else {
            TaskState::Failed
        }
    }

    /// The delay before the try after failed try number `used` of the attempt.
    pub fn retry_delay(&self, used: i32) -> Duration {
        retry_delay(
            self.retry_backoff,
            self.retry_delay_seconds,
            self.max_retry_delay_seconds,
            used,
        )
    }
}

/// The delay before try `failed_try + 1`.
pub fn retry_delay(backoff: RetryBackoff, base: i32, max: i32, failed_try: i32) -> Duration {
    let base = base.max(0) as u64;
    let secs = match backoff {
        RetryBackoff::Fixed => base,
        RetryBackoff::Exponential => {
            let exp = (failed_try.max(1) - 1).min(32) as u32;
            base.saturating_mul(1u64 << exp)
        }
    };
    Duration::from_secs(secs.min(max.max(0) as u64))
}

/// How long after a round of deletes that failed they are tried again: 1 s after the first
/// such round, doubling with each further round that fails in a row, at most 30 s.
pub fn delete_retry_delay(rounds_failed: u32) -> Duration {
    let exp = rounds_failed.saturating_sub(1).min(5);
    Duration::from_secs((1u64 << exp).min(30))
}

/// The latest try of one task, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TryView {
    pub state: TaskState,
    /// tries of this task in the run's current attempt, this one included
    pub used: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// meaningful while `running`
    pub pod: PodSight,
}

/// How long the planner waits on Pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// a Pod stuck Pending (image pull, unschedulable) this long fails its try
    pub stuck: Duration,
    /// a running try's Pod unseen this long is taken as gone
    pub unseen: Duration,
}

/// One decision about one task (by its index in the graph).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// a running try ended in `to` (`success`, `up_for_retry` or `failed`); `stop_pod`: its
    /// Pod may still run and must be deleted
    Ended {
        task: usize,
        to: TaskState,
        exit_code: Option<i32>,
        message: Option<String>,
        stop_pod: bool,
    },
    /// the delay of an `up_for_retry` try passed: it fails for good and the next try queues
    Retry { task: usize },
    /// a pending task's upstreams decided it: `queued`, `upstream_failed` or `skipped`
    Decided { task: usize, to: TaskState },
    /// the run timed out: an unfinished task that is not running (pending, queued, up for
    /// retry) is skipped
    Abandoned { task: usize, from: TaskState },
}

/// What to do with one run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    pub steps: Vec<Step>,
    /// where the run stands once the steps are applied
    pub outcome: RunOutcome,
    /// the next instant a decision depends on time (a timeout, a retry delay, a grace)
    pub wake_at: Option<DateTime<Utc>>,
    /// the run ended because it ran longer than `runTimeoutSeconds` (this many seconds)
    pub timed_out: Option<i64>,
}

/// When a run must have finished (`runTimeoutSeconds` after it started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunDeadline {
    pub limit_secs: i64,
    pub at: DateTime<Utc>,
}

impl RunDeadline {
    /// The deadline of a run started at `started` with `runTimeoutSeconds` `limit`.
    pub fn of(started: Option<DateTime<Utc>>, limit: Option<i64>) -> Option<Self> {
        let (started, limit_secs) = (started?, limit?);
        Some(RunDeadline {
            limit_secs,
            at: started + chrono::Duration::seconds(limit_secs),
        })
    }
}

/// [`plan_run`] for a run with a deadline: once it passed, every running try fails (its Pod
/// stopped), every other unfinished task is skipped, and the run fails.
pub fn plan_run_within(
    graph: &TaskGraph,
    rules: &[TaskRules],
    tries: &[TryView],
    patience: Patience,
    deadline: Option<RunDeadline>,
    now: DateTime<Utc>,
) -> RunPlan {
    let Some(deadline) = deadline.filter(|d| d.at <= now) else {
        let mut plan = plan_run(graph, rules, tries, patience, now);
        if let Some(d) = deadline {
            plan.wake_at = Some(plan.wake_at.map_or(d.at, |w| w.min(d.at)));
        }
        return plan;
    };
    let message = format!(
        "run timed out after {}s (runTimeoutSeconds)",
        deadline.limit_secs
    );
    let steps = tries
        .iter()
        .enumerate()
        .filter_map(|(task, view)| match view.state {
            TaskState::Running => Some(Step::Ended {
                task,
                to: TaskState::Failed,
                exit_code: None,
                message: Some(message.clone()),
                stop_pod: true,
            }),
            TaskState::Pending | TaskState::Queued | TaskState::UpForRetry => {
                Some(Step::Abandoned {
                    task,
                    from: view.state,
                })
            }
            _ => None,
        })
        .collect();
    RunPlan {
        steps,
        outcome: RunOutcome::Failed,
        wake_at: None,
        timed_out: Some(deadline.limit_secs),
    }
}

/// Decides one run. `tries[i]` and `rules[i]` belong to task `i` of `graph`.
pub fn plan_run(
    graph: &TaskGraph,
    rules: &[TaskRules],
    tries: &[TryView],
    patience: Patience,
    now: DateTime<Utc>,
) -> RunPlan {
    let mut steps = Vec::new();
    let mut wake: Option<DateTime<Utc>> = None;
    let mut soonest = |t: DateTime<Utc>| wake = Some(wake.map_or(t, |w| w.min(t)));
    let mut states: Vec<TaskState> = tries.iter().map(|t| t.state).collect();
    for (task, (view, rules)) in tries.iter().zip(rules).enumerate() {
        match view.state {
            TaskState::Running => match judge(view, rules, patience, now) {
                Judged::Ended {
                    to,
                    exit_code,
                    message,
                    stop_pod,
                } => {
                    if to == TaskState::UpForRetry {
                        soonest(now + chrono_of(rules.retry_delay(view.used)));
                    }
                    states[task] = to;
                    steps.push(Step::Ended {
                        task,
                        to,
                        exit_code,
                        message,
                        stop_pod,
                    });
                }
                Judged::Until(t) => {
                    if let Some(t) = t {
                        soonest(t);
                    }
                }
            },
            TaskState::UpForRetry => {
                let due = view
                    .ended_at
                    .map(|t| t + chrono_of(rules.retry_delay(view.used)));
                match due {
                    Some(due) if due > now => soonest(due),
                    _ => {
                        states[task] = TaskState::Queued;
                        steps.push(Step::Retry { task });
                    }
                }
            }
            _ => {}
        }
    }
    for (task, decision) in graph.evaluate(&states) {
        let to = match decision {
            Decision::Ready => TaskState::Queued,
            Decision::UpstreamFailed => TaskState::UpstreamFailed,
            Decision::Skipped => TaskState::Skipped,
        };
        states[task] = to;
        steps.push(Step::Decided { task, to });
    }
    RunPlan {
        steps,
        outcome: graph.outcome(&states),
        wake_at: wake,
        timed_out: None,
    }
}

enum Judged {
    Ended {
        to: TaskState,
        exit_code: Option<i32>,
        message: Option<String>,
        stop_pod: bool,
    },
    /// still running; look again at this instant, if time can change it
    Until(Option<DateTime<Utc>>),
}

/// Decides a running try from its Pod and the time.
fn judge(view: &TryView, rules: &TaskRules, patience: Patience, now: DateTime<Utc>) -> Judged {
    let started = view.started_at.unwrap_or(now);
    let failed = |exit_code: Option<i32>, message: String, stop_pod: bool| Judged::Ended {
        to: rules.after_failure(view.used),
        exit_code,
        message: Some(message),
        stop_pod,
    };
    // a deadline that passed fails the try; one still ahead is when to look again
    let timeout = rules
        .timeout_seconds
        .map(|limit| (limit, started + chrono::Duration::seconds(limit)));
    let timed_out = |stop_pod: bool, other: Option<DateTime<Utc>>| match timeout {
        Some((limit, at)) if at <= now => {
            failed(None, format!("timed out after {limit}s"), stop_pod)
        }
        Some((_, at)) => Judged::Until(Some(other.map_or(at, |o| o.min(at)))),
        None => Judged::Until(other),
    };
    match &view.pod {
        PodSight::Seen(PodVerdict::Succeeded) => Judged::Ended {
            to: TaskState::Success,
            exit_code: Some(0),
            message: None,
            stop_pod: false,
        },
        PodSight::Seen(PodVerdict::Failed { exit_code, message }) => {
            failed(*exit_code, message.clone(), false)
        }
        PodSight::Gone { since } => {
            let give_up = *since + chrono_of(patience.unseen);
            if give_up <= now {
                failed(None, "pod deleted before it finished".to_string(), false)
            } else {
                timed_out(false, Some(give_up))
            }
        }
        PodSight::Seen(PodVerdict::Stuck(reason)) => {
            let give_up = started + chrono_of(patience.stuck);
            if give_up <= now {
                failed(None, format!("pod stuck pending: {reason}"), true)
            } else {
                timed_out(true, Some(give_up))
            }
        }
        PodSight::Seen(PodVerdict::Running) => timed_out(true, None),
        PodSight::Unseen { since } => {
            let give_up = *since + chrono_of(patience.unseen);
            if give_up <= now {
                failed(None, "pod deleted before it finished".to_string(), true)
            } else {
                timed_out(true, Some(give_up))
            }
        }
    }
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::TriggerRule;
    use TaskState::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("RFC3339")
    }

    const PATIENCE: Patience = Patience {
        stuck: Duration::from_secs(300),
        unseen: Duration::from_secs(10),
    };

    fn rules(retries: i32, timeout: Option<i64>) -> TaskRules {
        TaskRules {
            retries,
            retry_delay_seconds: 30,
            retry_backoff: RetryBackoff::Exponential,
            max_retry_delay_seconds: 3600,
            timeout_seconds: timeout,
        }
    }

    fn view(state: TaskState, pod: PodSight) -> TryView {
        TryView {
            state,
            used: 1,
            started_at: Some(t("2025-01-01T00:00:00Z")),
            ended_at: None,
            pod,
        }
    }

    /// a → b (AllSuccess), and c (AllDone) after b
    fn chain() -> TaskGraph {
        TaskGraph::build([
            ("a", vec![], TriggerRule::AllSuccess),
            ("b", vec!["a"], TriggerRule::AllSuccess),
            ("c", vec!["b"], TriggerRule::AllDone),
        ])
        .expect("valid graph")
    }

    fn gone() -> PodSight {
        PodSight::Gone {
            since: t("2025-01-01T00:00:00Z"),
        }
    }

    fn pending() -> TryView {
        view(Pending, gone())
    }

    fn running(v: PodVerdict) -> TryView {
        view(Running, PodSight::Seen(v))
    }

    fn plan(tries: &[TryView], r: &[TaskRules], now: &str) -> RunPlan {
        plan_run(&chain(), r, tries, PATIENCE, t(now))
    }

    #[test]
    fn a_try_starts_seeing_what_the_watch_said_of_its_pod_meanwhile() {
        let at = t("2025-01-01T00:00:01Z");
        let failed = PodVerdict::Failed {
            exit_code: Some(1),
            message: "Error".into(),
        };
        assert_eq!(
            sight_at_start(None, None),
            PodSight::Seen(PodVerdict::Running)
        );
        assert_eq!(
            sight_at_start(Some(&failed), None),
            PodSight::Seen(failed.clone())
        );
        // deleted before the try was written: gone since then (its grace runs from there)
        assert_eq!(sight_at_start(None, Some(at)), PodSight::Gone { since: at });
    }

    #[test]
    fn failed_deletes_back_off_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=7).map(|n| delete_retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(delete_retry_delay(0).as_secs(), 1);
        assert_eq!(delete_retry_delay(u32::MAX).as_secs(), 30);
    }

    #[test]
    fn a_fresh_run_queues_its_roots_only() {
        let r = vec![rules(0, None); 3];
        let p = plan(
            &[pending(), pending(), pending()],
            &r,
            "2025-01-01T00:00:00Z",
        );
        assert_eq!(
            p.steps,
            [Step::Decided {
                task: 0,
                to: Queued
            }]
        );
        assert_eq!((p.outcome, p.wake_at), (RunOutcome::Running, None));
    }

    #[test]
    fn a_succeeded_pod_ends_its_try_and_queues_the_next_task() {
        let r = vec![rules(0, None); 3];
        let p = plan(
            &[running(PodVerdict::Succeeded), pending(), pending()],
            &r,
            "2025-01-01T00:01:00Z",
        );
        assert_eq!(
            p.steps,
            [
                Step::Ended {
                    task: 0,
                    to: Success,
                    exit_code: Some(0),
                    message: None,
                    stop_pod: false
                },
                Step::Decided {
                    task: 1,
                    to: Queued
                }
            ]
        );
    }

    #[test]
    fn a_failed_pod_retries_while_tries_are_left_then_fails_and_cascades() {
        let failed = PodVerdict::Failed {
            exit_code: Some(3),
            message: "Error".into(),
        };
        let r = vec![rules(1, None); 3];
        let p = plan(
            &[running(failed.clone()), pending(), pending()],
            &r,
            "2025-01-01T00:01:00Z",
        );
        assert_eq!(
            p.steps[0],
            Step::Ended {
                task: 0,
                to: UpForRetry,
                exit_code: Some(3),
                message: Some("Error".into()),
                stop_pod: false
            }
        );
        // the retry is due 30 s later
        assert_eq!(p.wake_at, Some(t("2025-01-01T00:01:30Z")));
        assert_eq!(p.steps.len(), 1);
        // the second try fails for good: b upstream_failed, c (AllDone) runs anyway
        let mut second = running(failed);
        second.used = 2;
        let p = plan(&[second, pending(), pending()], &r, "2025-01-01T00:05:00Z");
        assert_eq!(
            p.steps[1..],
            [
                Step::Decided {
                    task: 1,
                    to: UpstreamFailed
                },
                Step::Decided {
                    task: 2,
                    to: Queued
                }
            ]
        );
    }

    #[test]
    fn a_retry_falls_due_after_its_backoff() {
        let r = vec![rules(3, None); 3];
        let mut waiting = view(UpForRetry, gone());
        waiting.used = 2;
        waiting.ended_at = Some(t("2025-01-01T00:00:00Z"));
        // exponential: 30 s · 2^(2-1) = 60 s
        let early = plan(
            &[waiting.clone(), pending(), pending()],
            &r,
            "2025-01-01T00:00:59Z",
        );
        assert!(early.steps.is_empty());
        assert_eq!(early.wake_at, Some(t("2025-01-01T00:01:00Z")));
        let due = plan(&[waiting, pending(), pending()], &r, "2025-01-01T00:01:00Z");
        assert_eq!(due.steps, [Step::Retry { task: 0 }]);
        assert_eq!(due.outcome, RunOutcome::Running);
    }

    #[test]
    fn a_timeout_fails_the_try_and_stops_its_pod() {
        let r = vec![rules(0, Some(60)); 3];
        let before = plan(
            &[running(PodVerdict::Running), pending(), pending()],
            &r,
            "2025-01-01T00:00:59Z",
        );
        assert!(before.steps.is_empty());
        assert_eq!(before.wake_at, Some(t("2025-01-01T00:01:00Z")));
        let after = plan(
            &[running(PodVerdict::Running), pending(), pending()],
            &r,
            "2025-01-01T00:01:00Z",
        );
        assert_eq!(
            after.steps[0],
            Step::Ended {
                task: 0,
                to: Failed,
                exit_code: None,
                message: Some("timed out after 60s".into()),
                stop_pod: true
            }
        );
    }

    #[test]
    fn a_pod_stuck_pending_fails_after_the_grace() {
        let r = vec![rules(0, None); 3];
        let stuck = running(PodVerdict::Stuck("ImagePullBackOff".into()));
        let early = plan(
            &[stuck.clone(), pending(), pending()],
            &r,
            "2025-01-01T00:04:59Z",
        );
        assert_eq!(early.wake_at, Some(t("2025-01-01T00:05:00Z")));
        let late = plan(&[stuck, pending(), pending()], &r, "2025-01-01T00:05:00Z");
        assert!(matches!(
            &late.steps[0],
            Step::Ended { to: Failed, stop_pod: true, message: Some(m), .. } if m.contains("ImagePullBackOff")
        ));
    }

    #[test]
    fn a_pod_gone_or_unseen_too_long_fails_its_try() {
        let r = vec![rules(0, None); 3];
        let early = plan(
            &[view(Running, gone()), pending(), pending()],
            &r,
            "2025-01-01T00:00:09Z",
        );
        assert!(
            early.steps.is_empty(),
            "a deleted Pod's try waits for a cancellation"
        );
        assert_eq!(early.wake_at, Some(t("2025-01-01T00:00:10Z")));
        let gone = plan(
            &[view(Running, gone()), pending(), pending()],
            &r,
            "2025-01-01T00:00:10Z",
        );
        assert!(
            matches!(&gone.steps[0], Step::Ended { to: Failed, message: Some(m), .. } if m.contains("deleted"))
        );
        let since = t("2025-01-01T00:00:00Z");
        let unseen = view(Running, PodSight::Unseen { since });
        let early = plan(
            &[unseen.clone(), pending(), pending()],
            &r,
            "2025-01-01T00:00:09Z",
        );
        assert!(early.steps.is_empty());
        assert_eq!(early.wake_at, Some(t("2025-01-01T00:00:10Z")));
        let late = plan(&[unseen, pending(), pending()], &r, "2025-01-01T00:00:10Z");
        assert!(matches!(&late.steps[0], Step::Ended { to: Failed, .. }));
    }

    #[test]
    fn the_run_ends_when_every_task_has() {
        let r = vec![rules(0, None); 3];
        let done = |s| view(s, gone());
        let p = plan(
            &[done(Success), done(Success), running(PodVerdict::Succeeded)],
            &r,
            "2025-01-01T00:09:00Z",
        );
        assert_eq!(p.outcome, RunOutcome::Success);
        let p = plan(
            &[done(Failed), done(UpstreamFailed), done(Success)],
            &r,
            "2025-01-01T00:09:00Z",
        );
        assert_eq!(p.outcome, RunOutcome::Failed);
    }

    /// extract → load → cleanup (AllDone); notify (OneFailed) after extract and load; report
    /// (Always) after load
    fn handlers() -> TaskGraph {
        TaskGraph::build([
            ("extract", vec![], TriggerRule::AllSuccess),
            ("load", vec!["extract"], TriggerRule::AllSuccess),
            ("notify", vec!["extract", "load"], TriggerRule::OneFailed),
            ("cleanup", vec!["load"], TriggerRule::AllDone),
            ("report", vec!["load"], TriggerRule::Always),
        ])
        .expect("valid graph")
    }

    fn decided(p: &RunPlan) -> Vec<(usize, TaskState)> {
        let mut d: Vec<(usize, TaskState)> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Decided { task, to } => Some((*task, *to)),
                _ => None,
            })
            .collect();
        d.sort_by_key(|&(t, _)| t);
        d
    }

    #[test]
    fn an_always_task_queues_with_the_roots() {
        let r = vec![rules(0, None); 5];
        let p = plan_run(
            &handlers(),
            &r,
            &[pending(), pending(), pending(), pending(), pending()],
            PATIENCE,
            t("2025-01-01T00:00:00Z"),
        );
        assert_eq!(decided(&p), [(0, Queued), (4, Queued)]);
    }

    #[test]
    fn a_failure_for_good_queues_its_handlers_in_the_same_plan() {
        let r = vec![rules(0, None); 5];
        let failed = running(PodVerdict::Failed {
            exit_code: Some(1),
            message: "Error".into(),
        });
        let p = plan_run(
            &handlers(),
            &r,
            &[
                failed,
                pending(),
                pending(),
                pending(),
                running(PodVerdict::Running),
            ],
            PATIENCE,
            t("2025-01-01T00:01:00Z"),
        );
        assert!(matches!(
            p.steps[0],
            Step::Ended {
                task: 0,
                to: Failed,
                ..
            }
        ));
        // load upstream_failed; notify (OneFailed) and cleanup (AllDone) queued
        assert_eq!(decided(&p), [(1, UpstreamFailed), (2, Queued), (3, Queued)]);
        assert_eq!(p.outcome, RunOutcome::Running);
        // the handlers succeed: the run still failed
        let done = |s| view(s, gone());
        let p = plan_run(
            &handlers(),
            &r,
            &[
                done(Failed),
                done(UpstreamFailed),
                running(PodVerdict::Succeeded),
                done(Success),
                done(Success),
            ],
            PATIENCE,
            t("2025-01-01T00:02:00Z"),
        );
        assert_eq!(p.outcome, RunOutcome::Failed);
    }

    #[test]
    fn a_try_waiting_for_its_retry_decides_nothing_below_it() {
        let r = vec![rules(2, None); 5];
        let p = plan_run(
            &handlers(),
            &r,
            &[
                running(PodVerdict::Failed {
                    exit_code: Some(1),
                    message: "Error".into(),
                }),
                pending(),
                pending(),
                pending(),
                view(Success, gone()),
            ],
            PATIENCE,
            t("2025-01-01T00:01:00Z"),
        );
        assert!(matches!(
            p.steps[..],
            [Step::Ended {
                task: 0,
                to: UpForRetry,
                ..
            }]
        ));
        assert_eq!(p.outcome, RunOutcome::Running);
    }

    #[test]
    fn without_a_failure_the_notification_is_skipped_and_the_run_succeeds() {
        let r = vec![rules(0, None); 5];
        let done = |s| view(s, gone());
        let p = plan_run(
            &handlers(),
            &r,
            &[
                done(Success),
                running(PodVerdict::Succeeded),
                pending(),
                pending(),
                done(Success),
            ],
            PATIENCE,
            t("2025-01-01T00:01:00Z"),
        );
        assert_eq!(decided(&p), [(2, Skipped), (3, Queued)]);
        assert_eq!(p.outcome, RunOutcome::Running);
        let p = plan_run(
            &handlers(),
            &r,
            &[
                done(Success),
                done(Success),
                done(Skipped),
                running(PodVerdict::Succeeded),
                done(Success),
            ],
            PATIENCE,
            t("2025-01-01T00:02:00Z"),
        );
        assert_eq!(p.outcome, RunOutcome::Success);
    }

    #[test]
    fn a_one_success_join_starts_while_the_other_branch_runs() {
        let g = TaskGraph::build([
            ("mirror-a", vec![], TriggerRule::AllSuccess),
            ("mirror-b", vec![], TriggerRule::AllSuccess),
            (
                "join",
                vec!["mirror-a", "mirror-b"],
                TriggerRule::OneSuccess,
            ),
            ("publish", vec!["join"], TriggerRule::NoneFailed),
        ])
        .expect("valid graph");
        let r = vec![rules(0, None); 4];
        let p = plan_run(
            &g,
            &r,
            &[
                running(PodVerdict::Succeeded),
                running(PodVerdict::Running),
                pending(),
                pending(),
            ],
            PATIENCE,
            t("2025-01-01T00:01:00Z"),
        );
        assert_eq!(decided(&p), [(2, Queued)]);
        // both mirrors fail: the join is upstream_failed and so is publish (NoneFailed)
        let failed = || {
            running(PodVerdict::Failed {
                exit_code: Some(2),
                message: "Error".into(),
            })
        };
        let p = plan_run(
            &g,
            &r,
            &[failed(), failed(), pending(), pending()],
            PATIENCE,
            t("2025-01-01T00:01:00Z"),
        );
        assert_eq!(decided(&p), [(2, UpstreamFailed), (3, UpstreamFailed)]);
        assert_eq!(p.outcome, RunOutcome::Failed);
    }

    #[test]
    fn retry_delays() {
        assert_eq!(
            retry_delay(RetryBackoff::Fixed, 30, 3600, 3),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(RetryBackoff::Exponential, 30, 3600, 1),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(RetryBackoff::Exponential, 30, 3600, 3),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_delay(RetryBackoff::Exponential, 30, 100, 5),
            Duration::from_secs(100)
        );
        assert_eq!(retry_delay(RetryBackoff::Fixed, 0, 3600, 1), Duration::ZERO);
    }

    #[test]
    fn a_run_past_its_deadline_fails_its_running_tries_and_skips_the_rest() {
        let started = t("2024-01-01T00:00:00Z");
        let deadline = RunDeadline::of(Some(started), Some(60));
        let r = [rules(3, None), rules(0, None), rules(0, None)];
        let tries = [
            view(Success, gone()),
            running(PodVerdict::Running),
            pending(),
        ];
        // before the deadline: nothing to do but wake at it
        let before = plan_run_within(
            &chain(),
            &r,
            &tries,
            PATIENCE,
            deadline,
            t("2024-01-01T00:00:30Z"),
        );
        assert_eq!(before.timed_out, None);
        assert_eq!(before.outcome, RunOutcome::Running);
        assert_eq!(before.wake_at, Some(t("2024-01-01T00:01:00Z")));
        // at it: the running try fails for good (retries left or not) with its Pod stopped,
        // the pending one is skipped, the run fails
        let at = plan_run_within(
            &chain(),
            &r,
            &tries,
            PATIENCE,
            deadline,
            t("2024-01-01T00:01:00Z"),
        );
        assert_eq!(at.timed_out, Some(60));
        assert_eq!(at.outcome, RunOutcome::Failed);
        assert_eq!(
            at.steps,
            vec![
                Step::Ended {
                    task: 1,
                    to: Failed,
                    exit_code: None,
                    message: Some("run timed out after 60s (runTimeoutSeconds)".into()),
                    stop_pod: true,
                },
                Step::Abandoned {
                    task: 2,
                    from: Pending
                },
            ]
        );
        // no deadline: as before
        assert_eq!(RunDeadline::of(Some(started), None), None);
        assert_eq!(RunDeadline::of(None, Some(60)), None);
    }
}

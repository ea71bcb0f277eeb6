//! Task graphs (SPEC §5): validation (duplicates, self-dependency, unknown upstreams, cycles),
//! and the decisions of a run's pending tasks under Airflow's trigger rules (ready,
//! `upstream_failed` or `skipped`, decided as early as Airflow's `TriggerRuleDep` decides).
//! Pure.

use std::collections::HashMap;
use std::fmt;

/// When a task runs, given the states of its direct upstreams (Airflow's trigger rules; see
/// [`TriggerRule::decide`] and docs/SEMANTICS.md "Trigger rules"). `failed`,
/// `upstream_failed` and `cancelled` upstreams all count as failed. A task without upstreams is
/// ready at once, whatever its rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TriggerRule {
    /// run when every upstream succeeded; `upstream_failed` as soon as one failed, else
    /// `skipped` as soon as one was skipped
    #[default]
    AllSuccess,
    /// run when every upstream failed; `skipped` as soon as one succeeded or was skipped
    AllFailed,
    /// run when every upstream has finished, whatever the outcome
    AllDone,
    /// run as soon as one upstream succeeded; when all finished without a success:
    /// `skipped` if all were skipped, else `upstream_failed`
    OneSuccess,
    /// run as soon as one upstream failed; `skipped` when all finished without a failure
    OneFailed,
    /// run when every upstream succeeded or was skipped; `upstream_failed` as soon as one failed
    NoneFailed,
    /// as `NoneFailed`, but `skipped` when every upstream was skipped
    NoneFailedMinOneSuccess,
    /// run when every upstream finished and none was skipped (failures allowed); `skipped` as
    /// soon as one was skipped
    NoneSkipped,
    /// run at once, without waiting for the upstreams at all
    Always,
}

impl TriggerRule {
    /// Every rule.
    pub const ALL: [TriggerRule; 9] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::NoneSkipped,
        TriggerRule::Always,
    ];

    /// What a pending task under this rule becomes, given the states of its direct upstreams;
    /// `None`: it waits. Decides as soon as the outcome is certain from the upstreams that
    /// finished, as Airflow's `TriggerRuleDep` does; with every upstream terminal it always
    /// decides.
    pub fn decide<I: IntoIterator<Item = TaskState>>(self, upstream: I) -> Option<Decision> {
        let t = Tally::of(upstream);
        if t.total == 0 {
            return Some(Decision::Ready);
        }
        let all_done = t.done() == t.total;
        let decision = match self {
            TriggerRule::AllSuccess if t.failed > 0 => Decision::UpstreamFailed,
            TriggerRule::AllSuccess if t.skipped > 0 => Decision::Skipped,
            TriggerRule::AllSuccess if t.success == t.total => Decision::Ready,
            TriggerRule::AllFailed if t.success + t.skipped > 0 => Decision::Skipped,
            TriggerRule::AllFailed if t.failed == t.total => Decision::Ready,
            TriggerRule::AllDone if all_done => Decision::Ready,
            TriggerRule::OneSuccess if t.success > 0 => Decision::Ready,
            TriggerRule::OneSuccess if all_done && t.skipped == t.total => Decision::Skipped,
            TriggerRule::OneSuccess if all_done => Decision::UpstreamFailed,
            TriggerRule::OneFailed if t.failed > 0 => Decision::Ready,
            TriggerRule::OneFailed if all_done => Decision::Skipped,
            TriggerRule::NoneFailed | TriggerRule::NoneFailedMinOneSuccess if t.failed > 0 => {
                Decision::UpstreamFailed
            }
            TriggerRule::NoneFailedMinOneSuccess if t.skipped == t.total => Decision::Skipped,
            TriggerRule::NoneFailed | TriggerRule::NoneFailedMinOneSuccess if all_done => {
                Decision::Ready
            }
            TriggerRule::NoneSkipped if t.skipped > 0 => Decision::Skipped,
            TriggerRule::NoneSkipped if all_done => Decision::Ready,
            TriggerRule::Always => Decision::Ready,
            _ => return None,
        };
        Some(decision)
    }
}

/// Upstream states counted the way the rules read them.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    total: usize,
    success: usize,
    skipped: usize,
    /// `failed`, `upstream_failed` and `cancelled`
    failed: usize,
}

impl Tally {
    fn of<I: IntoIterator<Item = TaskState>>(states: I) -> Self {
        let mut t = Tally::default();
        for s in states {
            t.total += 1;
            match s {
                TaskState::Success => t.success += 1,
                TaskState::Skipped => t.skipped += 1,
                s if s.is_failure() => t.failed += 1,
                _ => {}
            }
        }
        t
    }

    fn done(&self) -> usize {
        self.success + self.skipped + self.failed
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("a DAG needs at least one task")]
    Empty,
    #[error("task name {0:?} is used twice")]
    DuplicateTask(String),
    #[error("task {0:?} depends on itself")]
    SelfDependency(String),
    #[error("task {task:?} depends on unknown task {upstream:?}")]
    UnknownUpstream { task: String, upstream: String },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

impl GraphError {
    /// The offending task name, for conditions.
    pub fn token(&self) -> Option<&str> {
        match self {
            GraphError::Empty => None,
            GraphError::DuplicateTask(t) | GraphError::SelfDependency(t) => Some(t),
            GraphError::UnknownUpstream { upstream, .. } => Some(upstream),
            GraphError::Cycle(path) => path.first().map(String::as_str),
        }
    }
}

/// Task-instance states (SPEC §5), as stored in PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Pending,
    Queued,
    Running,
    Success,
    Failed,
    UpForRetry,
    UpstreamFailed,
    Skipped,
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 9] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::UpForRetry,
        TaskState::Success,
        TaskState::Failed,
        TaskState::UpstreamFailed,
        TaskState::Skipped,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::UpForRetry => "up_for_retry",
            TaskState::UpstreamFailed => "upstream_failed",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Finished for good: no further try will run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failed
                | TaskState::UpstreamFailed
                | TaskState::Skipped
                | TaskState::Cancelled
        )
    }

    fn is_failure(self) -> bool {
        matches!(
            self,
            TaskState::Failed | TaskState::UpstreamFailed | TaskState::Cancelled
        )
    }
}

/// `state == "running"` reads as the stored name (tests and the CLI compare that way).
impl PartialEq<&str> for TaskState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for TaskState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pending task should become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// its upstreams are satisfied: queue it
    Ready,
    UpstreamFailed,
    Skipped,
}

/// Where a run stands, given its task states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Running,
    Success,
    Failed,
}

/// A validated task graph. Tasks are addressed by their index in the DAG's task list.
#[derive(Clone, Debug)]
pub struct TaskGraph {
    names: Vec<String>,
    rules: Vec<TriggerRule>,
    upstream: Vec<Vec<usize>>,
    /// tasks in an order where every upstream comes first
    topo: Vec<usize>,
}

impl TaskGraph {
    /// Builds and validates a graph from `(name, dependsOn, triggerRule)` triples.
    pub fn build<'a, I, D>(tasks: I) -> Result<Self, GraphError>
    where
        I: IntoIterator<Item = (&'a str, D, TriggerRule)>,
        D: IntoIterator<Item = &'a str>,
    {
        let mut names = Vec::new();
        let mut rules = Vec::new();
        let mut deps: Vec<Vec<&'a str>> = Vec::new();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        for (name, depends_on, rule) in tasks {
            if index.insert(name, names.len()).is_some() {
                return Err(GraphError::DuplicateTask(name.to_string()));
            }
            names.push(name.to_string());
            rules.push(rule);
            deps.push(depends_on.into_iter().collect());
        }
        if names.is_empty() {
            return Err(GraphError::Empty);
        }
        let mut upstream = vec![Vec::new(); names.len()];
        for (i, ds) in deps.iter().enumerate() {
            for d in ds {
                if *d == names[i] {
                    return Err(GraphError::SelfDependency(names[i].clone()));
                }
                let Some(&j) = index.get(d) else {
                    return Err(GraphError::UnknownUpstream {
                        task: names[i].clone(),
                        upstream: (*d).to_string(),
                    });
                };
                if !upstream[i].contains(&j) {
                    upstream[i].push(j);
                }
            }
        }
        let topo = topological_order(&upstream).map_err(|cycle| {
            GraphError::Cycle(cycle.into_iter().map(|i| names[i].clone()).collect())
        })?;
        Ok(TaskGraph {
            names,
            rules,
            upstream,
            topo,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, task: usize) -> &str {
        &self.names[task]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn upstream(&self, task: usize) -> &[usize] {
        &self.upstream[task]
    }

    /// Decides every pending task its rule can decide now (see [`TriggerRule::decide`]),
    /// cascading through the graph in one call (a failure marks the whole `AllSuccess` chain
    /// below it `upstream_failed`), in an order where upstreams come first. `states[i]` is the
    /// state of task `i`; it is not modified. A task decided `Ready` still counts as not
    /// finished for the tasks below it.
    pub fn evaluate(&self, states: &[TaskState]) -> Vec<(usize, Decision)> {
        let mut view = states.to_vec();
        let mut decisions = Vec::new();
        for &t in &self.topo {
            if view[t] != TaskState::Pending {
                continue;
            }
            let upstream = self.upstream[t].iter().map(|&u| view[u]);
            let Some(decision) = self.rules[t].decide(upstream) else {
                continue;
            };
            match decision {
                Decision::UpstreamFailed => view[t] = TaskState::UpstreamFailed,
                Decision::Skipped => view[t] = TaskState::Skipped,
                Decision::Ready => {}
            }
            decisions.push((t, decision));
        }
        decisions
    }

    /// The run's state (SPEC §5): running while any task is not terminal; then success if
    /// every task succeeded or was skipped, failed otherwise. Every task counts, not only the
    /// leaves as in Airflow: a failure that a `OneFailed` or `AllDone` task handled, or that a
    /// `OneSuccess` join outlived, still fails the run. Call after applying
    /// [`evaluate`](Self::evaluate).
    pub fn outcome(&self, states: &[TaskState]) -> RunOutcome {
        if states.iter().any(|s| !s.is_terminal()) {
            RunOutcome::Running
        } else if states
            .iter()
            .all(|s| matches!(s, TaskState::Success | TaskState::Skipped))
        {
            RunOutcome::Success
        } else {
            RunOutcome::Failed
        }
    }
}

/// Kahn's algorithm; on a cycle, returns one cycle as a closed path of indices.
fn topological_order(upstream: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = upstream.len();
    let mut downstream = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (t, ups) in upstream.iter().enumerate() {
        indegree[t] = ups.len();
        for &u in ups {
            downstream[u].push(t);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&t| indegree[t] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(t) = ready.pop() {
        order.push(t);
        for &d in downstream[t].iter().rev() {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // every remaining task has an upstream that remains: walk upstream until a repeat
    let Some(start) = (0..n).find(|&t| indegree[t] > 0) else {
        return Err(Vec::new());
    };
    let mut seen = vec![usize::MAX; n];
    let mut path = Vec::new();
    let mut t = start;
    while seen[t] == usize::MAX {
        seen[t] = path.len();
        path.push(t);
        let Some(&next) = upstream[t].iter().find(|&&u| indegree[u] > 0) else {
            break;
        };
        t = next;
    }
    let mut cycle: Vec<usize> = path[seen[t].min(path.len())..].to_vec();
    // path follows upstream edges; present it in dependency direction, closed
    cycle.reverse();
    if let Some(&first) = cycle.first() {
        cycle.push(first);
    }
    Err(cycle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn graph(
        spec: &[(&'static str, &[&'static str], TriggerRule)],
    ) -> Result<TaskGraph, GraphError> {
        TaskGraph::build(spec.iter().map(|(n, d, r)| (*n, d.iter().copied(), *r)))
    }

    const S: TriggerRule = TriggerRule::AllSuccess;
    const D: TriggerRule = TriggerRule::AllDone;

    fn diamond() -> TaskGraph {
        graph(&[
            ("a", &[], S),
            ("b", &["a"], S),
            ("c", &["a"], S),
            ("d", &["b", "c"], S),
        ])
        .unwrap()
    }

    #[test]
    fn rejects_bad_graphs_naming_the_task() {
        assert_eq!(graph(&[]).unwrap_err(), GraphError::Empty);
        assert_eq!(
            graph(&[("a", &[], S), ("a", &[], S)]).unwrap_err(),
            GraphError::DuplicateTask("a".into())
        );
        assert_eq!(
            graph(&[("a", &["a"], S)]).unwrap_err(),
            GraphError::SelfDependency("a".into())
        );
        let err = graph(&[("a", &["ghost"], S)]).unwrap_err();
        assert_eq!(err.token(), Some("ghost"));
        let err = graph(&[
            ("x", &[], S),
            ("a", &["c"], S),
            ("b", &["a"], S),
            ("c", &["b"], S),
        ])
        .unwrap_err();
        let GraphError::Cycle(path) = &err else {
            panic!("{err}")
        };
        assert_eq!(path.len(), 4);
        assert_eq!(path.first(), path.last());
        assert!(!path.contains(&"x".to_string()));
        assert!(err.to_string().contains(" -> "), "{err}");
    }

    #[test]
    fn diamond_runs_in_dependency_order() {
        let g = diamond();
        assert_eq!(g.evaluate(&[Pending; 4]), [(0, Decision::Ready)]);
        assert_eq!(
            g.evaluate(&[Success, Pending, Pending, Pending]),
            [(1, Decision::Ready), (2, Decision::Ready)]
        );
        assert!(g.evaluate(&[Success, Success, Running, Pending]).is_empty());
        assert_eq!(
            g.evaluate(&[Success, Success, Success, Pending]),
            [(3, Decision::Ready)]
        );
        assert_eq!(g.outcome(&[Success; 4]), RunOutcome::Success);
    }

    #[test]
    fn failure_cascades_but_all_done_still_runs() {
        let g = graph(&[
            ("a", &[], S),
            ("b", &["a"], S),
            ("c", &["b"], S),
            ("cleanup", &["c"], D),
        ])
        .unwrap();
        let states = [Failed, Pending, Pending, Pending];
        assert_eq!(
            g.evaluate(&states),
            [
                (1, Decision::UpstreamFailed),
                (2, Decision::UpstreamFailed),
                (3, Decision::Ready)
            ]
        );
        assert_eq!(
            g.outcome(&[Failed, UpstreamFailed, UpstreamFailed, Running]),
            RunOutcome::Running
        );
        assert_eq!(
            g.outcome(&[Failed, UpstreamFailed, UpstreamFailed, Success]),
            RunOutcome::Failed
        );
    }

    #[test]
    fn skipped_upstream_skips_all_success_tasks() {
        let g = graph(&[("a", &[], S), ("b", &["a"], S)]).unwrap();
        assert_eq!(g.evaluate(&[Skipped, Pending]), [(1, Decision::Skipped)]);
        assert_eq!(g.outcome(&[Skipped, Skipped]), RunOutcome::Success);
    }

    #[test]
    fn retry_is_not_terminal() {
        let g = graph(&[("a", &[], S), ("b", &["a"], S)]).unwrap();
        assert!(g.evaluate(&[UpForRetry, Pending]).is_empty());
        assert_eq!(g.outcome(&[UpForRetry, Pending]), RunOutcome::Running);
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
    }

    const READY: Option<Decision> = Some(Decision::Ready);
    const SKIP: Option<Decision> = Some(Decision::Skipped);
    const UPF: Option<Decision> = Some(Decision::UpstreamFailed);
    const WAIT: Option<Decision> = None;

    /// `(upstream states, what the rule decides)` for one rule.
    fn check(rule: TriggerRule, cases: &[(&[TaskState], Option<Decision>)]) {
        for (ups, want) in cases {
            assert_eq!(
                rule.decide(ups.iter().copied()),
                *want,
                "{rule:?} on {ups:?}"
            );
        }
    }

    #[test]
    fn every_rule_runs_a_task_without_upstreams() {
        for rule in TriggerRule::ALL {
            assert_eq!(rule.decide([]), READY, "{rule:?}");
        }
    }

    #[test]
    fn all_success_decides_at_the_first_failure_or_skip() {
        check(
            TriggerRule::AllSuccess,
            &[
                (&[Success, Success], READY),
                (&[Success, Running], WAIT),
                (&[Success, UpForRetry], WAIT),
                (&[Failed, Running], UPF),
                (&[UpstreamFailed, Pending], UPF),
                (&[Cancelled, Success], UPF),
                (&[Skipped, Running], SKIP),
                // a failure outweighs a skip once both are known
                (&[Skipped, Failed], UPF),
            ],
        );
    }

    #[test]
    fn all_failed_runs_only_when_every_upstream_failed() {
        check(
            TriggerRule::AllFailed,
            &[
                (&[Failed, UpstreamFailed, Cancelled], READY),
                (&[Failed, Running], WAIT),
                (&[Failed, Success], SKIP),
                (&[Success, Running], SKIP),
                (&[Skipped, Pending], SKIP),
            ],
        );
    }

    #[test]
    fn all_done_waits_for_every_upstream_and_never_skips() {
        check(
            TriggerRule::AllDone,
            &[
                (&[Failed, Skipped, Success, UpstreamFailed], READY),
                (&[Skipped, Skipped], READY),
                (&[Failed, Running], WAIT),
                (&[Success, UpForRetry], WAIT),
            ],
        );
    }

    #[test]
    fn one_success_fires_at_the_first_success() {
        check(
            TriggerRule::OneSuccess,
            &[
                (&[Success, Running], READY),
                (&[Failed, Success], READY),
                (&[Failed, Running], WAIT),
                (&[Skipped, Pending], WAIT),
                (&[Failed, Skipped], UPF),
                (&[UpstreamFailed, Failed], UPF),
                (&[Skipped, Skipped], SKIP),
            ],
        );
    }

    #[test]
    fn one_failed_fires_at_the_first_failure() {
        check(
            TriggerRule::OneFailed,
            &[
                (&[Failed, Running], READY),
                (&[UpstreamFailed, Pending], READY),
                (&[Cancelled, Success], READY),
                (&[Success, Running], WAIT),
                (&[Success, Skipped], SKIP),
            ],
        );
    }

    #[test]
    fn none_failed_allows_skips() {
        check(
            TriggerRule::NoneFailed,
            &[
                (&[Success, Skipped], READY),
                (&[Skipped, Skipped], READY),
                (&[Success, Running], WAIT),
                (&[Failed, Running], UPF),
                (&[Skipped, UpstreamFailed], UPF),
            ],
        );
    }

    #[test]
    fn none_failed_min_one_success_skips_when_all_skipped() {
        check(
            TriggerRule::NoneFailedMinOneSuccess,
            &[
                (&[Success, Skipped], READY),
                (&[Skipped, Skipped], SKIP),
                (&[Skipped, Running], WAIT),
                (&[UpstreamFailed, Running], UPF),
                (&[Skipped, Failed], UPF),
            ],
        );
    }

    #[test]
    fn none_skipped_allows_failures() {
        check(
            TriggerRule::NoneSkipped,
            &[
                (&[Success, Failed, UpstreamFailed], READY),
                (&[Success, Running], WAIT),
                (&[Skipped, Running], SKIP),
                (&[Failed, Skipped], SKIP),
            ],
        );
    }

    #[test]
    fn always_runs_at_once() {
        check(
            TriggerRule::Always,
            &[
                (&[Pending, Running], READY),
                (&[Failed], READY),
                (&[Skipped], READY),
            ],
        );
    }

    /// `evaluate`'s decisions by task index (it returns them in a topological order).
    fn by_task(g: &TaskGraph, states: &[TaskState]) -> Vec<(usize, Decision)> {
        let mut d = g.evaluate(states);
        d.sort_by_key(|&(t, _)| t);
        d
    }

    /// extract → load → cleanup (AllDone); notify (OneFailed) after extract and load
    fn with_handlers() -> TaskGraph {
        graph(&[
            ("extract", &[], S),
            ("load", &["extract"], S),
            ("notify", &["extract", "load"], TriggerRule::OneFailed),
            ("cleanup", &["load"], D),
        ])
        .unwrap()
    }

    #[test]
    fn a_failure_notifies_and_still_fails_the_run() {
        let g = with_handlers();
        // one call: load upstream_failed, then notify and cleanup ready
        assert_eq!(
            g.evaluate(&[Failed, Pending, Pending, Pending]),
            [
                (1, Decision::UpstreamFailed),
                (2, Decision::Ready),
                (3, Decision::Ready)
            ]
        );
        assert_eq!(
            g.outcome(&[Failed, UpstreamFailed, Success, Success]),
            RunOutcome::Failed
        );
    }

    #[test]
    fn without_a_failure_the_notification_is_skipped_and_the_run_succeeds() {
        let g = with_handlers();
        assert_eq!(
            g.evaluate(&[Success, Running, Pending, Pending]),
            Vec::<(usize, Decision)>::new()
        );
        assert_eq!(
            g.evaluate(&[Success, Success, Pending, Pending]),
            [(2, Decision::Skipped), (3, Decision::Ready)]
        );
        assert_eq!(
            g.outcome(&[Success, Success, Skipped, Success]),
            RunOutcome::Success
        );
    }

    #[test]
    fn early_decisions_do_not_wait_for_running_siblings() {
        // AllSuccess: d is upstream_failed while c still runs; the run runs on
        let g = diamond();
        let states = [Success, Failed, Running, Pending];
        assert_eq!(g.evaluate(&states), [(3, Decision::UpstreamFailed)]);
        assert_eq!(
            g.outcome(&[Success, Failed, Running, UpstreamFailed]),
            RunOutcome::Running
        );
        // OneSuccess: the join starts with the first branch that succeeds
        let g = graph(&[
            ("a", &[], S),
            ("b", &[], S),
            ("join", &["a", "b"], TriggerRule::OneSuccess),
        ])
        .unwrap();
        assert_eq!(
            g.evaluate(&[Running, Success, Pending]),
            [(2, Decision::Ready)]
        );
        // Always: queued with the roots, before its upstream ran
        let g = graph(&[("a", &[], S), ("watch", &["a"], TriggerRule::Always)]).unwrap();
        assert_eq!(
            g.evaluate(&[Pending, Pending]),
            [(0, Decision::Ready), (1, Decision::Ready)]
        );
    }

    #[test]
    fn skips_and_failures_cascade_through_the_rules() {
        // a skipped branch: NoneFailedMinOneSuccess joins the other, NoneSkipped is skipped,
        // and the AllSuccess task below it is skipped too
        let g = graph(&[
            ("a", &[], S),
            ("b", &[], S),
            ("join", &["a", "b"], TriggerRule::NoneFailedMinOneSuccess),
            ("strict", &["a", "b"], TriggerRule::NoneSkipped),
            ("after", &["strict"], S),
            ("rescue", &["join"], TriggerRule::AllFailed),
        ])
        .unwrap();
        assert_eq!(
            by_task(&g, &[Skipped, Success, Pending, Pending, Pending, Pending]),
            [
                (2, Decision::Ready),
                (3, Decision::Skipped),
                (4, Decision::Skipped)
            ]
        );
        // both skipped: join skipped, which skips the AllFailed rescue as well
        assert_eq!(
            by_task(&g, &[Skipped, Skipped, Pending, Pending, Pending, Pending]),
            [
                (2, Decision::Skipped),
                (3, Decision::Skipped),
                (4, Decision::Skipped),
                (5, Decision::Skipped)
            ]
        );
        // a failure: join upstream_failed, which is a failure for the rescue: it runs
        assert_eq!(
            by_task(&g, &[Failed, Success, Pending, Pending, Pending, Pending]),
            [
                (2, Decision::UpstreamFailed),
                (3, Decision::Ready),
                (5, Decision::Ready)
            ]
        );
    }
}

/// Property tests of the rules against the table of docs/SEMANTICS.md ("Trigger rules"),
/// written as predicates over the upstream states, and of whole runs.
#[cfg(test)]
mod proptests {
    use super::*;
    use TaskState::*;
    use proptest::prelude::*;

    fn ok(s: TaskState) -> bool {
        s == Success
    }
    fn skipped(s: TaskState) -> bool {
        s == Skipped
    }
    fn failed(s: TaskState) -> bool {
        matches!(s, Failed | UpstreamFailed | Cancelled)
    }
    fn done(s: TaskState) -> bool {
        ok(s) || skipped(s) || failed(s)
    }

    /// The table: (ready when, skipped when, upstream_failed when), for a task with upstreams.
    fn table(rule: TriggerRule, ups: &[TaskState]) -> [bool; 3] {
        let any = |f: fn(TaskState) -> bool| ups.iter().any(|&s| f(s));
        let all = |f: fn(TaskState) -> bool| ups.iter().all(|&s| f(s));
        match rule {
            TriggerRule::AllSuccess => [all(ok), any(skipped) && !any(failed), any(failed)],
            TriggerRule::AllFailed => [all(failed), any(ok) || any(skipped), false],
            TriggerRule::AllDone => [all(done), false, false],
            TriggerRule::OneSuccess => [
                any(ok),
                all(skipped),
                all(done) && !any(ok) && !all(skipped),
            ],
            TriggerRule::OneFailed => [any(failed), all(done) && !any(failed), false],
            TriggerRule::NoneFailed => [all(|s| ok(s) || skipped(s)), false, any(failed)],
            TriggerRule::NoneFailedMinOneSuccess => [
                all(|s| ok(s) || skipped(s)) && any(ok),
                all(skipped),
                any(failed),
            ],
            TriggerRule::NoneSkipped => [all(done) && !any(skipped), any(skipped), false],
            TriggerRule::Always => [true, false, false],
        }
    }

    /// What the table says a pending task becomes; it never says two things at once.
    fn oracle(rule: TriggerRule, ups: &[TaskState]) -> Option<Decision> {
        if ups.is_empty() {
            return Some(Decision::Ready);
        }
        let [ready, skip, upf] = table(rule, ups);
        assert!(
            usize::from(ready) + usize::from(skip) + usize::from(upf) <= 1,
            "{rule:?} on {ups:?}: the table is ambiguous"
        );
        if ready {
            Some(Decision::Ready)
        } else if skip {
            Some(Decision::Skipped)
        } else if upf {
            Some(Decision::UpstreamFailed)
        } else {
            None
        }
    }

    fn rule() -> impl Strategy<Value = TriggerRule> {
        prop::sample::select(TriggerRule::ALL.to_vec())
    }

    fn state() -> impl Strategy<Value = TaskState> {
        prop::sample::select(TaskState::ALL.to_vec())
    }

    fn terminal() -> impl Strategy<Value = TaskState> {
        prop::sample::select(vec![Success, Failed, UpstreamFailed, Skipped, Cancelled])
    }

    const UNFINISHED: [TaskState; 4] = [Pending, Queued, Running, UpForRetry];

    /// A random DAG of up to 10 tasks: task `i` depends on the tasks `j < i` its mask names.
    fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<TriggerRule>)> {
        (1usize..=10).prop_flat_map(|n| {
            (
                prop::collection::vec(any::<u16>(), n),
                prop::collection::vec(rule(), n),
            )
                .prop_map(|(masks, rules)| {
                    let ups = masks
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (0..i).filter(|j| m & (1 << j) != 0).collect())
                        .collect();
                    (ups, rules)
                })
        })
    }

    fn build(ups: &[Vec<usize>], rules: &[TriggerRule]) -> TaskGraph {
        let names: Vec<String> = (0..ups.len()).map(|i| format!("t{i}")).collect();
        TaskGraph::build(ups.iter().zip(rules).enumerate().map(|(i, (u, r))| {
            (
                names[i].as_str(),
                u.iter().map(|&j| names[j].as_str()).collect::<Vec<_>>(),
                *r,
            )
        }))
        .expect("an acyclic graph")
    }

    fn apply(states: &mut [TaskState], decisions: &[(usize, Decision)]) {
        for &(t, d) in decisions {
            states[t] = match d {
                Decision::Ready => Queued,
                Decision::Skipped => Skipped,
                Decision::UpstreamFailed => UpstreamFailed,
            };
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// A rule decides exactly what the table says, from the upstreams that finished only
        /// (which unfinished state an upstream is in never matters); once every upstream
        /// finished it always decides; AllDone and Always never skip or fail a task.
        #[test]
        fn decide_follows_the_table(
            rule in rule(),
            ups in prop::collection::vec(state(), 0..6),
            other in prop::collection::vec(0usize..4, 6),
        ) {
            let got = rule.decide(ups.iter().copied());
            prop_assert_eq!(got, oracle(rule, &ups));
            let shuffled: Vec<TaskState> = ups
                .iter()
                .zip(&other)
                .map(|(&s, &k)| if done(s) { s } else { UNFINISHED[k] })
                .collect();
            prop_assert_eq!(rule.decide(shuffled), got);
            if ups.iter().all(|&s| done(s)) {
                prop_assert!(got.is_some());
            }
            if matches!(rule, TriggerRule::AllDone | TriggerRule::Always) {
                prop_assert!(matches!(got, None | Some(Decision::Ready)));
            }
        }

        /// Decisions are monotone: an upstream finishing never takes a decision back — a
        /// task ready stays ready, one skipped or upstream_failed stays decided the same way,
        /// except that for AllSuccess a failure known later outweighs a skip known first (the
        /// executor has written the skip by then, as Airflow has).
        #[test]
        fn decisions_are_monotone(
            rule in rule(),
            ups in prop::collection::vec(state(), 1..6),
            finish in prop::collection::vec(prop::option::of(terminal()), 6),
        ) {
            let later: Vec<TaskState> = ups
                .iter()
                .zip(&finish)
                .map(|(&s, f)| if done(s) { s } else { f.unwrap_or(s) })
                .collect();
            let (before, after) = (rule.decide(ups.iter().copied()), rule.decide(later));
            if let Some(d) = before {
                let allowed = after == Some(d)
                    || (rule == TriggerRule::AllSuccess
                        && d == Decision::Skipped
                        && after == Some(Decision::UpstreamFailed));
                prop_assert!(allowed, "{:?}: {:?} then {:?}", rule, before, after);
            }
        }

        /// One evaluation decides every pending task the table decides, from its upstreams'
        /// states after the cascade, and nothing else: a second evaluation finds nothing.
        #[test]
        fn evaluate_cascades_to_a_fixpoint((ups, rules) in dag(), seed in prop::collection::vec(state(), 10)) {
            let g = build(&ups, &rules);
            let states: Vec<TaskState> = seed[..ups.len()].to_vec();
            let decisions = g.evaluate(&states);
            let mut after = states.clone();
            apply(&mut after, &decisions);
            let mut seen = vec![false; ups.len()];
            for &(t, d) in &decisions {
                prop_assert_eq!(states[t], Pending);
                prop_assert!(!seen[t], "task {} decided twice", t);
                seen[t] = true;
                let up: Vec<TaskState> = ups[t].iter().map(|&u| after[u]).collect();
                prop_assert_eq!(Some(d), oracle(rules[t], &up), "task {} on {:?}", t, up);
            }
            for t in (0..ups.len()).filter(|&t| after[t] == Pending) {
                let up: Vec<TaskState> = ups[t].iter().map(|&u| after[u]).collect();
                prop_assert_eq!(oracle(rules[t], &up), None, "task {} left pending on {:?}", t, up);
            }
            prop_assert!(g.evaluate(&after).is_empty());
        }

        /// Every run ends: queuing what is decided ready and finishing running tries with
        /// arbitrary outcomes (success, failure, a retry) reaches all-terminal states, in a
        /// bounded number of steps. AllDone and Always tasks and roots always run; the run
        /// succeeds exactly when every task succeeded or was skipped.
        #[test]
        fn every_run_terminates(
            (ups, rules) in dag(),
            script in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..40),
        ) {
            let g = build(&ups, &rules);
            let n = ups.len();
            let mut states = vec![Pending; n];
            let mut retries = vec![0u8; n];
            let mut script = script.into_iter();
            let mut steps = 0;
            loop {
                steps += 1;
                prop_assert!(steps <= 4 * n + 2, "no end after {} steps: {:?}", steps, states);
                // retries fall due at once
                for s in states.iter_mut().filter(|s| **s == UpForRetry) {
                    *s = Running;
                }
                let decisions = g.evaluate(&states);
                apply(&mut states, &decisions);
                for s in states.iter_mut().filter(|s| **s == Queued) {
                    *s = Running;
                }
                let running: Vec<usize> = (0..n).filter(|&t| states[t] == Running).collect();
                if running.is_empty() {
                    break;
                }
                let (pick, outcome) = script
                    .next()
                    .map_or((0, 0), |(i, o)| (i.index(running.len()), o));
                let t = running[pick];
                states[t] = match outcome {
                    1 => Failed,
                    2 if retries[t] < 2 => {
                        retries[t] += 1;
                        UpForRetry
                    }
                    2 => Failed,
                    _ => Success,
                };
            }
            prop_assert!(states.iter().all(|s| s.is_terminal()), "{:?}", states);
            prop_assert!(g.evaluate(&states).is_empty());
            for t in 0..n {
                if ups[t].is_empty()
                    || matches!(rules[t], TriggerRule::AllDone | TriggerRule::Always)
                {
                    prop_assert!(matches!(states[t], Success | Failed), "task {} is {}", t, states[t]);
                }
            }
            let all_good = states.iter().all(|&s| ok(s) || skipped(s));
            let want = if all_good { RunOutcome::Success } else { RunOutcome::Failed };
            prop_assert_eq!(g.outcome(&states), want);
        }
    }
}

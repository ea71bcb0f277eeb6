//! Task graphs (SPEC §5): validation (duplicates, self-dependency, unknown upstreams, cycles),
//! and the ready set of a run under `triggerRule` AllSuccess / AllDone, with `upstream_failed`
//! and `skipped` propagation. Pure.

use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TriggerRule {
    /// run when every upstream succeeded (or was skipped, which skips this task too)
    #[default]
    AllSuccess,
    /// run when every upstream has finished, whatever the outcome
    AllDone,
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

    /// Decides every pending task whose upstreams have all finished, cascading through the
    /// graph in one call (a failure marks the whole chain below it `upstream_failed`).
    /// `states[i]` is the state of task `i`; it is not modified.
    pub fn evaluate(&self, states: &[TaskState]) -> Vec<(usize, Decision)> {
        let mut view = states.to_vec();
        let mut decisions = Vec::new();
        for &t in &self.topo {
            if view[t] != TaskState::Pending {
                continue;
            }
            let ups = &self.upstream[t];
            if !ups.iter().all(|&u| view[u].is_terminal()) {
                continue;
            }
            let decision = match self.rules[t] {
                TriggerRule::AllDone => Decision::Ready,
                TriggerRule::AllSuccess if ups.iter().any(|&u| view[u].is_failure()) => {
                    Decision::UpstreamFailed
                }
                TriggerRule::AllSuccess if ups.iter().any(|&u| view[u] == TaskState::Skipped) => {
                    Decision::Skipped
                }
                TriggerRule::AllSuccess => Decision::Ready,
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

    /// The run's state: running while any task can still run; then success if every task
    /// succeeded or was skipped, failed otherwise. Call after applying [`evaluate`](Self::evaluate).
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
}

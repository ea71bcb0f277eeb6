//! The Prometheus registry of SPEC §9: every metric family the operator exports, behind
//! small typed methods. Label values come from closed enums, except the pool name, whose
//! cardinality is the number of Pool objects.

use std::borrow::Cow;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::gate::GateScope;
use crate::graph::TaskState;
use crate::queue::RunClass;
use crate::store::{RunState, RunType};

/// Prefix of every family name.
pub const PREFIX: &str = "dagop";

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of `dagop_schedule_delay_seconds`: 1 ms to 5 min.
const SCHEDULE_DELAY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Buckets of `dagop_reconcile_duration_seconds`: 1 ms to 30 s.
const RECONCILE_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of the run and task-try durations: 1 s to 1 day.
const DURATION_BUCKETS: [f64; 14] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
    86400.0,
];

/// The `error` label of `dagop_reconcile_errors_total`: the reconcilers' `metric_label()`s
/// (each series exists from the start).
pub const RECONCILE_ERRORS: [&str; 3] = ["kube", "engine_gone", "missing_field"];

/// The loops that retry a failed pass, as the `part` label of `dagop_pass_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassKind {
    /// a scheduler pass (`Engine::tick`)
    Engine,
    /// an executor step (`Executor::step`)
    Executor,
}

impl PassKind {
    pub const ALL: [PassKind; 2] = [PassKind::Engine, PassKind::Executor];

    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Engine => "engine",
            PassKind::Executor => "executor",
        }
    }

    /// The `error` labels a failed pass can carry (each series exists from the start): the
    /// engine's pass fails only on the store (`StoreError`), an executor step on the store or
    /// the gate (`ExecError::metric_label()`).
    pub fn errors(self) -> &'static [&'static str] {
        match self {
            PassKind::Engine => &["store"],
            PassKind::Executor => &["store", "gate"],
        }
    }
}

/// The parts the operator depends on, as the `component` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Store,
    Gate,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Store => "store",
            Component::Gate => "gate",
        }
    }
}

/// The reconcilers, as the `controller` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControllerKind {
    Dag,
    Pool,
    Backfill,
}

impl ControllerKind {
    pub const ALL: [ControllerKind; 3] = [
        ControllerKind::Dag,
        ControllerKind::Pool,
        ControllerKind::Backfill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Dag => "dag",
            ControllerKind::Pool => "pool",
            ControllerKind::Backfill => "backfill",
        }
    }
}

const RUN_TYPES: [RunType; 3] = [RunType::Scheduled, RunType::Manual, RunType::Backfill];
const RUN_CLASSES: [RunClass; 3] = [RunClass::Backfill, RunClass::Scheduled, RunClass::Manual];

/// One label, value from a closed set.
type Label1 = [(&'static str, &'static str); 1];
type Label2 = [(&'static str, &'static str); 2];
/// `namespace`, `pool` and `state` of `dagop_pool_slots`.
type PoolLabels = [(&'static str, Cow<'static, str>); 3];
/// `namespace` and `dag`.
type DagLabels = [(&'static str, Cow<'static, str>); 2];
/// `namespace`, `dag` and `state`.
type DagStateLabels = [(&'static str, Cow<'static, str>); 3];
type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type DurationFamily = Family<Label1, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The run states a run can end in.
const FINAL_RUN_STATES: [RunState; 3] = [RunState::Success, RunState::Failed, RunState::Cancelled];

type HistogramFamily = Family<Label1, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

/// Every metric family of SPEC §9, registered under the `dagop_` prefix.
///
/// Cheap to update from any thread (atomics; label maps behind a read-mostly lock); share it
/// as `Arc<Metrics>`. Families with closed label sets are pre-populated with zeroes, so every
/// series exists from the first scrape and `rate()` sees the first increment.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs_created: Family<Label1, Counter>,
    schedule_delay: Histogram,
    queue_depth: Family<Label1, Gauge>,
    active_runs: Gauge,
    gate_rejections: Family<Label1, Counter>,
    gate_errors: Family<Label1, Counter>,
    task_instances: Family<Label1, Gauge>,
    task_transitions: Family<Label1, Counter>,
    pool_slots: Family<PoolLabels, Gauge>,
    reconcile_duration: HistogramFamily,
    reconcile_errors: Family<Label2, Counter>,
    pass_errors: Family<Label2, Counter>,
    leader: Gauge,
    runs_finished: Family<DagStateLabels, Counter>,
    last_success: Family<DagLabels, F64Gauge>,
    last_failure: Family<DagLabels, F64Gauge>,
    schedule_interval: Family<DagLabels, F64Gauge>,
    run_duration: DurationFamily,
    try_duration: DurationFamily,
    up: Family<Label1, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        let runs_created = Family::<Label1, Counter>::default();
        registry.register(
            "runs_created",
            "Runs created (persisted), by run type",
            runs_created.clone(),
        );
        let schedule_delay = Histogram::new(SCHEDULE_DELAY_BUCKETS);
        registry.register_with_unit(
            "schedule_delay",
            "Admission time minus the tick (logical date) the run was due at",
            Unit::Seconds,
            schedule_delay.clone(),
        );
        let queue_depth = Family::<Label1, Gauge>::default();
        registry.register(
            "queue_depth",
            "Runs waiting for admission, by current priority class",
            queue_depth.clone(),
        );
        let active_runs = Gauge::default();
        registry.register(
            "active_runs",
            "Runs admitted and not finished",
            active_runs.clone(),
        );
        let gate_rejections = Family::<Label1, Counter>::default();
        registry.register(
            "gate_rejections",
            "Admissions refused because a limit was full, by limit scope",
            gate_rejections.clone(),
        );
        let gate_errors = Family::<Label1, Counter>::default();
        registry.register(
            "gate_errors",
            "Gate operations that failed (e.g. Redis unreachable), by limit scope",
            gate_errors.clone(),
        );
        let task_instances = Family::<Label1, Gauge>::default();
        registry.register(
            "task_instances",
            "Task instances of active runs, by state",
            task_instances.clone(),
        );
        let task_transitions = Family::<Label1, Counter>::default();
        registry.register(
            "task_transitions",
            "Task-instance state changes, by the state entered",
            task_transitions.clone(),
        );
        let pool_slots = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_slots",
            "Pool slots by pool (namespace/name) and state (used, open, queued)",
            Described(pool_slots.clone()),
        );
        let reconcile_duration: HistogramFamily = Family::new_with_constructor(reconcile_histogram);
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconcile, by controller",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<Label2, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that returned an error, by controller",
            reconcile_errors.clone(),
        );
        let pass_errors = Family::<Label2, Counter>::default();
        registry.register(
            "pass_errors",
            "Engine passes and executor steps that failed (and are retried), by part and error",
            pass_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );

        let runs_finished = Family::<DagStateLabels, Counter>::default();
        registry.register(
            "runs_finished",
            "Runs that ended, by DAG (namespace, dag) and final state (success, failed, cancelled)",
            Described(runs_finished.clone()),
        );
        let last_success = Family::<DagLabels, F64Gauge>::default();
        registry.register_with_unit(
            "dag_last_success_timestamp",
            "When the newest run of the DAG that succeeded ended (seconds since the epoch)",
            Unit::Seconds,
            Described(last_success.clone()),
        );
        let last_failure = Family::<DagLabels, F64Gauge>::default();
        registry.register_with_unit(
            "dag_last_failure_timestamp",
            "When the newest run of the DAG that failed ended (seconds since the epoch)",
            Unit::Seconds,
            Described(last_failure.clone()),
        );
        let schedule_interval = Family::<DagLabels, F64Gauge>::default();
        registry.register_with_unit(
            "dag_schedule_interval",
            "The DAG's expected interval between scheduled runs: the longest gap between its next ticks, plus its jitter (no series while suspended or unscheduled)",
            Unit::Seconds,
            Described(schedule_interval.clone()),
        );
        let run_duration: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "run_duration",
            "Duration of runs that ended (admission to end), by run type",
            Unit::Seconds,
            run_duration.clone(),
        );
        let try_duration: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "task_try_duration",
            "Duration of task tries that ended (Pod start to end), by the state they ended in",
            Unit::Seconds,
            try_duration.clone(),
        );
        let up = Family::<Label1, Gauge>::default();
        registry.register(
            "component_up",
            "1 while the component (store: PostgreSQL, gate: Redis or in process) answers, else 0",
            up.clone(),
        );
        let build_info = Family::<Label1, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the operator's version",
            build_info.clone(),
        );
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);

        let m = Metrics {
            registry,
            runs_created,
            schedule_delay,
            queue_depth,
            active_runs,
            gate_rejections,
            gate_errors,
            task_instances,
            task_transitions,
            pool_slots,
            reconcile_duration,
            reconcile_errors,
            pass_errors,
            leader,
            runs_finished,
            last_success,
            last_failure,
            schedule_interval,
            run_duration,
            try_duration,
            up,
        };
        m.prepopulate();
        m
    }

    /// Creates every series of the closed label sets, at zero.
    fn prepopulate(&self) {
        fn init<M, C: MetricConstructor<M>>(
            family: &Family<Label1, M, C>,
            key: &'static str,
            value: &'static str,
        ) {
            drop(family.get_or_create(&[(key, value)]));
        }
        for t in RUN_TYPES {
            init(&self.runs_created, "type", t.as_str());
        }
        for c in RUN_CLASSES {
            init(&self.queue_depth, "class", c.as_str());
        }
        for s in GateScope::ALL {
            init(&self.gate_rejections, "scope", s.as_str());
            init(&self.gate_errors, "scope", s.as_str());
        }
        for s in TaskState::ALL {
            init(&self.task_instances, "state", s.as_str());
            init(&self.task_transitions, "state", s.as_str());
        }
        for t in RUN_TYPES {
            init(&self.run_duration, "type", t.as_str());
        }
        for c in [Component::Store, Component::Gate] {
            self.up.get_or_create(&[("component", c.as_str())]).set(1);
        }
        for s in TaskState::ALL {
            init(&self.try_duration, "state", s.as_str());
        }
        for c in ControllerKind::ALL {
            init(&self.reconcile_duration, "controller", c.as_str());
            for error in RECONCILE_ERRORS {
                drop(
                    self.reconcile_errors
                        .get_or_create(&[("controller", c.as_str()), ("error", error)]),
                );
            }
        }
        for p in PassKind::ALL {
            for error in p.errors() {
                drop(
                    self.pass_errors
                        .get_or_create(&[("part", p.as_str()), ("error", error)]),
                );
            }
        }
    }

    /// A run was created (persisted as `running`).
    pub fn run_created(&self, kind: RunType) {
        self.runs_created
            .get_or_create(&[("type", kind.as_str())])
            .inc();
    }

    /// Admission time minus the run's tick, in seconds. Negative values (clock skew) count
    /// as 0; NaN is ignored.
    pub fn observe_schedule_delay(&self, secs: f64) {
        if !secs.is_nan() {
            self.schedule_delay.observe(secs.max(0.0));
        }
    }

    /// Queue depth per class, indexed by `RunClass as usize`: `[backfill, scheduled, manual]`.
    pub fn set_queue_depth(&self, depth: [usize; 3]) {
        for c in RUN_CLASSES {
            self.queue_depth
                .get_or_create(&[("class", c.as_str())])
                .set(saturating_i64(depth[c as usize]));
        }
    }

    pub fn set_active_runs(&self, n: i64) {
        self.active_runs.set(n);
    }

    /// An admission was refused because the limit of `scope` was full.
    pub fn gate_rejected(&self, scope: GateScope) {
        self.gate_rejections
            .get_or_create(&[("scope", scope.as_str())])
            .inc();
    }

    /// A gate operation on `scope` failed (e.g. Redis unreachable; admission pauses).
    pub fn gate_error(&self, scope: GateScope) {
        self.gate_errors
            .get_or_create(&[("scope", scope.as_str())])
            .inc();
    }

    /// Number of task instances currently in `state`.
    pub fn set_task_instances(&self, state: TaskState, n: i64) {
        self.task_instances
            .get_or_create(&[("state", state.as_str())])
            .set(n);
    }

    /// A task instance entered `state`.
    pub fn task_transition(&self, to: TaskState) {
        self.task_transitions
            .get_or_create(&[("state", to.as_str())])
            .inc();
    }

    /// Slots of Pool `namespace/pool`: held by running tasks, free, and requested by
    /// queued tasks.
    pub fn set_pool_slots(&self, namespace: &str, pool: &str, used: i64, open: i64, queued: i64) {
        for (state, v) in [("used", used), ("open", open), ("queued", queued)] {
            self.pool_slots
                .get_or_create(&pool_labels(namespace, pool, state))
                .set(v);
        }
    }

    /// Forget a deleted pool's series.
    pub fn remove_pool(&self, namespace: &str, pool: &str) {
        for state in ["used", "open", "queued"] {
            self.pool_slots.remove(&pool_labels(namespace, pool, state));
        }
    }

    /// A run of DAG `namespace/dag` ended in `state` at `ended_at` (seconds since the epoch),
    /// after `duration` seconds when known.
    pub fn run_finished(
        &self,
        namespace: &str,
        dag: &str,
        state: RunState,
        run_type: RunType,
        ended_at: f64,
        duration: Option<f64>,
    ) {
        self.runs_finished
            .get_or_create(&dag_state_labels(namespace, dag, state))
            .inc();
        let last = match state {
            RunState::Success => Some(&self.last_success),
            RunState::Failed => Some(&self.last_failure),
            _ => None,
        };
        if let Some(family) = last {
            raise(family, namespace, dag, ended_at);
        }
        if let Some(secs) = duration.filter(|s| !s.is_nan()) {
            self.run_duration
                .get_or_create(&[("type", run_type.as_str())])
                .observe(secs.max(0.0));
        }
    }

    /// When the DAG's newest runs that succeeded and that failed ended, as the store
    /// recorded them (at start); a newer end already reported stays.
    pub fn seed_last_ends(
        &self,
        namespace: &str,
        dag: &str,
        success: Option<f64>,
        failure: Option<f64>,
    ) {
        if let Some(t) = success {
            raise(&self.last_success, namespace, dag, t);
        }
        if let Some(t) = failure {
            raise(&self.last_failure, namespace, dag, t);
        }
    }

    /// The DAG's expected interval between scheduled runs (`None`: it has none now, e.g.
    /// suspended or trigger-only: no series).
    pub fn set_schedule_interval(&self, namespace: &str, dag: &str, secs: Option<f64>) {
        let labels = dag_labels(namespace, dag);
        match secs.filter(|s| s.is_finite()) {
            Some(secs) => {
                self.schedule_interval.get_or_create(&labels).set(secs);
            }
            None => {
                self.schedule_interval.remove(&labels);
            }
        }
    }

    /// A task try ended in `state` after `secs`.
    pub fn task_try_finished(&self, state: TaskState, secs: f64) {
        if !secs.is_nan() {
            self.try_duration
                .get_or_create(&[("state", state.as_str())])
                .observe(secs.max(0.0));
        }
    }

    /// Forget a deleted DAG's series.
    pub fn remove_dag(&self, namespace: &str, dag: &str) {
        for state in FINAL_RUN_STATES {
            self.runs_finished
                .remove(&dag_state_labels(namespace, dag, state));
        }
        self.last_success.remove(&dag_labels(namespace, dag));
        self.last_failure.remove(&dag_labels(namespace, dag));
        self.schedule_interval.remove(&dag_labels(namespace, dag));
    }

    /// One reconcile of `controller` took `secs`; `error` is the failed one's `metric_label()`.
    pub fn reconcile_observed(
        &self,
        controller: ControllerKind,
        secs: f64,
        error: Option<&'static str>,
    ) {
        let labels = [("controller", controller.as_str())];
        if !secs.is_nan() {
            self.reconcile_duration
                .get_or_create(&labels)
                .observe(secs.max(0.0));
        }
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&[("controller", controller.as_str()), ("error", error)])
                .inc();
        }
    }

    /// A pass of `part` failed with `error` (the error's `metric_label()`, one of
    /// [`PassKind::errors`]); it is retried.
    pub fn pass_failed(&self, part: PassKind, error: &'static str) {
        self.pass_errors
            .get_or_create(&[("part", part.as_str()), ("error", error)])
            .inc();
    }

    /// Whether `component` (`store` or `gate`) answers.
    pub fn set_component_up(&self, component: Component, up: bool) {
        self.up
            .get_or_create(&[("component", component.as_str())])
            .set(i64::from(up));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The whole registry in the OpenMetrics text format (ends with `# EOF`); serve it with
    /// [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, and every label value is plain text.
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// A family whose `# HELP`/`# TYPE` lines are written even while it has no series (the
/// library skips empty families), so every family of SPEC §9 is visible from the first scrape.
/// OpenMetrics allows a family with zero metrics.
#[derive(Debug)]
struct Described<M>(M);

impl<M: EncodeMetric> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

fn pool_labels(namespace: &str, pool: &str, state: &'static str) -> PoolLabels {
    [
        ("namespace", Cow::Owned(namespace.to_owned())),
        ("pool", Cow::Owned(pool.to_owned())),
        ("state", Cow::Borrowed(state)),
    ]
}

fn dag_labels(namespace: &str, dag: &str) -> DagLabels {
    [
        ("namespace", Cow::Owned(namespace.to_owned())),
        ("dag", Cow::Owned(dag.to_owned())),
    ]
}

fn dag_state_labels(namespace: &str, dag: &str, state: RunState) -> DagStateLabels {
    [
        ("namespace", Cow::Owned(namespace.to_owned())),
        ("dag", Cow::Owned(dag.to_owned())),
        ("state", Cow::Borrowed(state.as_str())),
    ]
}

/// Sets a timestamp gauge to `t` unless it holds a later one.
fn raise(family: &Family<DagLabels, F64Gauge>, namespace: &str, dag: &str, t: f64) {
    let gauge = family.get_or_create(&dag_labels(namespace, dag));
    if t > gauge.get() {
        gauge.set(t);
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// Shared across tasks as `Arc<Metrics>`.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family of SPEC §9, as it appears in the exposition (`# TYPE` names).
    const FAMILIES: [&str; 21] = [
        "dagop_runs_created",
        "dagop_schedule_delay_seconds",
        "dagop_queue_depth",
        "dagop_active_runs",
        "dagop_gate_rejections",
        "dagop_gate_errors",
        "dagop_task_instances",
        "dagop_task_transitions",
        "dagop_pool_slots",
        "dagop_reconcile_duration_seconds",
        "dagop_reconcile_errors",
        "dagop_pass_errors",
        "dagop_leader",
        "dagop_runs_finished",
        "dagop_dag_last_success_timestamp_seconds",
        "dagop_dag_last_failure_timestamp_seconds",
        "dagop_dag_schedule_interval_seconds",
        "dagop_run_duration_seconds",
        "dagop_task_try_duration_seconds",
        "dagop_build_info",
        "dagop_component_up",
    ];

    fn type_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect()
    }

    fn touch_all(m: &Metrics) {
        m.run_created(RunType::Manual);
        m.observe_schedule_delay(0.2);
        m.set_queue_depth([3, 2, 1]);
        m.set_active_runs(4);
        m.gate_rejected(GateScope::DagRuns);
        m.gate_error(GateScope::Pool);
        m.set_task_instances(TaskState::UpForRetry, 5);
        m.task_transition(TaskState::Running);
        m.set_pool_slots("ns", "gpu", 2, 6, 1);
        m.reconcile_observed(ControllerKind::Backfill, 0.01, Some("kube"));
        m.pass_failed(PassKind::Executor, "gate");
        m.set_leader(true);
        m.run_finished(
            "ns",
            "etl",
            RunState::Failed,
            RunType::Scheduled,
            1.7e9,
            Some(12.0),
        );
        m.task_try_finished(TaskState::Success, 3.0);
        m.set_schedule_interval("ns", "etl", Some(3600.0));
    }

    #[test]
    fn every_family_is_exported_with_prefix() {
        let m = Metrics::new();
        let fresh = m.encode();
        touch_all(&m);
        let touched = m.encode();
        for text in [&fresh, &touched] {
            let types = type_lines(text);
            for f in FAMILIES {
                assert!(types.contains(&f), "missing family {f} in\n{text}");
            }
            assert!(types.iter().all(|t| t.starts_with("dagop_")), "{types:?}");
            assert!(text.ends_with("# EOF\n"));
        }
    }

    #[test]
    fn closed_label_sets_start_at_zero() {
        let text = Metrics::new().encode();
        for line in [
            "dagop_runs_created_total{type=\"scheduled\"} 0",
            "dagop_runs_created_total{type=\"manual\"} 0",
            "dagop_runs_created_total{type=\"backfill\"} 0",
            "dagop_queue_depth{class=\"backfill\"} 0",
            "dagop_gate_rejections_total{scope=\"global_runs\"} 0",
            "dagop_gate_errors_total{scope=\"running_tasks\"} 0",
            "dagop_task_instances{state=\"upstream_failed\"} 0",
            "dagop_task_transitions_total{state=\"cancelled\"} 0",
            "dagop_reconcile_errors_total{controller=\"pool\",error=\"kube\"} 0",
            "dagop_reconcile_duration_seconds_count{controller=\"dag\"} 0",
            "dagop_pass_errors_total{part=\"engine\",error=\"store\"} 0",
            "dagop_pass_errors_total{part=\"executor\",error=\"store\"} 0",
            "dagop_pass_errors_total{part=\"executor\",error=\"gate\"} 0",
            "dagop_schedule_delay_seconds_count 0",
            "dagop_active_runs 0",
            "dagop_leader 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("dagop_pool_slots{"), "no pool known yet");
        assert!(
            !text.contains("part=\"engine\",error=\"gate\""),
            "the engine's pass fails only on the store"
        );
    }

    #[test]
    fn typed_methods_write_the_expected_series() {
        let m = Metrics::new();
        touch_all(&m);
        m.run_created(RunType::Manual);
        m.observe_schedule_delay(-3.0);
        m.observe_schedule_delay(f64::NAN);
        m.reconcile_observed(ControllerKind::Dag, 0.5, None);
        m.pass_failed(PassKind::Engine, "store");
        let text = m.encode();
        for line in [
            "dagop_runs_created_total{type=\"manual\"} 2",
            "dagop_runs_created_total{type=\"scheduled\"} 0",
            "dagop_schedule_delay_seconds_count 2",
            "dagop_schedule_delay_seconds_bucket{le=\"0.001\"} 1",
            "dagop_schedule_delay_seconds_bucket{le=\"300.0\"} 2",
            "dagop_queue_depth{class=\"backfill\"} 3",
            "dagop_queue_depth{class=\"scheduled\"} 2",
            "dagop_queue_depth{class=\"manual\"} 1",
            "dagop_active_runs 4",
            "dagop_gate_rejections_total{scope=\"dag_runs\"} 1",
            "dagop_gate_errors_total{scope=\"pool\"} 1",
            "dagop_task_instances{state=\"up_for_retry\"} 5",
            "dagop_task_transitions_total{state=\"running\"} 1",
            "dagop_pool_slots{namespace=\"ns\",pool=\"gpu\",state=\"used\"} 2",
            "dagop_pool_slots{namespace=\"ns\",pool=\"gpu\",state=\"open\"} 6",
            "dagop_pool_slots{namespace=\"ns\",pool=\"gpu\",state=\"queued\"} 1",
            "dagop_reconcile_errors_total{controller=\"backfill\",error=\"kube\"} 1",
            "dagop_reconcile_errors_total{controller=\"dag\",error=\"kube\"} 0",
            "dagop_reconcile_duration_seconds_count{controller=\"dag\"} 1",
            "dagop_pass_errors_total{part=\"executor\",error=\"gate\"} 1",
            "dagop_pass_errors_total{part=\"executor\",error=\"store\"} 0",
            "dagop_pass_errors_total{part=\"engine\",error=\"store\"} 1",
            "dagop_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.set_leader(false);
        m.remove_pool("ns", "gpu");
        let text = m.encode();
        assert!(text.lines().any(|l| l == "dagop_leader 0"));
        assert!(!text.contains("ns/gpu"), "{text}");
    }

    #[test]
    fn schedule_delay_buckets_span_1ms_to_5min() {
        assert_eq!(SCHEDULE_DELAY_BUCKETS[0], 0.001);
        assert_eq!(
            SCHEDULE_DELAY_BUCKETS[SCHEDULE_DELAY_BUCKETS.len() - 1],
            300.0
        );
        assert!(SCHEDULE_DELAY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(RECONCILE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn per_dag_series_follow_finished_runs_and_go_with_the_dag() {
        let m = Metrics::new();
        m.run_finished(
            "ns",
            "etl",
            RunState::Failed,
            RunType::Scheduled,
            100.0,
            Some(30.0),
        );
        m.run_finished(
            "ns",
            "etl",
            RunState::Failed,
            RunType::Scheduled,
            90.0,
            None,
        );
        m.run_finished(
            "ns",
            "etl",
            RunState::Success,
            RunType::Manual,
            200.0,
            Some(5.0),
        );
        let text = m.encode();
        for line in [
            "dagop_runs_finished_total{namespace=\"ns\",dag=\"etl\",state=\"failed\"} 2",
            "dagop_runs_finished_total{namespace=\"ns\",dag=\"etl\",state=\"success\"} 1",
            // the newest end wins, also when reports arrive out of order
            "dagop_dag_last_failure_timestamp_seconds{namespace=\"ns\",dag=\"etl\"} 100.0",
            "dagop_dag_last_success_timestamp_seconds{namespace=\"ns\",dag=\"etl\"} 200.0",
            "dagop_run_duration_seconds_count{type=\"scheduled\"} 1",
            "dagop_run_duration_seconds_count{type=\"manual\"} 1",
            "dagop_build_info{version=\"",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        m.set_schedule_interval("ns", "etl", Some(86_400.0));
        m.set_schedule_interval("ns", "hourly", Some(3600.0));
        let text = m.encode();
        for line in [
            "dagop_dag_schedule_interval_seconds{namespace=\"ns\",dag=\"etl\"} 86400.0",
            "dagop_dag_schedule_interval_seconds{namespace=\"ns\",dag=\"hourly\"} 3600.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // suspended (or trigger-only): no series
        m.set_schedule_interval("ns", "hourly", None);
        assert!(!m.encode().contains("dag=\"hourly\""));
        m.remove_dag("ns", "etl");
        assert!(!m.encode().contains("dag=\"etl\""));
    }

    #[test]
    fn executor_error_labels_are_pre_registered() {
        use crate::executor::ExecError;
        use crate::gate::GateError;
        use crate::store::StoreError;
        let errors = [
            ExecError::Store(StoreError::Corrupt {
                column: "state",
                value: "x".into(),
            }),
            ExecError::Gate(GateError::Unavailable("down".into())),
        ];
        for e in &errors {
            assert!(
                PassKind::Executor.errors().contains(&e.metric_label()),
                "{e}"
            );
        }
        let m = Metrics::new();
        m.pass_failed(PassKind::Executor, errors[1].metric_label());
        assert!(
            m.encode()
                .lines()
                .any(|l| l == "dagop_pass_errors_total{part=\"executor\",error=\"gate\"} 1")
        );
    }

    #[test]
    fn seeded_ends_never_move_a_gauge_back() {
        let m = Metrics::new();
        m.run_finished("ns", "etl", RunState::Success, RunType::Manual, 500.0, None);
        // the store's record is older than what this process saw end
        m.seed_last_ends("ns", "etl", Some(400.0), Some(450.0));
        m.seed_last_ends("ns", "new", None, Some(300.0));
        let text = m.encode();
        for line in [
            "dagop_dag_last_success_timestamp_seconds{namespace=\"ns\",dag=\"etl\"} 500.0",
            "dagop_dag_last_failure_timestamp_seconds{namespace=\"ns\",dag=\"etl\"} 450.0",
            "dagop_dag_last_failure_timestamp_seconds{namespace=\"ns\",dag=\"new\"} 300.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text
                .contains("dagop_dag_last_success_timestamp_seconds{namespace=\"ns\",dag=\"new\"}"),
            "no success known: no series"
        );
    }
}

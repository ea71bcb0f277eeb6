//! The DAG controller: validates each DAG (what the schema cannot check: cron syntax, zone,
//! graph), tells the engine, and reports validity to the status writer. An invalid DAG gets
//! `Ready=False` with the reason and the offending token and is taken off the schedule; the
//! other DAGs are untouched.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono_tz::Tz;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{self, Action, Controller, Error as RuntimeError};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::namespace::Tenancy;
use super::relist::Change;
use super::status::{Problem, StatusUpdate, Validity};
use super::{ControllerError, Events, dag_reference, watch};
use crate::api::dag::{DagSpecError, dependency_cycle};
use crate::api::lean::{self, LeanDag};
use crate::api::tenancy::{EffectivePriority, MAX_DAG_PRIORITY_ANNOTATION, TenancyDefaults};
use crate::api::{DAG, Pool};
use crate::engine::{Command, DagInfo};
use crate::k8s;
use crate::store::DagKey;
use crate::telemetry::{ControllerKind, Metrics};

/// What the reconciler needs.
pub struct Context {
    pub engine: mpsc::Sender<Command>,
    pub status: mpsc::UnboundedSender<StatusUpdate>,
    pub events: Events,
    pub default_tz: Tz,
    /// (generation, reason) of the last invalid-spec event per DAG, so each is told once
    reported: Mutex<HashMap<DagKey, (Option<i64>, String)>>,
    /// reconcile durations and errors
    pub metrics: Option<Arc<Metrics>>,
    /// the Pools that exist (a DAG naming another one reports PoolNotFound)
    pub pools: Option<reflector::Store<Pool>>,
    /// each namespace's ceiling on `spec.priority`
    pub tenancy: Tenancy,
    /// the DAGs watched (a `triggeredBy` cycle is looked for among them)
    pub dags: Option<reflector::Store<DAG>>,
    /// whether a jitter fits its schedule, by schedule and jitter: a year of an hourly
    /// schedule's ticks is walked once, not at every reconcile of every DAG sharing it
    jitter_checks: Mutex<HashMap<String, Result<(), DagSpecError>>>,
    /// the upstream DAGs each DAG names that do not exist (yet), as (field, name): a DAG
    /// appearing nudges the DAGs waiting for it, and a new set is told once as an event
    waiting: Mutex<HashMap<DagKey, Vec<(&'static str, String)>>>,
    /// reconciles asked for by [`Context::nudge_dependents`] (set by [`run`])
    nudge: std::sync::OnceLock<futures::channel::mpsc::UnboundedSender<reflector::ObjectRef<DAG>>>,
}

/// Jitter checks remembered (then the memory starts afresh).
const JITTER_CHECKS_KEPT: usize = 4096;

impl Context {
    pub fn new(
        engine: mpsc::Sender<Command>,
        status: mpsc::UnboundedSender<StatusUpdate>,
        events: Events,
        default_tz: Tz,
    ) -> Self {
        Context {
            engine,
            status,
            events,
            default_tz,
            reported: Mutex::new(HashMap::new()),
            metrics: None,
            pools: None,
            tenancy: Tenancy::defaults(TenancyDefaults::default()),
            dags: None,
            jitter_checks: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            nudge: std::sync::OnceLock::new(),
        }
    }

    /// The upstream DAGs (`dependsOn`, then `triggeredBy`) `dag` names that do not exist in
    /// its namespace, as (field, name), each once; and whether that set is new (to be told
    /// as an event). Remembered while any is missing, so the DAG is looked at again when one
    /// appears: the set is computed under the same lock [`Context::nudge_dependents`] takes
    /// after the watch cache has the new DAG, so an upstream appearing meanwhile is either
    /// seen here or nudges this DAG.
    fn missing_upstreams(&self, dag: &DAG, key: &DagKey) -> (Vec<(&'static str, String)>, bool) {
        let Some(dags) = &self.dags else {
            return (Vec::new(), false);
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<(&'static str, String)> = Vec::new();
        let named = dag
            .spec
            .depends_on
            .iter()
            .map(|r| ("dependsOn", r))
            .chain(dag.spec.triggered_by.iter().map(|r| ("triggeredBy", r)));
        for (field, upstream) in named {
            let exists = dags
                .get(&reflector::ObjectRef::<DAG>::new(&upstream.dag).within(&key.namespace))
                .is_some();
            if !exists
                && !missing
                    .iter()
                    .any(|(f, n)| *f == field && *n == upstream.dag)
            {
                missing.push((field, upstream.dag.clone()));
            }
        }
        if missing.is_empty() {
            waiting.remove(key);
            return (missing, false);
        }
        let new = waiting.insert(key.clone(), missing.clone()).as_ref() != Some(&missing);
        (missing, new)
    }

    /// A DAG was applied or deleted (the watch cache already says so): the DAGs waiting for
    /// it as an upstream, or naming it, are reconciled again — at once, not at their next
    /// periodic requeue — so `UpstreamNotFound` clears when the upstream appears and comes
    /// when it goes.
    fn nudge_dependents(&self, event: &watcher::Event<DAG>) {
        let Some(nudge) = self.nudge.get() else {
            return;
        };
        let dependents: Vec<reflector::ObjectRef<DAG>> = match event {
            watcher::Event::Apply(dag) | watcher::Event::InitApply(dag) => {
                let (Some(ns), Some(name)) = (dag.namespace(), dag.metadata.name.as_deref()) else {
                    return;
                };
                let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                waiting
                    .iter()
                    .filter(|(k, missing)| {
                        k.namespace == ns && missing.iter().any(|(_, n)| n == name)
                    })
                    .map(|(k, _)| reflector::ObjectRef::new(&k.name).within(&k.namespace))
                    .collect()
            }
            watcher::Event::Delete(dag) => {
                let (Some(ns), Some(name), Some(dags)) =
                    (dag.namespace(), dag.metadata.name.as_deref(), &self.dags)
                else {
                    return;
                };
                dags.state()
                    .into_iter()
                    .filter(|d| d.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .filter(|d| d.spec.upstream_dags().any(|u| u == name))
                    .map(|d| reflector::ObjectRef::from_obj(&*d))
                    .collect()
            }
            _ => return,
        };
        for dependent in dependents {
            // gone only while shutting down
            let _ = nudge.unbounded_send(dependent);
        }
    }

    /// Whether the DAG's jitter fits its schedule ([`DagSpec::check_jitter`]), remembered
    /// by schedule and jitter (the answer covers a year of ticks: it does not change as time
    /// passes).
    fn check_jitter(
        &self,
        spec: &crate::api::DagSpec,
        schedule: Option<&crate::schedule::Schedule>,
    ) -> Result<(), DagSpecError> {
        // nothing to walk without a jitter or a schedule
        if spec.jitter.is_none() || schedule.is_none() {
            return spec.check_jitter(schedule, chrono::Utc::now());
        }
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
            spec.schedule_exprs(),
            spec.exclude,
            spec.timezone,
            spec.start_date,
            spec.end_date,
            spec.jitter,
            self.default_tz
        );
        let checks = || self.jitter_checks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(result) = checks().get(&key) {
            return result.clone();
        }
        // walked without the lock: other reconciles go on meanwhile
        let result = spec.check_jitter(schedule, chrono::Utc::now());
        let mut known = checks();
        if known.len() >= JITTER_CHECKS_KEPT {
            known.clear();
        }
        known.insert(key, result.clone());
        result
    }

    pub fn with_dags(mut self, dags: reflector::Store<DAG>) -> Self {
        self.dags = Some(dags);
        self
    }

    /// A `triggeredBy` cycle through `dag` among the DAGs of its namespace.
    fn cycle(&self, dag: &DAG, key: &DagKey) -> Option<DagSpecError> {
        // no upstream: no cycle
        dag.spec.upstream_dags().next()?;
        let dags = self.dags.as_ref()?;
        let ns = key.namespace.as_str();
        let edges = |spec: &crate::api::DagSpec| -> Vec<String> {
            spec.upstream_dags().map(str::to_string).collect()
        };
        let upstreams = |name: &str| -> Vec<String> {
            if name == key.name {
                edges(&dag.spec)
            } else {
                dags.get(&reflector::ObjectRef::<DAG>::new(name).within(ns))
                    .map(|d| edges(&d.spec))
                    .unwrap_or_default()
            }
        };
        dependency_cycle(&key.name, upstreams).map(DagSpecError::DependencyCycle)
    }

    pub fn with_tenancy(mut self, tenancy: Tenancy) -> Self {
        self.tenancy = tenancy;
        self
    }

    /// Hands an update to the status writer (gone only while shutting down: logged).
    fn tell_status(&self, update: StatusUpdate) {
        if self.status.send(update).is_err() {
            tracing::debug!("status update dropped: the status writer has stopped");
        }
    }

    pub fn with_pools(mut self, pools: reflector::Store<Pool>) -> Self {
        self.pools = Some(pools);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// [`reconcile`], timed into `dagop_reconcile_duration_seconds` / `dagop_reconcile_errors`.
async fn reconcile_timed(dag: Arc<DAG>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = reconcile(dag, ctx.clone()).await;
    if let Some(m) = &ctx.metrics {
        m.reconcile_observed(
            ControllerKind::Dag,
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(ControllerError::metric_label),
        );
    }
    result
}

fn key_of(dag: &DAG) -> Result<DagKey, ControllerError> {
    let namespace = dag
        .namespace()
        .ok_or(ControllerError::Missing("namespace"))?;
    Ok(DagKey::new(namespace, dag.name_any()))
}

/// The condition of an invalid spec: the error, which names the offending token.
fn problem(e: &DagSpecError) -> Problem {
    Problem {
        reason: e.reason().to_string(),
        message: e.to_string(),
    }
}

/// The condition of a priority lowered to the namespace's ceiling.
fn clamped(key: &DagKey, priority: EffectivePriority) -> Option<Problem> {
    let requested = priority.clamped_from?;
    Some(Problem {
        reason: "AboveNamespaceCeiling".to_string(),
        message: format!(
            "spec.priority {requested} is above the ceiling {} of namespace {:?} \
             (--max-dag-priority, or its annotation {MAX_DAG_PRIORITY_ANNOTATION}): runs are \
             queued at {}",
            priority.value, key.namespace, priority.value
        ),
    })
}

/// What the controller knows of a DAG's spec, for its status.
fn validity(
    dag: &DAG,
    key: &DagKey,
    priority: EffectivePriority,
    problem: Option<Problem>,
) -> Validity {
    Validity {
        generation: dag.meta().generation,
        problem,
        observed_trigger: observed_trigger(dag),
        priority_clamped: clamped(key, priority),
        observed_auto_suspension: dag.status.as_ref().and_then(|s| s.auto_suspension.clone()),
    }
}

/// One DAG, in four steps.
pub async fn reconcile(dag: Arc<DAG>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    // 1. dereference: which DAG, and is it going away?
    let key = key_of(&dag)?;
    if dag.meta().deletion_timestamp.is_some() {
        let uid = dag.meta().uid.clone().unwrap_or_default();
        forget(&ctx, key, uid).await?;
        return Ok(Action::await_change());
    }
    // 2. the Pools its tasks name, the upstream DAGs it names
    if let Some(pools) = &ctx.pools {
        ctx.tell_status(StatusUpdate::MissingPools(
            key.clone(),
            missing_pools(&dag, pools),
        ));
    }
    let (missing, new) = ctx.missing_upstreams(&dag, &key);
    let upstreams = upstreams_problem(&missing);
    if new && let Some(Problem { reason, message }) = &upstreams {
        tracing::warn!(dag = %key, %message, "upstream DAG not found");
        ctx.events
            .publish(
                &dag_reference(&key, dag.meta().uid.as_deref()),
                true,
                reason,
                message.clone(),
            )
            .await;
    }
    ctx.tell_status(StatusUpdate::MissingUpstreams(key.clone(), upstreams));
    // 3. validate what the schema cannot (cron, zone, graph, cycles), and tell the engine
    //    (with the priority its namespace allows)
    let priority = ctx
        .tenancy
        .policy(&key.namespace)
        .priority(dag.spec.priority);
    let problem = ctx.validate_and_tell(&dag, &key, priority.value).await?;
    // 4. validity into the status; an invalid spec also as an event, once per generation
    ctx.tell_status(StatusUpdate::Validity(
        key.clone(),
        validity(&dag, &key, priority, problem.clone()),
    ));
    ctx.report_problem(&dag, &key, problem).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

impl Context {
    /// Validates what the schema cannot and tells the engine: the DAG to schedule, or that
    /// it is invalid (its problem returned).
    async fn validate_and_tell(
        &self,
        dag: &Arc<DAG>,
        key: &DagKey,
        priority: i32,
    ) -> Result<Option<Problem>, ControllerError> {
        let validated = dag
            .spec
            .validate(self.default_tz)
            .and_then(|ok| match self.cycle(dag, key) {
                Some(cycle) => Err(cycle),
                None => Ok(ok),
            })
            .and_then(|(schedule, graph)| {
                self.check_jitter(&dag.spec, schedule.as_ref())?;
                Ok((schedule, graph))
            });
        match validated {
            Ok((schedule, _graph)) => {
                let info = DagInfo::new(key.clone(), dag.clone(), schedule).with_priority(priority);
                self.tell_engine(Command::Upsert(Box::new(info))).await?;
                Ok(None)
            }
            Err(e) => {
                self.tell_engine(Command::Invalid(key.clone())).await?;
                Ok(Some(problem(&e)))
            }
        }
    }

    async fn tell_engine(&self, command: Command) -> Result<(), ControllerError> {
        self.engine
            .send(command)
            .await
            .map_err(|_| ControllerError::EngineGone)
    }

    /// A Warning event for an invalid spec the first time it is seen (per generation and
    /// reason); a valid spec clears the memory.
    async fn report_problem(&self, dag: &DAG, key: &DagKey, problem: Option<Problem>) {
        let Some(Problem { reason, message }) = problem else {
            self.reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return;
        };
        let new = {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let entry = (dag.meta().generation, reason.clone());
            reported.insert(key.clone(), entry.clone()) != Some(entry)
        };
        if new {
            tracing::warn!(dag = %key, %reason, %message, "invalid DAG");
            self.events
                .publish(
                    &dag_reference(key, dag.meta().uid.as_deref()),
                    true,
                    &reason,
                    message,
                )
                .await;
        }
    }
}

/// Removes handled `trigger.dagoperator.io/<value>` annotations from a DAG (the values are
/// recorded: applying one again would do nothing). Best effort: a failure only leaves the
/// annotations in place.
pub async fn prune_triggers(client: kube::Client, key: DagKey, values: Vec<String>) {
    let annotations: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|v| {
            (
                format!("{}{v}", crate::api::TRIGGER_PREFIX),
                serde_json::Value::Null,
            )
        })
        .collect();
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    let api: Api<DAG> = Api::namespaced(client, &key.namespace);
    if let Err(e) = api
        .patch(
            &key.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(dag = %key, error = %e, "could not remove handled trigger annotations");
    }
}

/// `status.lastHandledTrigger` as the object carries it: kept until the engine, which reads
/// the record, says otherwise (a writer that does not know the value never clears it).
fn observed_trigger(dag: &DAG) -> Option<String> {
    dag.status
        .as_ref()
        .and_then(|s| s.last_handled_trigger.clone())
}

/// The Pools a DAG's tasks name that do not exist in its namespace, sorted.
fn missing_pools(dag: &DAG, pools: &reflector::Store<Pool>) -> Vec<String> {
    let ns = dag.namespace().unwrap_or_default();
    dag.spec
        .tasks
        .iter()
        .filter_map(|t| t.pool.as_ref())
        .filter(|p| {
            pools
                .get(&reflector::ObjectRef::<Pool>::new(p).within(&ns))
                .is_none()
        })
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The condition of upstream DAGs that do not exist (`None`: all exist).
fn upstreams_problem(missing: &[(&'static str, String)]) -> Option<Problem> {
    if missing.is_empty() {
        return None;
    }
    let named = missing
        .iter()
        .map(|(field, name)| format!("{field} {name:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut what = Vec::new();
    if missing.iter().any(|(f, _)| *f == "dependsOn") {
        what.push(
            "its runs wait in the queue until it exists and has succeeded \
             (dependencyTimeoutSeconds, if set, fails them)",
        );
    }
    if missing.iter().any(|(f, _)| *f == "triggeredBy") {
        what.push("no run is triggered by it until it exists");
    }
    Some(Problem::new(
        "UpstreamNotFound",
        format!(
            "{named}: no such DAG in this namespace; {}",
            what.join("; ")
        ),
    ))
}

/// The DAG object `uid` was deleted: its status model goes, and the engine cancels its runs.
async fn forget(ctx: &Context, key: DagKey, uid: String) -> Result<(), ControllerError> {
    ctx.reported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    ctx.waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    ctx.tell_status(StatusUpdate::Removed(key.clone()));
    ctx.tell_engine(Command::Deleted { key, uid }).await
}

pub fn error_policy(_dag: Arc<DAG>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "DAG reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Reconciles run at once. Each is short (validation, a message to the engine); unbounded, the
/// 10,000 DAGs of a first list would each hold a reconcile in memory at once, waiting on the
/// engine's queue, and the allocator keeps that peak (docs/BENCHMARKS.md).
const RECONCILES_IN_FLIGHT: u16 = 64;

/// Runs the controller until shutdown. Deleted DAGs leave the engine too: a watch of its own
/// tells deletions, including those missed while the watch was down (found by relisting).
/// `cache` is where the controller keeps the DAGs it watches (trimmed of managedFields); its
/// reader may be shared (the executor reads the same cache).
/// It shuts down gracefully when `shutdown` completes.
pub async fn run(
    api: Api<DAG>,
    pools: Option<Api<Pool>>,
    namespaces: Option<(Api<Namespace>, watcher::Config)>,
    ctx: Arc<Context>,
    cache: reflector::store::Writer<DAG>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    tokio::spawn(watch_deletions(api.clone(), ctx.clone()));
    let forget_ctx = ctx.clone();
    // the controller's cache: DAGs decoded without managedFields (10,000 DAGs' managedFields
    // are hundreds of MiB) and trimmed of the status the operator writes itself
    let reader = cache.as_reader();
    let trigger = watcher(LeanDag::api(&api), watcher::Config::default())
        .default_backoff()
        .map_ok(lean::into_dags)
        .modify(|dag: &mut DAG| {
            // of its own status the operator reads back only the last handled trigger and
            // its last suspension of itself
            if let Some(status) = dag.status.as_mut() {
                *status = crate::api::DagStatus {
                    last_handled_trigger: status.last_handled_trigger.take(),
                    auto_suspension: status.auto_suspension.take(),
                    ..Default::default()
                };
            }
        })
        .reflect(cache)
        .inspect_ok({
            let ctx = ctx.clone();
            move |event| ctx.nudge_dependents(event)
        })
        .applied_objects();
    let (nudge, nudged) = futures::channel::mpsc::unbounded();
    if ctx.nudge.set(nudge).is_err() {
        tracing::debug!("the DAG controller's context is already running");
    }
    let mut controller = Controller::for_stream(trigger, reader.clone()).reconcile_on(nudged);
    if let Some(pools) = pools {
        // a Pool created or deleted: the DAGs of its namespace naming it look again
        let reader = reader.clone();
        controller = controller.watches(pools, watcher::Config::default(), move |pool: Pool| {
            let ns = pool.metadata.namespace.clone().unwrap_or_default();
            let name = pool.metadata.name.clone().unwrap_or_default();
            reader
                .state()
                .into_iter()
                .filter(|d| d.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|d| {
                    d.spec
                        .tasks
                        .iter()
                        .any(|t| t.pool.as_deref() == Some(&name))
                })
                .map(|d| reflector::ObjectRef::from_obj(&*d))
                .collect::<Vec<_>>()
        });
    }
    if let Some((namespaces, config)) = namespaces {
        // a namespace's annotations changed: its DAGs look again (their priority ceiling)
        let reader = reader.clone();
        controller = controller.watches(namespaces, config, move |ns: Namespace| {
            let name = ns.metadata.name.unwrap_or_default();
            reader
                .state()
                .into_iter()
                .filter(|d| d.metadata.namespace.as_deref() == Some(name.as_str()))
                .map(|d| reflector::ObjectRef::from_obj(&*d))
                .collect::<Vec<_>>()
        });
    }
    controller
        .with_config(controller::Config::default().concurrency(RECONCILES_IN_FLIGHT))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_timed, error_policy, ctx)
        .for_each(|result| {
            let ctx = forget_ctx.clone();
            async move {
                // deleted before its reconcile ran: the deletion watch tells the engine
                if let Err(RuntimeError::ObjectNotFound(obj)) = result
                    && let Some(ns) = obj.namespace.clone()
                {
                    ctx.tell_status(StatusUpdate::Removed(DagKey::new(ns, obj.name.clone())));
                }
            }
        })
        .await;
}

/// Tells the engine of every deleted DAG object (with its uid), and after each (re)list of
/// every DAG that exists — so deletions missed while the watch was down, or while the
/// operator was not running, are noticed too.
/// Only the objects' metadata is read (a metadata-only watch: 10,000 DAGs' specs are not
/// decoded a second time at start).
async fn watch_deletions(api: Api<DAG>, ctx: Arc<Context>) {
    let namespace = api.namespace().map(str::to_string);
    let api: Api<PartialObjectMeta<DAG>> = k8s::api(api.into_client(), namespace.as_deref());
    let identify = |dag: &PartialObjectMeta<DAG>| {
        let key = DagKey::new(dag.metadata.namespace.clone()?, dag.metadata.name.clone()?);
        Some((key, dag.metadata.uid.clone().unwrap_or_default()))
    };
    let ctx = &ctx;
    watch::follow(api, DagKey::KIND, identify, |_event, changes| async move {
        for change in changes {
            let told = match change {
                Change::Gone { key, uid } => forget(ctx, key, uid).await,
                Change::Listed(existing) => ctx.tell_engine(Command::Listed(existing)).await,
            };
            if told.is_err() {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(name: &str, spec: &str) -> DAG {
        let spec = serde_yaml::from_str(&format!(
            "{spec}\ntasks: [{{name: a, container: {{image: x}}}}]"
        ))
        .expect("a DAG spec");
        let mut d = DAG::new(name, spec);
        d.metadata.namespace = Some("ns".into());
        d
    }

    fn context(dags: reflector::Store<DAG>) -> Context {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("a client, never connected");
        let (engine, _) = mpsc::channel(1);
        let (status, _) = mpsc::unbounded_channel();
        Context::new(engine, status, Events::new(client), Tz::UTC).with_dags(dags)
    }

    /// Issue 27: `dependsOn` naming a DAG that does not exist was silent (Ready=True, runs
    /// only ever timing out).
    #[tokio::test]
    async fn missing_upstreams_are_reported_until_they_appear() {
        let (reader, mut writer) = reflector::store::<DAG>();
        let down = dag(
            "down",
            "dependsOn: [{dag: up}]\ntriggeredBy: [{dag: other}, {dag: other}]",
        );
        writer.apply_watcher_event(&watcher::Event::Apply(down.clone()));
        let ctx = context(reader);
        let (nudge, mut nudged) = futures::channel::mpsc::unbounded();
        assert!(ctx.nudge.set(nudge).is_ok());
        let key = DagKey::new("ns", "down");

        let (missing, new) = ctx.missing_upstreams(&down, &key);
        let both = vec![
            ("dependsOn", "up".to_string()),
            ("triggeredBy", "other".into()),
        ];
        assert_eq!((missing.clone(), new), (both.clone(), true));
        let problem = upstreams_problem(&missing).expect("a condition");
        assert_eq!(problem.reason, "UpstreamNotFound");
        for part in [
            "dependsOn \"up\"",
            "triggeredBy \"other\"",
            "wait in the queue",
        ] {
            assert!(
                problem.message.contains(part),
                "{part}: {}",
                problem.message
            );
        }
        // told once: the same set again is not new
        assert_eq!(ctx.missing_upstreams(&down, &key), (both, false));

        // `up` appears: `down` is nudged, and only `other` is missing
        let up = dag("up", "");
        writer.apply_watcher_event(&watcher::Event::Apply(up.clone()));
        ctx.nudge_dependents(&watcher::Event::Apply(up.clone()));
        assert_eq!(
            nudged.try_recv().ok(),
            Some(reflector::ObjectRef::from_obj(&down))
        );
        let (missing, new) = ctx.missing_upstreams(&down, &key);
        assert_eq!(
            (missing, new),
            (vec![("triggeredBy", "other".into())], true)
        );
        // a DAG nobody waits for nudges nobody
        ctx.nudge_dependents(&watcher::Event::Apply(dag("unrelated", "")));
        assert!(nudged.try_recv().is_err(), "nothing queued");

        // `other` too: nothing missing, nothing remembered
        let other = dag("other", "");
        writer.apply_watcher_event(&watcher::Event::Apply(other.clone()));
        assert_eq!(ctx.missing_upstreams(&down, &key), (Vec::new(), false));
        assert!(upstreams_problem(&[]).is_none());

        // `up` deleted: the DAGs naming it look again, and miss it
        writer.apply_watcher_event(&watcher::Event::Delete(up.clone()));
        ctx.nudge_dependents(&watcher::Event::Delete(up));
        assert_eq!(
            nudged.try_recv().ok(),
            Some(reflector::ObjectRef::from_obj(&down))
        );
        let (missing, new) = ctx.missing_upstreams(&down, &key);
        assert_eq!((missing, new), (vec![("dependsOn", "up".into())], true));
    }
}

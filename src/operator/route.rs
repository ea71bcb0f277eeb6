//! The routers: each part of what the engine and the executor report goes to its one
//! consumer — status to the status writer, notices to the event publisher, telemetry to the
//! metrics, work to the executor, the engine or the DAG controller. Plain functions over
//! channels, so a test can see where each output lands.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::controller::status::StatusUpdate;
use crate::engine::{Command, EngineStatus, EngineTelemetry, Output};
use crate::executor::{CancelledRun, EndedTry, ExecInput, ExecOutput, ExecStatus, TaskTelemetry};
use crate::key::DagKey;
use crate::report::Notice;
use crate::telemetry::{Component, Health, Metrics, PassKind};

/// Handled trigger values whose annotations may be removed from a DAG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandledTriggers {
    pub dag: DagKey,
    pub values: Vec<String>,
}

/// Where outputs go.
#[derive(Clone)]
pub struct Routes {
    pub status: mpsc::UnboundedSender<StatusUpdate>,
    pub notices: mpsc::UnboundedSender<Notice>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub gate: GateHealth,
    pub engine: mpsc::Sender<Command>,
    pub executor: mpsc::UnboundedSender<ExecInput>,
    pub triggers: mpsc::UnboundedSender<HandledTriggers>,
    /// tries that ended: the log keeper saves their tails
    pub logs: mpsc::UnboundedSender<Vec<EndedTry>>,
}

/// A closed channel means that part has stopped (the operator is shutting down): logged,
/// never fatal.
fn deliver<T>(to: &mpsc::UnboundedSender<T>, what: T, part: &'static str) {
    if to.send(what).is_err() {
        tracing::debug!(part, "output dropped: its consumer has stopped");
    }
}

/// Delivers one output of the engine.
pub fn route_engine(output: Output, to: &Routes) {
    match output {
        Output::Status(status) => match status {
            EngineStatus::Dag(key, s) => {
                deliver(&to.status, StatusUpdate::Scheduling(key, s), "status")
            }
            EngineStatus::Backfill(key, p) => {
                deliver(&to.status, StatusUpdate::Backfill(key, p), "status")
            }
            EngineStatus::StoreHealth(ok) => {
                to.health.set_store_ok(ok);
                to.metrics.set_component_up(Component::Store, ok);
                deliver(&to.status, StatusUpdate::StoreHealth(ok), "status");
            }
            EngineStatus::GateHealth(ok) => to.gate.set_engine(ok),
        },
        Output::Event(notice) => deliver(&to.notices, notice, "events"),
        Output::Telemetry(t) => engine_telemetry(t, &to.metrics),
        Output::RunsAdmitted(runs) => deliver(&to.executor, ExecInput::Admitted(runs), "executor"),
        Output::RunsCancelled(runs) => {
            tracing::info!(count = runs.len(), "runs cancelled");
            let now = epoch_secs(chrono::Utc::now());
            for CancelledRun { dag, .. } in &runs {
                to.metrics.run_finished(
                    &dag.namespace,
                    &dag.name,
                    crate::store::RunState::Cancelled,
                    crate::store::RunType::Scheduled,
                    now,
                    None,
                );
            }
            deliver(&to.executor, ExecInput::Cancelled(runs), "executor");
        }
        Output::TriggersHandled(dag, values) => {
            deliver(&to.triggers, HandledTriggers { dag, values }, "triggers")
        }
    }
}

/// An instant as the metrics' timestamps are: seconds since the epoch, to the millisecond.
fn epoch_secs(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn engine_telemetry(t: EngineTelemetry, metrics: &Metrics) {
    match t {
        EngineTelemetry::RunsCreated {
            run_type,
            count,
            delays_secs,
        } => {
            for _ in 0..count {
                metrics.run_created(run_type);
            }
            for d in delays_secs {
                metrics.observe_schedule_delay(d);
            }
        }
        EngineTelemetry::Gate { scope, rejected } => {
            if rejected {
                metrics.gate_rejected(scope);
            } else {
                metrics.gate_error(scope);
            }
        }
        EngineTelemetry::Load {
            queue_depth,
            active_runs,
        } => {
            metrics.set_queue_depth(queue_depth);
            metrics.set_active_runs(active_runs as i64);
        }
        // a pass returns only store errors (`StoreError`)
        EngineTelemetry::PassFailed => metrics.pass_failed(PassKind::Engine, "store"),
        EngineTelemetry::ScheduleInterval { dag, secs } => {
            metrics.set_schedule_interval(&dag.namespace, &dag.name, secs)
        }
        EngineTelemetry::LastEnds(ends) => {
            metrics.seed_last_ends(
                &ends.dag.namespace,
                &ends.dag.name,
                ends.success.map(epoch_secs),
                ends.failure.map(epoch_secs),
            );
        }
    }
}

/// Delivers one output of the executor (waits while the engine's inbox is full).
pub async fn route_executor(output: ExecOutput, to: &Routes) {
    match output {
        ExecOutput::Status(status) => match status {
            ExecStatus::RecentRuns(recent) => {
                deliver(&to.status, StatusUpdate::Runs(recent), "status")
            }
            ExecStatus::Pools(usages) => {
                for u in usages {
                    deliver(&to.status, StatusUpdate::Pool(u), "status");
                }
            }
            ExecStatus::PoolsGone(keys) => {
                for key in keys {
                    deliver(&to.status, StatusUpdate::PoolGone(key), "status");
                }
            }
            ExecStatus::LaunchHealth(dag, refused) => {
                deliver(&to.status, StatusUpdate::Launch(dag, refused), "status")
            }
            ExecStatus::GateHealth(ok) => to.gate.set_executor(ok),
        },
        ExecOutput::Event(notice) => deliver(&to.notices, notice, "events"),
        ExecOutput::Telemetry(t) => task_telemetry(t, &to.metrics),
        ExecOutput::TriesEnded(tries) => deliver(&to.logs, tries, "logs"),
        ExecOutput::StepFailed(error) => to.metrics.pass_failed(PassKind::Executor, error),
        ExecOutput::RunsEnded(ids) => {
            if to.engine.send(Command::RunsEnded(ids)).await.is_err() {
                tracing::debug!("runs ended after the engine stopped");
            }
        }
    }
}

fn task_telemetry(t: TaskTelemetry, metrics: &Metrics) {
    for run in &t.runs_finished {
        metrics.run_finished(
            &run.dag.namespace,
            &run.dag.name,
            run.state,
            run.run_type,
            epoch_secs(run.ended_at),
            run.duration_secs(),
        );
    }
    for t in &t.tries_finished {
        metrics.task_try_finished(t.state, t.secs);
    }
    for (state, n) in t.by_state {
        metrics.set_task_instances(state, n);
    }
    for to in t.transitions {
        metrics.task_transition(to);
    }
    for scope in t.gate_refused {
        metrics.gate_rejected(scope);
    }
    for scope in t.gate_errors {
        metrics.gate_error(scope);
    }
}

/// Whether each user of the gate reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GateReach {
    /// the engine (runs)
    engine: bool,
    /// the executor (tasks)
    executor: bool,
}

impl GateReach {
    fn ok(self) -> bool {
        self.engine && self.executor
    }
}

/// The gate is reachable when both of its users say so; a change goes to `/readyz` and to
/// every DAG's status.
#[derive(Clone)]
pub struct GateHealth {
    reach: Arc<Mutex<GateReach>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    status: mpsc::UnboundedSender<StatusUpdate>,
}

impl GateHealth {
    pub fn new(
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        status: mpsc::UnboundedSender<StatusUpdate>,
    ) -> Self {
        GateHealth {
            metrics,
            reach: Arc::new(Mutex::new(GateReach {
                engine: true,
                executor: true,
            })),
            health,
            status,
        }
    }

    pub fn set_engine(&self, ok: bool) {
        self.update(|r| r.engine = ok);
    }

    pub fn set_executor(&self, ok: bool) {
        self.update(|r| r.executor = ok);
    }

    fn update(&self, change: impl FnOnce(&mut GateReach)) {
        let mut reach = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        let before = reach.ok();
        change(&mut reach);
        let after = reach.ok();
        if before != after {
            self.health.set_gate_ok(after);
            self.metrics.set_component_up(Component::Gate, after);
            deliver(&self.status, StatusUpdate::GateHealth(after), "status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SchedulingStatus;
    use crate::executor::PoolUsage;
    use crate::key::{PoolKey, Subject};
    use crate::store::RunType;

    struct Ends {
        status: mpsc::UnboundedReceiver<StatusUpdate>,
        notices: mpsc::UnboundedReceiver<Notice>,
        engine: mpsc::Receiver<Command>,
        executor: mpsc::UnboundedReceiver<ExecInput>,
        triggers: mpsc::UnboundedReceiver<HandledTriggers>,
        logs: mpsc::UnboundedReceiver<Vec<EndedTry>>,
    }

    fn routes() -> (Routes, Ends) {
        let (status, status_rx) = mpsc::unbounded_channel();
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let (engine, engine_rx) = mpsc::channel(8);
        let (executor, executor_rx) = mpsc::unbounded_channel();
        let (triggers, triggers_rx) = mpsc::unbounded_channel();
        let (logs, logs_rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health::new());
        health.set_role(crate::telemetry::Role::Leader);
        health.set_store_ok(true);
        health.set_gate_ok(true);
        let metrics = Arc::new(Metrics::new());
        let routes = Routes {
            gate: GateHealth::new(health.clone(), metrics.clone(), status.clone()),
            status,
            notices,
            metrics,
            health,
            engine,
            executor,
            triggers,
            logs,
        };
        let ends = Ends {
            status: status_rx,
            notices: notices_rx,
            engine: engine_rx,
            executor: executor_rx,
            triggers: triggers_rx,
            logs: logs_rx,
        };
        (routes, ends)
    }

    #[test]
    fn each_engine_output_reaches_its_consumer() {
        let (r, mut ends) = routes();
        let dag = DagKey::new("ns", "etl");
        route_engine(
            Output::Status(EngineStatus::Dag(dag.clone(), SchedulingStatus::default())),
            &r,
        );
        assert!(matches!(
            ends.status.try_recv(),
            Ok(StatusUpdate::Scheduling(k, _)) if k == dag
        ));
        let notice = Notice::warning(Subject::Dag(dag.clone()), "MissedRuns", "m".into());
        route_engine(Output::Event(notice.clone()), &r);
        assert_eq!(ends.notices.try_recv().ok(), Some(notice));
        route_engine(
            Output::Telemetry(EngineTelemetry::RunsCreated {
                run_type: RunType::Manual,
                count: 2,
                delays_secs: vec![],
            }),
            &r,
        );
        assert!(
            r.metrics
                .encode()
                .contains("dagop_runs_created_total{type=\"manual\"} 2")
        );
        route_engine(Output::Telemetry(EngineTelemetry::PassFailed), &r);
        assert!(
            r.metrics
                .encode()
                .contains("dagop_pass_errors_total{part=\"engine\",error=\"store\"} 1")
        );
        route_engine(
            Output::Telemetry(EngineTelemetry::ScheduleInterval {
                dag: dag.clone(),
                secs: Some(3600.0),
            }),
            &r,
        );
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0);
        route_engine(
            Output::Telemetry(EngineTelemetry::LastEnds(crate::store::LastEnds {
                dag: dag.clone(),
                success: at,
                failure: None,
            })),
            &r,
        );
        let text = r.metrics.encode();
        for line in [
            "dagop_dag_schedule_interval_seconds{namespace=\"ns\",dag=\"etl\"} 3600.0",
            "dagop_dag_last_success_timestamp_seconds{namespace=\"ns\",dag=\"etl\"} 1700000000.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        route_engine(
            Output::Telemetry(EngineTelemetry::ScheduleInterval {
                dag: dag.clone(),
                secs: None,
            }),
            &r,
        );
        assert!(
            !r.metrics
                .encode()
                .contains("dagop_dag_schedule_interval_seconds{")
        );
        route_engine(Output::RunsCancelled(vec![]), &r);
        assert!(matches!(
            ends.executor.try_recv(),
            Ok(ExecInput::Cancelled(_))
        ));
        route_engine(Output::TriggersHandled(dag.clone(), vec!["a".into()]), &r);
        assert_eq!(
            ends.triggers.try_recv().ok(),
            Some(HandledTriggers {
                dag,
                values: vec!["a".into()]
            })
        );
        assert_eq!(r.health.ready(), Ok(()));
        route_engine(Output::Status(EngineStatus::StoreHealth(false)), &r);
        assert!(r.health.ready().is_err(), "the store is down: not ready");
        assert!(matches!(
            ends.status.try_recv(),
            Ok(StatusUpdate::StoreHealth(false))
        ));
    }

    #[tokio::test]
    async fn each_executor_output_reaches_its_consumer() {
        let (r, mut ends) = routes();
        let id = uuid::Uuid::new_v4();
        route_executor(ExecOutput::RunsEnded(vec![id]), &r).await;
        assert!(matches!(
            ends.engine.try_recv(),
            Ok(Command::RunsEnded(ids)) if ids == vec![id]
        ));
        let usage = PoolUsage {
            key: PoolKey::new("ns", "db"),
            generation: None,
            slots: 2,
            used: 1,
            queued: 0,
        };
        route_executor(
            ExecOutput::Status(ExecStatus::Pools(vec![usage.clone()])),
            &r,
        )
        .await;
        assert!(matches!(
            ends.status.try_recv(),
            Ok(StatusUpdate::Pool(u)) if u == usage
        ));
        route_executor(
            ExecOutput::Status(ExecStatus::PoolsGone(vec![usage.key.clone()])),
            &r,
        )
        .await;
        assert!(matches!(
            ends.status.try_recv(),
            Ok(StatusUpdate::PoolGone(k)) if k == usage.key
        ));
        route_executor(
            ExecOutput::Telemetry(TaskTelemetry {
                by_state: vec![],
                transitions: vec![crate::graph::TaskState::Success],
                gate_refused: vec![],
                gate_errors: vec![],
                runs_finished: vec![],
                tries_finished: vec![],
            }),
            &r,
        )
        .await;
        assert!(
            r.metrics
                .encode()
                .contains("dagop_task_transitions_total{state=\"success\"} 1")
        );
        let ended = EndedTry {
            key: crate::store::TryKey {
                run_id: id,
                task_name: "t".into(),
                try_number: 1,
            },
            pod: crate::executor::PodKey::new("ns", "p"),
        };
        route_executor(ExecOutput::TriesEnded(vec![ended.clone()]), &r).await;
        assert_eq!(ends.logs.try_recv().ok(), Some(vec![ended]));
        route_executor(ExecOutput::StepFailed("gate"), &r).await;
        assert!(
            r.metrics
                .encode()
                .contains("dagop_pass_errors_total{part=\"executor\",error=\"gate\"} 1")
        );
    }

    #[test]
    fn the_gate_is_healthy_only_when_both_users_reach_it() {
        let (r, mut ends) = routes();
        assert_eq!(r.health.ready(), Ok(()));
        r.gate.set_engine(false);
        assert!(matches!(
            ends.status.try_recv(),
            Ok(StatusUpdate::GateHealth(false))
        ));
        r.gate.set_executor(false);
        r.gate.set_engine(true);
        assert!(
            ends.status.try_recv().is_err(),
            "still down: no change told"
        );
        assert!(r.health.ready().is_err());
        assert!(
            r.metrics
                .encode()
                .contains("dagop_component_up{component=\"gate\"} 0")
        );
        r.gate.set_executor(true);
        assert!(matches!(
            ends.status.try_recv(),
            Ok(StatusUpdate::GateHealth(true))
        ));
    }
}

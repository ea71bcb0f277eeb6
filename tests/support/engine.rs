//! The engine test harness shared by the engine test targets: the real engine on a real
//! PostgreSQL (a fresh database per test), with the clock in the test's hands.
#![allow(dead_code)] // each test target uses its own part of this module

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use dag_operator::api::DagSpec;
use dag_operator::engine::{
    BackfillInfo, Command, DagInfo, Engine, EngineConfig, EngineStatus, Output, TriggerRequest,
};
use dag_operator::key::BackfillKey;
use dag_operator::report::Notice;
use dag_operator::store::{
    Changes, DagKey, PgStore, RunEnd, RunFilter, RunRow, RunState, RunStore,
};
use tokio::sync::mpsc;

pub fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC3339")
}

pub fn spec(yaml: &str) -> Arc<DagSpec> {
    let full = format!("{yaml}\ntasks:\n- {{name: a, container: {{image: busybox}}}}\n");
    Arc::new(serde_yaml::from_str(&full).expect("valid spec"))
}

pub fn info(name: &str, created: DateTime<Utc>, spec: Arc<DagSpec>) -> DagInfo {
    let schedule = spec.parse_schedule(Tz::UTC).expect("valid schedule");
    DagInfo::from_spec(
        DagKey::new("ns", name),
        &format!("uid-{name}"),
        created,
        (*spec).clone(),
        schedule,
    )
}

/// A single-form trigger annotation (`dagoperator.io/trigger` with its params).
pub fn trigger(value: &str, params: Option<&str>) -> TriggerRequest {
    TriggerRequest {
        value: value.into(),
        params: params.map(String::from),
        logical_date: DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        malformed: None,
        removable: false,
    }
}

/// The engine on `S` (the database itself, or a store that fails on demand around it), and the
/// database read directly.
pub struct Harness<S: RunStore = PgStore> {
    pub engine: Engine<S>,
    pub store: PgStore,
    pub out: mpsc::UnboundedReceiver<Output>,
}

impl Harness {
    pub async fn new(store: PgStore, cfg: EngineConfig) -> Self {
        Harness::on(store.clone(), store, cfg).await
    }
}

impl<S: RunStore> Harness<S> {
    /// An engine on `engine_store`, over the database `db`.
    pub async fn on(db: PgStore, engine_store: S, cfg: EngineConfig) -> Self {
        let (tx, out) = mpsc::unbounded_channel();
        let mut engine = Engine::new(cfg, engine_store, tx);
        engine.load().await.expect("load");
        Harness {
            engine,
            store: db,
            out,
        }
    }

    pub fn upsert(&mut self, info: DagInfo, now: DateTime<Utc>) {
        self.engine.apply(Command::Upsert(Box::new(info)), now);
    }

    pub async fn tick(&mut self, now: DateTime<Utc>) -> usize {
        self.engine.tick(now).await.expect("tick")
    }

    /// Ticks every `step` from `from` to `to` inclusive.
    pub async fn run_clock(&mut self, from: DateTime<Utc>, to: DateTime<Utc>, step: Duration) {
        let mut t = from;
        while t <= to {
            self.tick(t).await;
            t += step;
        }
    }

    pub fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    pub fn events(&mut self, reason: &str) -> Vec<String> {
        self.outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Event(Notice {
                    reason: r, message, ..
                }) if r == reason => Some(message),
                _ => None,
            })
            .collect()
    }

    pub async fn runs(&self, dag: &str) -> Vec<RunRow> {
        let mut runs = self
            .store
            .list_runs(&RunFilter {
                namespace: Some("ns".into()),
                dag_name: Some(dag.into()),
                state: None,
                limit: 100_000,
            })
            .await
            .expect("list");
        runs.sort_by_key(|r| r.logical_date);
        runs
    }

    /// Tells the engine every running run ended.
    pub async fn end_all(&mut self) {
        let ids: Vec<_> = self
            .store
            .running_runs(None)
            .await
            .expect("running")
            .iter()
            .map(|r| r.id)
            .collect();
        self.engine.runs_ended(&ids);
    }

    pub async fn dates(&self, dag: &str) -> Vec<DateTime<Utc>> {
        self.runs(dag)
            .await
            .iter()
            .map(|r| r.logical_date)
            .collect()
    }
}

pub fn every(start: DateTime<Utc>, step: Duration, n: i64) -> Vec<DateTime<Utc>> {
    (0..n).map(|k| start + step * k as i32).collect()
}

impl<S: RunStore> Harness<S> {
    /// Ends every running run in `state` (as the executor would), and tells the engine.
    pub async fn finish_all(&mut self, state: RunState, at: DateTime<Utc>) {
        let running = self.store.running_runs(None).await.expect("running");
        let changes = Changes {
            run_ends: running
                .iter()
                .map(|r| RunEnd {
                    id: r.id,
                    state,
                    at,
                })
                .collect(),
            ..Default::default()
        };
        self.store.write_changes(&changes).await.expect("end runs");
        let ids: Vec<_> = running.iter().map(|r| r.id).collect();
        self.engine.runs_ended(&ids);
    }

    pub fn backfill(&mut self, info: BackfillInfo, now: DateTime<Utc>) {
        self.engine
            .apply(Command::UpsertBackfill(Box::new(info)), now);
    }

    /// The last status the engine reported for a Backfill.
    pub fn backfill_progress(
        &mut self,
        name: &str,
    ) -> Option<dag_operator::engine::BackfillProgress> {
        self.outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Status(EngineStatus::Backfill(key, p)) if key.name == name => Some(p),
                _ => None,
            })
            .last()
    }
}

impl Harness {
    /// The process restarts: a new engine on the same database.
    pub async fn restart(self, cfg: EngineConfig) -> Harness {
        Harness::new(self.store, cfg).await
    }
}

/// A Backfill of `dag` over `[start, end)` with `concurrency`, as the controller hands it over.
pub fn backfill(
    name: &str,
    dag: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    extra: &str,
) -> BackfillInfo {
    let yaml = format!(
        "dagRef: {{name: {dag}}}\nstart: {}\nend: {}\n{extra}",
        start.to_rfc3339(),
        end.to_rfc3339()
    );
    BackfillInfo {
        key: BackfillKey::new("ns", name),
        uid: format!("uid-bf-{name}"),
        generation: Some(1),
        spec: serde_yaml::from_str(&yaml).expect("valid Backfill spec"),
    }
}

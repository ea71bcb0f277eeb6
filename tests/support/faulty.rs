//! A PostgreSQL store that fails on demand: from a countdown of calls (the database gone in
//! the middle of a pass) or at once, until told otherwise.

#![allow(dead_code)] // each test target uses its own part of this module

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use dag_operator::store::*;

/// A store that, once its countdown of calls runs out, fails every call (the database gone
/// in the middle of a pass, just before the process dies).
#[derive(Clone)]
pub struct Faulty {
    inner: PgStore,
    /// calls left before failing; negative: never
    pub countdown: Arc<AtomicI64>,
    pub failing: Arc<AtomicBool>,
    /// calls that fail (by method name) while named here, whatever the countdown says
    pub fail_on: Arc<Mutex<HashSet<&'static str>>>,
}

impl Faulty {
    pub fn new(inner: PgStore) -> Self {
        Faulty {
            inner,
            countdown: Arc::new(AtomicI64::new(-1)),
            failing: Arc::new(AtomicBool::new(false)),
            fail_on: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Makes `calls` fail (or, empty, none).
    pub fn fail_on(&self, calls: &[&'static str]) {
        if let Ok(mut set) = self.fail_on.lock() {
            *set = calls.iter().copied().collect();
        }
    }

    fn check(&self, call: &'static str) -> Result<(), StoreError> {
        if self.fail_on.lock().is_ok_and(|set| set.contains(call)) {
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 0 {
            self.failing.store(true, Ordering::SeqCst);
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        if left > 0 {
            self.countdown.store(left - 1, Ordering::SeqCst);
        }
        Ok(())
    }
}

macro_rules! pass {
    ($self:ident . $name:ident ( $($arg:expr),* )) => {{
        $self.check(stringify!($name))?;
        $self.inner.$name($($arg),*).await
    }};
}

impl RunStore for Faulty {
    async fn ping(&self) -> Result<(), StoreError> {
        pass!(self.ping())
    }
    async fn admit(&self, a: &Admission) -> Result<Admitted, StoreError> {
        pass!(self.admit(a))
    }
    async fn dag_records(&self, d: &[DagKey]) -> Result<Vec<DagRecord>, StoreError> {
        pass!(self.dag_records(d))
    }
    async fn recorded_triggers(
        &self,
        v: &[(DagKey, String)],
    ) -> Result<Vec<(DagKey, String)>, StoreError> {
        pass!(self.recorded_triggers(v))
    }
    async fn backfill_record(&self, b: &BackfillRef) -> Result<Option<BackfillRecord>, StoreError> {
        pass!(self.backfill_record(b))
    }
    async fn save_backfill(&self, b: &BackfillRef, r: &BackfillRecord) -> Result<(), StoreError> {
        pass!(self.save_backfill(b, r))
    }
    async fn backfill_done(
        &self,
        b: &BackfillRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        pass!(self.backfill_done(b, from, to))
    }
    async fn running_runs(&self, ns: Option<&str>) -> Result<Vec<RunRow>, StoreError> {
        pass!(self.running_runs(ns))
    }
    async fn last_ends(&self, ns: Option<&str>) -> Result<Vec<LastEnds>, StoreError> {
        pass!(self.last_ends(ns))
    }
    async fn save_specs(&self, s: &[SpecRow]) -> Result<(), StoreError> {
        pass!(self.save_specs(s))
    }
    async fn specs(&self, h: &[String]) -> Result<Vec<SpecRow>, StoreError> {
        pass!(self.specs(h))
    }
    async fn pin_spec(&self, ids: &[uuid::Uuid], h: &str) -> Result<(), StoreError> {
        pass!(self.pin_spec(ids, h))
    }
    async fn cancel_runs(&self, ids: &[uuid::Uuid]) -> Result<u64, StoreError> {
        pass!(self.cancel_runs(ids))
    }
    async fn run(&self, id: uuid::Uuid) -> Result<Option<RunRow>, StoreError> {
        pass!(self.run(id))
    }
    async fn pending_actions(
        &self,
        ns: Option<&str>,
        limit: i64,
    ) -> Result<Vec<dag_operator::store::RunAction>, StoreError> {
        pass!(self.pending_actions(ns, limit))
    }
    async fn write_action(
        &self,
        w: &dag_operator::store::ActionWrite,
    ) -> Result<dag_operator::store::ActionWritten, StoreError> {
        pass!(self.write_action(w))
    }
    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        pass!(self.list_runs(f))
    }
    async fn task_instances(&self, ids: &[uuid::Uuid]) -> Result<Vec<TaskRow>, StoreError> {
        pass!(self.task_instances(ids))
    }
    async fn write_changes(&self, c: &Changes) -> Result<Applied, StoreError> {
        pass!(self.write_changes(c))
    }
    async fn recent_runs(&self, d: &[DagKey], l: i64) -> Result<Vec<RecentRuns>, StoreError> {
        pass!(self.recent_runs(d, l))
    }
    async fn runs_between(
        &self,
        d: &DagKey,
        s: DateTime<Utc>,
        e: DateTime<Utc>,
    ) -> Result<Vec<DateRun>, StoreError> {
        pass!(self.runs_between(d, s, e))
    }
    async fn runs_page(
        &self,
        d: &DagKey,
        s: DateTime<Utc>,
        e: DateTime<Utc>,
        l: i64,
    ) -> Result<Vec<DateRun>, StoreError> {
        pass!(self.runs_page(d, s, e, l))
    }
    async fn backfill_counts(&self, b: &BackfillRef) -> Result<BackfillCounts, StoreError> {
        pass!(self.backfill_counts(b))
    }
}

//! Admission of queued tries (SPEC §4): in line order (run class, `priorityWeight`, age),
//! under the in-process floor — the executor's own count of running tries and Pool slots,
//! which holds even when the gate forgot everything (Redis restarted empty) — then the gate,
//! which the replicas share: one claim per try, a batch in one pipeline. Admitted tries get
//! their Pods, many created at once; what the API server said is written in one transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::launcher::LaunchError;
use super::plan::{self, PodSight, PodVerdict};
use super::state;
use super::{ExecOutput, ExecStatus, Executor, PodKey, PodLauncher, pod};
use crate::gate::{Claim, Gate, GateError, GateScope, Grant, Slot, key as gate_key};
use crate::graph::TaskState;
use crate::key::{PoolKey, Subject};
use crate::report::Notice;
use crate::store::{Changes, DagKey, RunStore, Stamp, TaskMove, TaskRow};

/// Why a queued try cannot start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `--max-running-tasks` is reached: no other try can start either
    Tasks,
    /// its Pool is full (or does not exist): tries of other Pools may still start
    Pool,
}

/// The in-process floor: what may start, counted from what runs in this process's memory.
pub struct Floor {
    pub tasks_free: usize,
    /// free slots of each Pool seen so far
    pub pool_free: HashMap<PoolKey, i64>,
}

impl Floor {
    /// Takes room for one try of `weight` in `pool` (whose free slots `free` tells), or says
    /// why it must wait.
    pub fn take(
        &mut self,
        pool: Option<&PoolKey>,
        weight: u32,
        free: impl FnOnce() -> Option<i64>,
    ) -> Result<(), Wait> {
        if self.tasks_free == 0 {
            return Err(Wait::Tasks);
        }
        if let Some(pool) = pool {
            let room = match self.pool_free.get(pool) {
                Some(r) => *r,
                None => {
                    let r = free().unwrap_or(0);
                    self.pool_free.insert(pool.clone(), r);
                    r
                }
            };
            if room < i64::from(weight) {
                return Err(Wait::Pool);
            }
            self.pool_free
                .insert(pool.clone(), room - i64::from(weight));
        }
        self.tasks_free -= 1;
        Ok(())
    }
}

/// One try chosen to start.
struct Chosen {
    run: uuid::Uuid,
    task: usize,
    row: TaskRow,
    dag: DagKey,
    pod: PodKey,
    pool_limit: Option<u32>,
    pool: Option<PoolKey>,
    weight: u32,
}

/// Tries of the admission under way that are claimed but not yet written (their creates
/// waiting, in flight or answered): skipped when choosing again, and counted as running.
#[derive(Default)]
struct Flight {
    tries: HashSet<(uuid::Uuid, usize)>,
    /// the Pool slots they take
    pools: HashMap<PoolKey, i64>,
}

impl Flight {
    fn add(&mut self, c: &Chosen) {
        if self.tries.insert((c.run, c.task)) {
            if let Some(pool) = &c.pool {
                *self.pools.entry(pool.clone()).or_default() += i64::from(c.weight);
            }
        }
    }

    fn remove(&mut self, c: &Chosen) {
        if self.tries.remove(&(c.run, c.task)) {
            if let Some(used) = c.pool.as_ref().and_then(|p| self.pools.get_mut(p)) {
                *used -= i64::from(c.weight);
            }
        }
    }

    fn pool_used(&self, pool: &PoolKey) -> i64 {
        self.pools.get(pool).copied().unwrap_or(0)
    }
}

/// What creating a try's Pod came to.
enum Launched {
    Created,
    Refused(String),
    Later(String),
}

impl Launched {
    /// Whether a Pod of the try may exist after this answer: created (or adopted), or an
    /// error that may have come after the API server took the create (a reset connection).
    fn may_have_created(&self) -> bool {
        matches!(self, Launched::Created | Launched::Later(_))
    }
}

/// Whether the answer to a create still concerns a try that may start: `latest` is what memory
/// holds of the task now (none: its run left — cancelled, replaced, marked, timed out, gone at
/// a resync), `try_number` the try the create was for. An answer that does not is not
/// written, and a Pod it may have made is deleted: nothing of an ended run runs.
pub(super) fn still_wanted(latest: Option<&TaskRow>, try_number: i32) -> bool {
    latest.is_some_and(|row| row.try_number == try_number && row.state == TaskState::Queued)
}

/// How a create went, and when it was answered: how long after its admission began (at the
/// step's `now`), so a try's stamps tell when its Pod was created on the step's clock.
struct Answer {
    outcome: Launched,
    after: std::time::Duration,
}

/// An admission under way, carried from step to step while its creates are in flight: a
/// step gives it at most `admit_slice`, then Pod events and actions are taken in and the next
/// step goes on with it. Its creates are tasks of their own, `--pod-create-concurrency` at a
/// time: they go on while the executor does something else (dropping the admission aborts
/// them).
pub(super) struct Admission {
    /// the step clock when it began, and the same instant on the monotonic clock: an
    /// answer's stamp is `now` plus the time since `began`
    now: DateTime<Utc>,
    began: std::time::Instant,
    flight: Flight,
    /// the creates not answered yet: in flight, or waiting for one of `permits`
    creates: JoinSet<(Chosen, Answer)>,
    permits: Arc<Semaphore>,
    answered: Vec<(Chosen, Answer)>,
    /// the last batch chosen was full: more may start
    more: bool,
}

impl Admission {
    fn new(now: DateTime<Utc>, in_flight_most: usize) -> Self {
        Admission {
            now,
            began: std::time::Instant::now(),
            flight: Flight::default(),
            creates: JoinSet::new(),
            permits: Arc::new(Semaphore::new(in_flight_most)),
            answered: Vec::new(),
            more: true,
        }
    }

    /// The current instant on the step's clock.
    fn clock(&self) -> DateTime<Utc> {
        self.now + chrono::Duration::from_std(self.began.elapsed()).unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.creates.is_empty() && !self.more
    }
}

impl<S: RunStore, G: Gate, L: PodLauncher> Executor<S, G, L> {
    /// Admits what fits: claims a batch, creates its Pods many at once and writes what they
    /// came to in one transaction. While the last creates of a batch are in flight the next
    /// batch is claimed, so the API server is never left without work for a round trip; the
    /// admission goes on over as many steps as it takes. True while it goes on.
    pub(super) async fn admit(&mut self, now: DateTime<Utc>) -> Result<bool, super::ExecError> {
        let mut adm = match self.admission.take() {
            Some(adm) => adm,
            None => {
                if !self.admit_dirty || self.admit_after.is_some_and(|t| t > now) {
                    return Ok(false);
                }
                self.admit_after = None;
                self.admit_dirty = false;
                Admission::new(now, self.cfg.create_concurrency.max(1))
            }
        };
        let result = self.admit_slice(&mut adm).await;
        if !adm.done() {
            self.admission = Some(adm);
        }
        result.map(|()| self.admission.is_some())
    }

    /// Goes on with an admission for up to `admit_slice` (or until it is done); what was
    /// answered by then is written. The next batch is claimed while fewer creates than two
    /// rounds of `--pod-create-concurrency` are left, so the creates never run dry between
    /// steps.
    async fn admit_slice(&mut self, adm: &mut Admission) -> Result<(), super::ExecError> {
        let until = tokio::time::Instant::now() + self.cfg.admit_slice;
        let refill_below = 2 * self.cfg.create_concurrency.max(1);
        loop {
            if adm.more && adm.creates.len() < refill_below {
                let now = adm.clock();
                let mut granted = Vec::new();
                adm.more = self.claim_next(now, &mut adm.flight, &mut granted).await;
                for c in granted {
                    let pod = self.pod_of(&c);
                    let launcher = self.launcher.clone();
                    let permits = adm.permits.clone();
                    adm.creates
                        .spawn(create(launcher, pod, c, adm.began, permits));
                }
            }
            let next = tokio::time::timeout_at(until, adm.creates.join_next()).await;
            let slice_over = match next {
                Ok(Some(Ok(answer))) => {
                    adm.answered.push(answer);
                    false
                }
                Ok(Some(Err(e))) => {
                    // its try stays queued (claimed: granted again when chosen next time)
                    tracing::warn!(error = %e, "a Pod create task ended without an answer");
                    false
                }
                // nothing in flight, or the slice is used up
                Ok(None) | Err(_) => true,
            };
            let all_in = adm.creates.is_empty();
            if slice_over || all_in || adm.answered.len() >= self.cfg.admit_batch {
                self.write_answers(adm).await?;
            }
            if slice_over || (all_in && !adm.more) {
                return Ok(());
            }
        }
    }

    /// Writes what the creates answered so far came to.
    async fn write_answers(&mut self, adm: &mut Admission) -> Result<(), super::ExecError> {
        let answered = std::mem::take(&mut adm.answered);
        if answered.is_empty() {
            return Ok(());
        }
        for (c, _) in &answered {
            adm.flight.remove(c);
        }
        let written = self.record_launches(answered, adm.now, adm.clock()).await;
        if written.is_err() || self.admit_after.is_some() {
            // nothing more is claimed in this admission (what is in flight still lands; a
            // try whose write failed is found again, its Pod adopted): a create to try again
            // later, the gate refused, or the database failed
            adm.more = false;
        }
        written
    }

    /// Chooses and claims the next batch, taking the tries already in `flight` into account;
    /// granted tries join `flight` and `granted`. True when the batch was full.
    async fn claim_next(
        &mut self,
        now: DateTime<Utc>,
        flight: &mut Flight,
        granted: &mut Vec<Chosen>,
    ) -> bool {
        let chosen = self.choose(flight);
        if chosen.is_empty() {
            return false;
        }
        let full = chosen.len() >= self.cfg.admit_batch;
        match self.claim(&chosen, now).await {
            Ok(answers) => {
                self.set_gate_ok(true);
                for (c, ok) in chosen.into_iter().zip(answers) {
                    if ok {
                        flight.add(&c);
                        granted.push(c);
                    }
                }
                full && self.admit_after.is_none()
            }
            Err(e) => {
                self.gate_down(&e);
                self.admit_dirty = true;
                self.admit_after = Some(now + chrono::Duration::seconds(1));
                false
            }
        }
    }

    /// The Pod of a chosen try, or None if its run or spec is gone.
    fn pod_of(&self, c: &Chosen) -> Option<k8s_openapi::api::core::v1::Pod> {
        let run = self.live.get(&c.run)?;
        let task = run.spec.task(c.task)?;
        Some(pod::build_pod(
            &run.run,
            &run.spec.spec,
            &run.spec.clock,
            task,
            c.row.try_number,
        ))
    }

    /// Queued tries in line order that the floor lets start, at most one batch.
    /// Tries in `flight` (claimed, not yet written) are skipped and counted as running.
    fn choose(&self, flight: &Flight) -> Vec<Chosen> {
        let mut floor = Floor {
            tasks_free: self
                .cfg
                .max_running_tasks
                .saturating_sub(self.live.running_tasks() + flight.tries.len()),
            pool_free: HashMap::new(),
        };
        let mut chosen = Vec::new();
        for place in self.live.line() {
            if chosen.len() >= self.cfg.admit_batch {
                break;
            }
            let Some(run) = self.live.get(&place.run) else {
                continue;
            };
            let Some(task) = run.tasks.get(place.task) else {
                continue;
            };
            if flight.tries.contains(&(place.run, place.task)) {
                continue;
            }
            let ns = &run.run.dag.namespace;
            let pool = task.row.pool.as_ref().map(|p| PoolKey::new(ns, p));
            let limit = task.row.pool.as_ref().and_then(|p| self.pools.slots(ns, p));
            let used = pool
                .as_ref()
                .map_or(0, |p| self.live.pool_used(p) + flight.pool_used(p));
            let weight = state::weight(&task.row);
            match floor.take(pool.as_ref(), weight, || limit.map(|l| i64::from(l) - used)) {
                Ok(()) => {}
                Err(Wait::Tasks) => break,
                Err(Wait::Pool) => continue,
            }
            chosen.push(Chosen {
                run: place.run,
                task: place.task,
                row: task.row.clone(),
                dag: run.run.dag.clone(),
                pod: PodKey::new(
                    ns.clone(),
                    pod::pod_name(
                        &run.run.dag.name,
                        &run.run.id,
                        &task.row.task_name,
                        task.row.try_number,
                    ),
                ),
                pool_limit: limit.map(|l| u32::try_from(l).unwrap_or(0)),
                pool,
                weight,
            });
        }
        chosen
    }

    /// Asks the gate for every chosen try's slots in one pipeline at `now` (the step's
    /// clock); true where granted.
    async fn claim(
        &mut self,
        chosen: &[Chosen],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, GateError> {
        let tasks_limit = u32::try_from(self.cfg.max_running_tasks).unwrap_or(u32::MAX);
        let claims: Vec<Claim> = chosen
            .iter()
            .map(|c| Claim {
                holder: state::holder(&crate::store::TryKey::of(&c.row)),
                slots: state::holds(&c.dag.namespace, &c.row)
                    .into_iter()
                    .map(|h| {
                        let limit = if h.key == gate_key::RUNNING_TASKS {
                            tasks_limit
                        } else {
                            c.pool_limit.unwrap_or(0)
                        };
                        Slot::new(h.key, h.weight, limit)
                    })
                    .collect(),
            })
            .collect();
        let grants = match self.gate.acquire_all(&claims).await {
            Ok(g) => g,
            Err(e) => {
                // granted or not, nobody knows: what is not recorded by then is let go
                self.ledger.unanswered(&claims);
                self.gate_errors.push(GateScope::RunningTasks);
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(chosen.len());
        for ((c, claim), grant) in chosen.iter().zip(&claims).zip(grants) {
            match grant {
                Grant::Granted => {
                    self.ledger
                        .granted(&claim.holder, state::holds(&c.dag.namespace, &c.row));
                    out.push(true);
                }
                Grant::Refused(i) => {
                    let scope = if i == 0 {
                        GateScope::RunningTasks
                    } else {
                        GateScope::Pool
                    };
                    self.gate_refused.push(scope);
                    // another replica holds the slots: its tries' ends are not seen here,
                    // so look again in a moment
                    self.admit_dirty = true;
                    self.admit_after = Some(now + chrono::Duration::seconds(1));
                    out.push(false);
                }
            }
        }
        Ok(out)
    }

    /// Writes what the launches came to: running (with the Pod's name), failed at once
    /// (refused: retries apply), or still queued (tried again a second after `now`). Stamps
    /// count from `began`, the admission's start on the step's clock.
    async fn record_launches(
        &mut self,
        launched: Vec<(Chosen, Answer)>,
        began: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), super::ExecError> {
        let mut changes = Changes::default();
        let mut effects = Vec::new();
        for (c, answer) in launched {
            let deleted_since = self.deleted_early.remove(&c.pod).map(|(_, at)| at);
            let latest = self
                .live
                .get(&c.run)
                .and_then(|r| r.tasks.get(c.task))
                .map(|t| &t.row);
            if !still_wanted(latest, c.row.try_number) {
                // its run ended while the create was in flight (its slots went back then, and
                // its Pods were deleted before this one was made)
                if answer.outcome.may_have_created() {
                    tracing::info!(pod = %c.pod, "a create landed after its run ended; deleting the pod");
                    self.doomed_pods.push(c.pod.clone());
                }
                continue;
            }
            let key = crate::store::TryKey::of(&c.row);
            // when the API server answered, on the step's clock
            let at = began + chrono::Duration::from_std(answer.after).unwrap_or_default();
            let used = self
                .live
                .get(&c.run)
                .and_then(|r| r.tasks.get(c.task))
                .map_or(1, |t| t.used);
            match answer.outcome {
                Launched::Created => {
                    let mut m = TaskMove::new(key, TaskState::Queued, TaskState::Running, at);
                    m.stamp = Stamp::Started;
                    m.pod_name = Some(c.pod.name.clone());
                    let mut row = c.row.clone();
                    row.state = TaskState::Running;
                    row.started_at = Some(at);
                    row.pod_name = Some(c.pod.name.clone());
                    changes.moves.push(m);
                    if self.refused.remove(&c.dag).is_some() {
                        self.emit(ExecOutput::Status(ExecStatus::LaunchHealth(
                            c.dag.clone(),
                            None,
                        )));
                    }
                    // the watch may have told of the Pod already, even of its deletion
                    let sight = plan::sight_at_start(
                        self.pods.get(&c.pod).map(|record| &record.verdict),
                        deleted_since,
                    );
                    effects.push((c, row, used, sight));
                }
                Launched::Refused(message) => {
                    let rules = self.live.get(&c.run).map(|r| r.spec.rules[c.task].clone());
                    let to = rules.map_or(TaskState::Failed, |r| r.after_failure(used));
                    let mut m = TaskMove::new(key.clone(), TaskState::Queued, to, at);
                    m.stamp = Stamp::Ended;
                    m.message = Some(message.clone());
                    let mut row = c.row.clone();
                    row.state = to;
                    row.ended_at = Some(at);
                    row.message = Some(message.clone());
                    changes.moves.push(m);
                    self.ledger.end(&state::holder(&key));
                    self.emit(ExecOutput::Event(Notice::warning(
                        Subject::Dag(c.dag.clone()),
                        "FailedCreate",
                        format!(
                            "task {:?} try {}: {message}",
                            c.row.task_name, c.row.try_number
                        ),
                    )));
                    if self.refused.get(&c.dag) != Some(&message) {
                        self.refused.insert(c.dag.clone(), message.clone());
                        self.emit(ExecOutput::Status(ExecStatus::LaunchHealth(
                            c.dag.clone(),
                            Some(message),
                        )));
                    }
                    effects.push((c, row, used, PodSight::Gone { since: at }));
                }
                Launched::Later(e) => {
                    tracing::warn!(pod = %c.pod, error = %e, "could not create pod; will retry");
                    // not given back: a replica may run this try under the same name
                    self.ledger.forget(&state::holder(&key));
                    self.admit_dirty = true;
                    self.admit_after = Some(now + chrono::Duration::seconds(1));
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let applied = match self.store.write_changes(&changes).await {
            Ok(a) => a,
            Err(e) => {
                // the Pods exist: the next admission finds them (409) and adopts them
                self.admit_dirty = true;
                return Err(e.into());
            }
        };
        for ((c, row, used, sight), took) in effects.into_iter().zip(applied.moves) {
            if !took {
                // the try left `queued` meanwhile (its run was cancelled, or another replica
                // started it): released — while the winner keeps the same name, the gate makes
                // that a let-go; else the slot is free at once
                self.ledger
                    .end(&state::holder(&crate::store::TryKey::of(&c.row)));
                if row.state == TaskState::Running {
                    // ... and the Pod just made must not run either
                    self.doomed_pods.push(c.pod.clone());
                }
                continue;
            }
            // not started, or a Pod the watch told of before its try was written running
            // (finished, stuck or deleted already): the run is decided again
            let decide = sight != PodSight::Seen(PodVerdict::Running);
            self.transitions.push(row.state);
            self.live.set_try(&c.run, c.task, row, used, sight);
            if decide {
                self.dirty.insert(c.run);
            }
        }
        Ok(())
    }

    /// The gate could not be asked: nothing is admitted until it answers again.
    pub(super) fn gate_down(&mut self, e: &GateError) {
        if self.gate_ok {
            tracing::warn!(error = %e, "gate unavailable: no task is admitted until it returns");
        }
        self.set_gate_ok(false);
    }

    pub(super) fn set_gate_ok(&mut self, ok: bool) {
        if self.gate_ok != ok {
            self.gate_ok = ok;
            if ok {
                tracing::info!("gate reachable again: admission of tasks resumes");
                self.ledger.renew_soon();
            }
            self.emit(ExecOutput::Status(ExecStatus::GateHealth(ok)));
        }
    }
}

/// Creates a chosen try's Pod (None: nothing to create it from) and says how it went and
/// when, counted from `began` (the admission's start, at the step's `now`).
async fn create<L: PodLauncher>(
    launcher: L,
    pod: Option<k8s_openapi::api::core::v1::Pod>,
    c: Chosen,
    began: std::time::Instant,
    permits: Arc<Semaphore>,
) -> (Chosen, Answer) {
    // the semaphore is never closed (were it, the create would go ahead, not wait forever)
    let _permit = permits.acquire_owned().await.ok();
    let outcome = match pod {
        None => Launched::Later("no spec for the task".into()),
        Some(pod) => match launcher.create(pod).await {
            Ok(()) => Launched::Created,
            Err(LaunchError::Exists) => {
                adopt(&launcher, &c.pod, &crate::store::TryKey::of(&c.row)).await
            }
            Err(LaunchError::Refused { code, message }) => {
                Launched::Refused(format!("pod refused by the API server ({code}): {message}"))
            }
            Err(LaunchError::Transient(e)) => Launched::Later(e),
        },
    };
    let after = began.elapsed();
    (c, Answer { outcome, after })
}

/// A Pod of the try's name exists: it is ours only if its labels name the same try (created
/// before a crash); a Pod of another try keeps the name, and this try cannot run.
async fn adopt<L: PodLauncher>(
    launcher: &L,
    key: &PodKey,
    owner: &crate::store::TryKey,
) -> Launched {
    match launcher.labels(key).await {
        Ok(Some(labels)) => {
            if pod::owner(Some(&labels)).as_ref() == Some(owner) {
                Launched::Created
            } else {
                Launched::Refused(format!(
                    "pod name {:?} is taken by a pod of another try",
                    key.name
                ))
            }
        }
        // deleted in between: create it again next time
        Ok(None) => Launched::Later("the pod of that name went away".into()),
        Err(e) => Launched::Later(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str) -> PoolKey {
        PoolKey::new("ns", name)
    }

    #[test]
    fn an_answer_counts_only_for_the_same_try_still_queued() {
        let row = |try_number, state| TaskRow {
            run_id: uuid::Uuid::from_u128(1),
            task_name: "a".into(),
            try_number,
            state,
            pool: None,
            pool_slots: 1,
            pod_name: None,
            exit_code: None,
            message: None,
            queued_at: None,
            started_at: None,
            ended_at: None,
            attempt: 1,
        };
        assert!(still_wanted(Some(&row(2, TaskState::Queued)), 2));
        // the run left memory (cancelled, ended, gone at a resync)
        assert!(!still_wanted(None, 2));
        // the try was abandoned (runTimeoutSeconds) or another try came meanwhile
        assert!(!still_wanted(Some(&row(2, TaskState::Skipped)), 2));
        assert!(!still_wanted(Some(&row(3, TaskState::Queued)), 2));
        assert!(Launched::Created.may_have_created());
        assert!(Launched::Later("reset".into()).may_have_created());
        assert!(!Launched::Refused("invalid".into()).may_have_created());
    }

    #[test]
    fn the_floor_counts_tasks_and_pool_slots() {
        let mut floor = Floor {
            tasks_free: 3,
            pool_free: HashMap::new(),
        };
        // a pool of 2 slots, one held
        assert_eq!(floor.take(Some(&pool("db")), 1, || Some(1)), Ok(()));
        assert_eq!(
            floor.take(Some(&pool("db")), 1, || Some(1)),
            Err(Wait::Pool)
        );
        // a missing pool waits
        assert_eq!(floor.take(Some(&pool("gone")), 1, || None), Err(Wait::Pool));
        // a heavier try than the room waits, a lighter one of another pool starts
        assert_eq!(
            floor.take(Some(&pool("big")), 3, || Some(2)),
            Err(Wait::Pool)
        );
        assert_eq!(floor.take(Some(&pool("big")), 2, || Some(2)), Ok(()));
        assert_eq!(floor.take(None, 1, || None), Ok(()));
        assert_eq!(floor.take(None, 1, || None), Err(Wait::Tasks));
    }
}

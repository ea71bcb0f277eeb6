//! Tick planning (SPEC §3.3, §2.3): catch-up after downtime, data intervals and backfill plans.
//! Large ranges are walked, never materialised: counting a year of minutely ticks allocates
//! nothing, and a newest-first plan holds one small window of ticks at a time.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::Schedule;

/// How many of the due ticks found after downtime are kept (SPEC §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchupPolicy {
    /// `catchup: true`: the most recent `maxCatchupRuns` due ticks
    LatestN(u32),
    /// `catchup: false`: only the most recent due tick
    LatestOnly,
}

impl CatchupPolicy {
    pub fn from_spec(catchup: bool, max_catchup_runs: u32) -> Self {
        if catchup {
            CatchupPolicy::LatestN(max_catchup_runs)
        } else {
            CatchupPolicy::LatestOnly
        }
    }

    fn keep(self) -> usize {
        match self {
            CatchupPolicy::LatestN(n) => n as usize,
            CatchupPolicy::LatestOnly => 1,
        }
    }
}

/// What to look at when computing due ticks.
#[derive(Clone, Copy, Debug)]
pub struct CatchupRequest {
    /// the last tick that already has a scheduled run (exclusive bound)
    pub after: Option<DateTime<Utc>>,
    /// inclusive lower bound: the latest of `startDate`, the DAG's creation time and the moment
    /// its schedule or zone last changed
    pub not_before: DateTime<Utc>,
    /// inclusive upper bound from `endDate`
    pub not_after: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub policy: CatchupPolicy,
}

/// The due ticks to create runs for, and what was dropped (for the `MissedRuns` event).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatchupPlan {
    /// kept ticks, oldest first
    pub due: Vec<DateTime<Utc>>,
    /// how many due ticks were dropped by the policy
    pub missed: u64,
    pub missed_first: Option<DateTime<Utc>>,
    pub missed_last: Option<DateTime<Utc>>,
}

fn ceil_secs(t: DateTime<Utc>) -> i64 {
    t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0)
}

fn at(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// Due ticks in `(after, now]`, within the bounds, trimmed by the policy.
pub fn catch_up(schedule: &Schedule, req: &CatchupRequest) -> CatchupPlan {
    let keep = req.policy.keep();
    let mut cursor = ceil_secs(req.not_before) - 1;
    if let Some(after) = req.after {
        cursor = cursor.max(after.timestamp());
    }
    let mut hi = req.now.timestamp();
    if let Some(end) = req.not_after {
        hi = hi.min(end.timestamp());
    }
    let mut kept: VecDeque<i64> = VecDeque::with_capacity(keep.min(1024));
    let mut plan = CatchupPlan::default();
    while let Some(tick) = schedule.next_after_secs(cursor) {
        if tick > hi {
            break;
        }
        if kept.len() == keep {
            if let Some(dropped) = kept.pop_front() {
                plan.missed += 1;
                if plan.missed_first.is_none() {
                    plan.missed_first = at(dropped);
                }
                plan.missed_last = at(dropped);
            }
        }
        if keep > 0 {
            kept.push_back(tick);
        } else {
            plan.missed += 1;
            plan.missed_first = plan.missed_first.or(at(tick));
            plan.missed_last = at(tick);
        }
        cursor = tick;
    }
    plan.due = kept.into_iter().filter_map(at).collect();
    plan
}

/// A run's data interval: `[previous tick, tick)`, starting no earlier than `startDate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The data interval of the run at `logical_date`. Without a schedule (manual runs of an
/// unscheduled DAG) the interval is empty: `[logical_date, logical_date)`.
pub fn data_interval(
    schedule: Option<&Schedule>,
    logical_date: DateTime<Utc>,
    start_date: Option<DateTime<Utc>>,
) -> DataInterval {
    let prev = schedule.and_then(|s| s.prev_before(logical_date));
    let start = match (prev, start_date) {
        (Some(p), Some(sd)) if p < sd && sd <= logical_date => sd,
        (Some(p), _) => p,
        (None, Some(sd)) if sd <= logical_date => sd,
        (None, _) => logical_date,
    };
    DataInterval {
        start,
        end: logical_date,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackfillOrder {
    #[default]
    OldestFirst,
    NewestFirst,
}

/// The ticks of a schedule in the half-open range `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct BackfillPlan<'a> {
    schedule: &'a Schedule,
    /// first second that may be a tick
    start: i64,
    /// first second that may not
    end: i64,
    order: BackfillOrder,
}

impl<'a> BackfillPlan<'a> {
    pub fn new(
        schedule: &'a Schedule,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        order: BackfillOrder,
    ) -> Self {
        BackfillPlan {
            schedule,
            start: ceil_secs(start),
            end: ceil_secs(end),
            order,
        }
    }

    /// How many ticks the plan holds, counting at most `limit + 1` (enough to tell that a
    /// range is over a limit without walking all of it).
    pub fn count_up_to(&self, limit: u64) -> u64 {
        let mut n = 0;
        let mut cursor = self.start - 1;
        while let Some(tick) = self.schedule.next_after_secs(cursor) {
            if tick >= self.end || n > limit {
                break;
            }
            n += 1;
            cursor = tick;
        }
        n
    }

    pub fn count(&self) -> u64 {
        self.count_up_to(u64::MAX - 1)
    }

    /// The ticks in the plan's order. The iterator owns (a cheap clone of) the schedule, so
    /// it can be kept and resumed later.
    pub fn iter(&self) -> BackfillTicks {
        BackfillTicks {
            schedule: self.schedule.clone(),
            start: self.start,
            end: self.end,
            order: self.order,
            forward_cursor: self.start - 1,
            reverse_hi: self.end,
            window: 3600,
            buffer: Vec::new(),
        }
    }
}

/// Iterator over a backfill plan. Newest-first walks backwards one window at a time, so it
/// never holds more than a few thousand ticks.
pub struct BackfillTicks {
    schedule: Schedule,
    start: i64,
    end: i64,
    order: BackfillOrder,
    forward_cursor: i64,
    reverse_hi: i64,
    window: i64,
    buffer: Vec<i64>,
}

const REVERSE_CHUNK: usize = 4096;

impl BackfillTicks {
    fn next_forward(&mut self) -> Option<i64> {
        let tick = self.schedule.next_after_secs(self.forward_cursor)?;
        if tick >= self.end {
            return None;
        }
        self.forward_cursor = tick;
        Some(tick)
    }

    fn next_reverse(&mut self) -> Option<i64> {
        while self.buffer.is_empty() {
            if self.reverse_hi <= self.start {
                return None;
            }
            let lo = self.start.max(self.reverse_hi - self.window);
            let mut cursor = lo - 1;
            while let Some(tick) = self.schedule.next_after_secs(cursor) {
                if tick >= self.reverse_hi {
                    break;
                }
                self.buffer.push(tick);
                cursor = tick;
            }
            self.reverse_hi = lo;
            if self.buffer.len() > REVERSE_CHUNK {
                self.window = (self.window / 4).max(1);
            } else if self.buffer.len() < REVERSE_CHUNK / 16 {
                self.window = self.window.saturating_mul(4);
            }
        }
        self.buffer.pop()
    }
}

impl Iterator for BackfillTicks {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<Self::Item> {
        let tick = match self.order {
            BackfillOrder::OldestFirst => self.next_forward(),
            BackfillOrder::NewestFirst => self.next_reverse(),
        }?;
        at(tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn sched(expr: &str) -> Schedule {
        Schedule::parse(expr, Tz::UTC, None).unwrap()
    }

    #[test]
    fn catch_up_keeps_latest_n_and_reports_the_rest() {
        let s = sched("0 * * * *");
        let plan = catch_up(
            &s,
            &CatchupRequest {
                after: Some(utc("2024-01-01T00:00:00Z")),
                not_before: utc("2023-01-01T00:00:00Z"),
                not_after: None,
                now: utc("2024-01-01T10:30:00Z"),
                policy: CatchupPolicy::LatestN(3),
            },
        );
        assert_eq!(
            plan.due,
            [
                utc("2024-01-01T08:00:00Z"),
                utc("2024-01-01T09:00:00Z"),
                utc("2024-01-01T10:00:00Z")
            ]
        );
        assert_eq!(plan.missed, 7);
        assert_eq!(plan.missed_first, Some(utc("2024-01-01T01:00:00Z")));
        assert_eq!(plan.missed_last, Some(utc("2024-01-01T07:00:00Z")));
    }

    #[test]
    fn catch_up_respects_creation_and_end_date() {
        let s = sched("0 * * * *");
        let plan = catch_up(
            &s,
            &CatchupRequest {
                after: None,
                not_before: utc("2024-01-01T05:00:00Z"),
                not_after: Some(utc("2024-01-01T07:00:00Z")),
                now: utc("2024-01-02T00:00:00Z"),
                policy: CatchupPolicy::LatestOnly,
            },
        );
        assert_eq!(plan.due, [utc("2024-01-01T07:00:00Z")]);
        assert_eq!(plan.missed, 2);
    }

    #[test]
    fn data_intervals() {
        let s = sched("0 0 * * *");
        let d = data_interval(Some(&s), utc("2024-01-02T00:00:00Z"), None);
        assert_eq!(d.start, utc("2024-01-01T00:00:00Z"));
        let d = data_interval(
            Some(&s),
            utc("2024-01-02T00:00:00Z"),
            Some(utc("2024-01-01T12:00:00Z")),
        );
        assert_eq!(d.start, utc("2024-01-01T12:00:00Z"));
        let d = data_interval(None, utc("2024-01-02T00:00:00Z"), None);
        assert_eq!(d.start, d.end);
    }

    #[test]
    fn ticks_are_recognised() {
        let s = sched("0 */6 * * *");
        assert!(s.is_tick(utc("2024-01-01T06:00:00Z")));
        assert!(!s.is_tick(utc("2024-01-01T07:00:00Z")));
        assert!(!s.is_tick(utc("2024-01-01T06:00:00.5Z")));
    }

    #[test]
    fn backfill_counts_and_orders() {
        let s = sched("0 0 * * *");
        let plan = BackfillPlan::new(
            &s,
            utc("2024-01-01T00:00:00Z"),
            utc("2024-02-01T00:00:00Z"),
            BackfillOrder::NewestFirst,
        );
        assert_eq!(plan.count(), 31);
        let dates: Vec<_> = plan.iter().collect();
        assert_eq!(dates.len(), 31);
        assert_eq!(dates[0], utc("2024-01-31T00:00:00Z"));
        assert_eq!(dates[30], utc("2024-01-01T00:00:00Z"));
        assert_eq!(plan.count_up_to(10), 11);
    }
}

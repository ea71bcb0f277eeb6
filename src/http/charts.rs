//! The geometry of the UI's time charts (issue 29), as pure functions of stored rows and `now`,
//! drawn by `svg.rs`:
//! - a run's Gantt: each try as a bar, queued → started → ended, on one time axis;
//! - the durations of a DAG's latest runs, failures marked;
//! - a calendar of daily outcomes (by logical date, in the DAG's zone).
//!
//! Positions are fractions of the plot (0 at the left or bottom, 1 at the right or top), so the
//! drawing alone decides sizes.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::graph::TaskState;
use crate::store::{DailyCount, RunRow, RunState, TaskRow};

/// A time axis from `start` to `end` (never empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A tick on a time axis: where, and its label relative to the axis' start (`+1m30s`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub at: f64,
    pub label: String,
}

/// Tick steps tried, shortest first: the first giving at most [`MAX_TICKS`] ticks is used.
const STEPS: [i64; 17] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400,
];
const MAX_TICKS: i64 = 6;

impl Axis {
    /// From the earliest to the latest of `times`; a second wide at least.
    pub fn spanning(times: impl IntoIterator<Item = DateTime<Utc>>) -> Option<Axis> {
        let mut times = times.into_iter();
        let first = times.next()?;
        let (start, end) = times.fold((first, first), |(a, b), t| (a.min(t), b.max(t)));
        Some(Axis {
            start,
            end: end.max(start + Duration::seconds(1)),
        })
    }

    /// Where `t` falls, as a fraction of the axis.
    pub fn at(&self, t: DateTime<Utc>) -> f64 {
        let span = (self.end - self.start).num_milliseconds().max(1) as f64;
        ((t - self.start).num_milliseconds() as f64 / span).clamp(0.0, 1.0)
    }

    /// Ticks at a round step from the start, at most [`MAX_TICKS`] of them.
    pub fn ticks(&self) -> Vec<Tick> {
        let span = (self.end - self.start).num_seconds().max(1);
        let step = STEPS
            .iter()
            .copied()
            .find(|s| span / s < MAX_TICKS)
            .unwrap_or_else(|| (span + MAX_TICKS - 1) / MAX_TICKS);
        (0..=span / step)
            .map(|k| {
                let t = self.start + Duration::seconds(k * step);
                Tick {
                    at: self.at(t),
                    label: format!("+{}", seconds_label(k * step)),
                }
            })
            .collect()
    }
}

/// `90` → `1m30s`, `3600` → `1h`, `0` → `0s`.
pub fn seconds_label(total: i64) -> String {
    let (d, h, m, s) = (
        total / 86400,
        total % 86400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    let mut out = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// One try in a run's Gantt.
#[derive(Clone, Debug, PartialEq)]
pub struct GanttBar {
    pub task: String,
    pub try_number: i32,
    pub state: TaskState,
    /// waiting for a slot and its Pod: from queued to started (or to its end, or now)
    pub queued: Option<(f64, f64)>,
    /// its Pod running: from started to ended (or now)
    pub running: Option<(f64, f64)>,
    /// ended, or how long so far
    pub seconds: Option<i64>,
}

/// A run's Gantt: a bar per try, in the order they began.
#[derive(Clone, Debug, PartialEq)]
pub struct Gantt {
    pub axis: Axis,
    pub bars: Vec<GanttBar>,
}

/// The Gantt of `tries` (none has a time yet: `None`); a try not yet ended reaches `now`.
pub fn gantt(tries: &[TaskRow], now: DateTime<Utc>) -> Option<Gantt> {
    let end_of = |t: &TaskRow| t.ended_at.unwrap_or(now);
    let axis = Axis::spanning(tries.iter().flat_map(|t| {
        let began = t.queued_at.or(t.started_at);
        began.into_iter().chain(began.map(|_| end_of(t)))
    }))?;
    // in the order the tries began (those not begun last, as given)
    let mut ordered: Vec<&TaskRow> = tries.iter().collect();
    ordered.sort_by_key(|t| {
        (
            t.queued_at.or(t.started_at).is_none(),
            t.queued_at.or(t.started_at),
        )
    });
    let bars = ordered
        .into_iter()
        .map(|t| {
            let queued = t.queued_at.map(|q| {
                (
                    axis.at(q),
                    axis.at(t.started_at.unwrap_or_else(|| end_of(t))),
                )
            });
            let running = t.started_at.map(|s| (axis.at(s), axis.at(end_of(t))));
            GanttBar {
                task: t.task_name.clone(),
                try_number: t.try_number,
                state: t.state,
                queued,
                running,
                seconds: t.started_at.map(|s| (end_of(t) - s).num_seconds().max(0)),
            }
        })
        .collect();
    Some(Gantt { axis, bars })
}

/// One run in the durations chart.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationBar {
    pub run: uuid::Uuid,
    pub logical_date: DateTime<Utc>,
    pub state: RunState,
    pub seconds: i64,
    /// its height, as a fraction of the longest
    pub height: f64,
}

/// The durations of `runs`, oldest first (a running run counts until `now`; a run not yet
/// started is left out), and the longest in seconds.
pub fn durations(runs: &[RunRow], now: DateTime<Utc>) -> (Vec<DurationBar>, i64) {
    let mut bars: Vec<DurationBar> = runs
        .iter()
        .filter_map(|r| {
            let started = r.started_at?;
            let seconds = (r.ended_at.unwrap_or(now) - started).num_seconds().max(0);
            Some(DurationBar {
                run: r.id,
                logical_date: r.logical_date,
                state: r.state,
                seconds,
                height: 0.0,
            })
        })
        .collect();
    bars.sort_by_key(|b| b.logical_date);
    let longest = bars.iter().map(|b| b.seconds).max().unwrap_or(0);
    for b in &mut bars {
        b.height = if longest == 0 {
            0.0
        } else {
            b.seconds as f64 / longest as f64
        };
    }
    (bars, longest)
}

/// A day's runs in the calendar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Day {
    pub success: u32,
    pub failed: u32,
    pub running: u32,
    pub cancelled: u32,
}

impl Day {
    /// What the day shows: failed over running over cancelled over success; none: no run.
    pub fn outcome(&self) -> Option<RunState> {
        if self.failed > 0 {
            Some(RunState::Failed)
        } else if self.running > 0 {
            Some(RunState::Running)
        } else if self.cancelled > 0 {
            Some(RunState::Cancelled)
        } else if self.success > 0 {
            Some(RunState::Success)
        } else {
            None
        }
    }
}

/// The calendar: `weeks` whole weeks (Monday first) ending with the week of `today`, a day
/// per date with its runs (by logical date, in the DAG's zone: the store counts them so).
#[derive(Clone, Debug, PartialEq)]
pub struct Calendar {
    pub first: NaiveDate,
    pub today: NaiveDate,
    pub days: BTreeMap<NaiveDate, Day>,
    pub weeks: u32,
}

/// The first day a calendar of `weeks` weeks ending with the week of `today` shows.
pub fn calendar_start(today: NaiveDate, weeks: u32) -> NaiveDate {
    let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
    monday - Duration::weeks(i64::from(weeks.saturating_sub(1)))
}

pub fn calendar(counts: &[DailyCount], today: NaiveDate, weeks: u32) -> Calendar {
    let first = calendar_start(today, weeks);
    let mut days: BTreeMap<NaiveDate, Day> = BTreeMap::new();
    for c in counts {
        if c.date < first || c.date > today {
            continue;
        }
        let day = days.entry(c.date).or_default();
        let n = u32::try_from(c.runs).unwrap_or(u32::MAX);
        let slot = match c.state {
            RunState::Success => &mut day.success,
            RunState::Failed => &mut day.failed,
            RunState::Running => &mut day.running,
            RunState::Cancelled => &mut day.cancelled,
        };
        *slot = slot.saturating_add(n);
    }
    Calendar {
        first,
        today,
        days,
        weeks,
    }
}

/// When `date` begins in `zone` (an IANA name; UTC if unknown): its first local midnight, or
/// the first instant after a gap.
pub fn day_start(zone: &str, date: NaiveDate) -> DateTime<Utc> {
    use chrono::TimeZone;
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    match zone.parse::<Tz>() {
        Ok(tz) => (0..=3)
            .find_map(|h| {
                tz.from_local_datetime(&(midnight + Duration::hours(h)))
                    .earliest()
            })
            .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc)),
        Err(_) => midnight.and_utc(),
    }
}

/// Today in `zone` (an IANA name; UTC if unknown).
pub fn today_in(zone: &str, now: DateTime<Utc>) -> NaiveDate {
    match zone.parse::<Tz>() {
        Ok(tz) => now.with_timezone(&tz).date_naive(),
        Err(_) => now.date_naive(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("a time")
            + Duration::seconds(s)
    }

    fn try_row(
        task: &str,
        queued: Option<i64>,
        started: Option<i64>,
        ended: Option<i64>,
    ) -> TaskRow {
        TaskRow {
            run_id: uuid::Uuid::nil(),
            task_name: task.into(),
            try_number: 1,
            state: TaskState::Success,
            pool: None,
            pool_slots: 1,
            pod_name: None,
            exit_code: None,
            message: None,
            queued_at: queued.map(at),
            started_at: started.map(at),
            ended_at: ended.map(at),
            attempt: 1,
        }
    }

    #[test]
    fn a_gantt_puts_each_try_on_one_axis() {
        let tries = [
            try_row("later", None, None, None),
            try_row("load", Some(40), Some(50), None),
            try_row("extract", Some(0), Some(10), Some(40)),
        ];
        let g = gantt(&tries, at(100)).expect("a chart");
        assert_eq!((g.axis.start, g.axis.end), (at(0), at(100)));
        assert_eq!(g.bars[0].queued, Some((0.0, 0.1)));
        assert_eq!(g.bars[0].running, Some((0.1, 0.4)));
        assert_eq!(g.bars[0].seconds, Some(30));
        // running: until now
        assert_eq!(g.bars[1].running, Some((0.5, 1.0)));
        assert_eq!(g.bars[1].seconds, Some(50));
        assert_eq!((g.bars[2].queued, g.bars[2].running), (None, None));
        let order: Vec<&str> = g.bars.iter().map(|b| b.task.as_str()).collect();
        assert_eq!(order, ["extract", "load", "later"]);
        assert!(gantt(&tries[..1], at(100)).is_none());
    }

    #[test]
    fn ticks_are_round_and_few() {
        let axis = Axis {
            start: at(0),
            end: at(100),
        };
        let labels: Vec<String> = axis.ticks().into_iter().map(|t| t.label).collect();
        assert_eq!(labels, ["+0s", "+30s", "+1m", "+1m30s"]);
        let day = Axis {
            start: at(0),
            end: at(86_400),
        };
        assert!(day.ticks().len() as i64 <= MAX_TICKS);
        assert_eq!(seconds_label(3600), "1h");
        assert_eq!(seconds_label(90_061), "1d1h1m1s");
    }

    fn run(date: DateTime<Utc>, state: RunState, secs: Option<(i64, Option<i64>)>) -> RunRow {
        RunRow {
            id: uuid::Uuid::new_v4(),
            dag: crate::key::DagKey::new("a", "etl"),
            dag_uid: String::new(),
            run_type: crate::store::RunType::Scheduled,
            backfill_name: None,
            logical_date: date,
            data_interval_start: date,
            data_interval_end: date,
            priority: 0,
            state,
            params: serde_json::Value::Null,
            attempt: 1,
            created_at: date,
            started_at: secs.map(|(s, _)| at(s)),
            ended_at: secs.and_then(|(_, e)| e.map(at)),
            spec_hash: None,
        }
    }

    #[test]
    fn durations_are_oldest_first_against_the_longest() {
        let runs = [
            run(at(86_400), RunState::Failed, Some((0, Some(50)))),
            run(at(0), RunState::Success, Some((0, Some(100)))),
            run(at(2 * 86_400), RunState::Running, Some((100, None))),
            run(at(3 * 86_400), RunState::Running, None),
        ];
        let (bars, longest) = durations(&runs, at(125));
        assert_eq!(longest, 100);
        let got: Vec<(RunState, i64, f64)> = bars
            .iter()
            .map(|b| (b.state, b.seconds, b.height))
            .collect();
        assert_eq!(
            got,
            [
                (RunState::Success, 100, 1.0),
                (RunState::Failed, 50, 0.5),
                (RunState::Running, 25, 0.25)
            ]
        );
    }

    #[test]
    fn the_calendar_holds_whole_weeks_up_to_today() {
        let date = |m: u32, d: u32| NaiveDate::from_ymd_opt(2026, m, d).expect("a date");
        let count = |date: NaiveDate, state: RunState, runs: i64| DailyCount { date, state, runs };
        let counts = [
            count(date(12, 2), RunState::Failed, 1),
            count(date(12, 2), RunState::Success, 3),
            count(date(12, 3), RunState::Success, 1),
            count(date(1, 3), RunState::Success, 1),
        ];
        // 2026-12-07 is a Monday: two weeks start on 11-30
        let c = calendar(&counts, date(12, 7), 2);
        assert_eq!(c.first, date(11, 30));
        let day = |d: u32| c.days.get(&date(12, d));
        assert_eq!(day(2).and_then(Day::outcome), Some(RunState::Failed));
        assert_eq!(day(2).map(|d| (d.failed, d.success)), Some((1, 3)));
        assert_eq!(day(3).and_then(Day::outcome), Some(RunState::Success));
        assert_eq!(
            c.days.len(),
            2,
            "the runs before the first day are left out"
        );
        // New York's date, not UTC's
        let late = Utc
            .with_ymd_and_hms(2026, 12, 3, 3, 0, 0)
            .single()
            .expect("a time");
        assert_eq!(today_in("America/New_York", late), date(12, 2));
        assert_eq!(today_in("Nowhere/Else", late), date(12, 3));
        assert_eq!(
            day_start("America/New_York", date(12, 2)),
            Utc.with_ymd_and_hms(2026, 12, 2, 5, 0, 0)
                .single()
                .expect("a time")
        );
        // Santiago skips midnight when its summer time begins (2026-09-06)
        assert_eq!(
            day_start(
                "America/Santiago",
                NaiveDate::from_ymd_opt(2026, 9, 6).expect("a date")
            ),
            Utc.with_ymd_and_hms(2026, 9, 6, 4, 0, 0)
                .single()
                .expect("a time")
        );
    }
}

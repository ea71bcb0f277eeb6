//! The schedule engine (SPEC §3.1–3.3): cron expressions evaluated against wall-clock time in an
//! IANA zone with Vixie cron's DST rules, `@every` intervals, and the tick planning the scheduler
//! and the Backfill controller call. Pure: no I/O, no async, no clock of its own.

mod civil;
mod cron;
mod error;
mod interval;
mod jitter;
pub mod plan;
mod set;
mod zone;

#[cfg(test)]
mod proptests;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub use cron::CronExpr;
pub use error::{Field, FieldProblem, ScheduleError};
pub use jitter::jitter_delay;
pub use plan::{
    BackfillOrder, BackfillPlan, CatchupPlan, CatchupPolicy, CatchupRequest, DataInterval,
    catch_up, data_interval,
};
use zone::ZoneTable;

/// What `dag-operator schedule next` prints: the first `count` ticks of `expr` strictly after
/// `after`, with `timezone` as the default zone and `start_date` anchoring `@every`.
pub fn next_ticks(
    expr: &str,
    timezone: &str,
    start_date: Option<DateTime<Utc>>,
    after: DateTime<Utc>,
    count: usize,
) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
    let schedule = Schedule::parse(expr, parse_timezone(timezone)?, start_date)?;
    Ok(schedule.ticks_after(after).take(count).collect())
}

/// A parsed schedule bound to its time zone: one expression, or the union of several with
/// excluded ticks removed (`schedules`, `exclude`; see `set.rs`).
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
    zone: Arc<ZoneTable>,
    /// more expressions whose ticks join this one's (a `schedules` list)
    more: Arc<[Schedule]>,
    /// ticks removed from the union (`exclude`)
    exclude: Arc<[set::Exclusion]>,
}

#[derive(Clone, Debug)]
enum Kind {
    Cron(CronExpr),
    /// ticks at `start + k * period` (seconds)
    Every {
        start: i64,
        period: i64,
    },
}

/// Parses an IANA zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimezone(name.to_string()))
}

impl Schedule {
    /// Parses `expr` (SPEC §3.1). `default_tz` applies unless a `CRON_TZ=`/`TZ=` prefix names
    /// another zone; `start_date` anchors `@every`.
    pub fn parse(
        expr: &str,
        default_tz: Tz,
        start_date: Option<DateTime<Utc>>,
    ) -> Result<Self, ScheduleError> {
        let mut text = expr.trim();
        let mut tz = default_tz;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (zone, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                tz = parse_timezone(zone)?;
                text = rest.trim_start();
                break;
            }
        }
        if text.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let kind = if let Some(descriptor) = text.strip_prefix('@') {
            let mut words = descriptor.split_whitespace();
            let name = words.next().unwrap_or_default().to_ascii_lowercase();
            let standard = match name.as_str() {
                "yearly" | "annually" => Some("0 0 1 1 *"),
                "monthly" => Some("0 0 1 * *"),
                "weekly" => Some("0 0 * * 0"),
                "daily" | "midnight" => Some("0 0 * * *"),
                "hourly" => Some("0 * * * *"),
                _ => None,
            };
            match (standard, name.as_str()) {
                (Some(fields), _) if words.next().is_none() => {
                    let fields: Vec<&str> = fields.split_whitespace().collect();
                    Kind::Cron(CronExpr::parse(&fields)?)
                }
                (None, "every") => {
                    let duration = words.collect::<Vec<_>>().join("");
                    let period = parse_duration(&duration)
                        .ok_or_else(|| ScheduleError::InvalidDuration(duration.clone()))?;
                    let start = start_date.ok_or(ScheduleError::EveryWithoutStartDate)?;
                    Kind::Every {
                        start: start.timestamp(),
                        period,
                    }
                }
                _ => return Err(ScheduleError::UnknownDescriptor(text.to_string())),
            }
        } else {
            let fields: Vec<&str> = text.split_whitespace().collect();
            Kind::Cron(CronExpr::parse(&fields)?)
        };
        Ok(Schedule {
            kind,
            tz,
            zone: ZoneTable::of(tz),
            more: Arc::from([]),
            exclude: Arc::from([]),
        })
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Whether ticks are whole seconds of a 6-field expression (or an `@every` interval).
    pub fn has_seconds(&self) -> bool {
        let own = match &self.kind {
            Kind::Cron(c) => c.has_seconds(),
            Kind::Every { .. } => true,
        };
        own || self.more.iter().any(Schedule::has_seconds)
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after_secs(t.timestamp())
            .and_then(|s| DateTime::from_timestamp(s, 0))
    }

    /// The last tick strictly before `t`.
    pub fn prev_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // a tick at a fractional `t` counts as before it
        let bound = t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0);
        self.prev_before_secs(bound)
            .and_then(|s| DateTime::from_timestamp(s, 0))
    }

    /// Whether `t` is a tick (ticks fall on whole seconds).
    pub fn is_tick(&self, t: DateTime<Utc>) -> bool {
        t.timestamp_subsec_nanos() == 0
            && self.next_after_secs(t.timestamp() - 1) == Some(t.timestamp())
    }

    /// Ticks strictly after `t`, in order.
    pub fn ticks_after(&self, t: DateTime<Utc>) -> Ticks<'_> {
        Ticks {
            schedule: self,
            cursor: Some(t.timestamp()),
        }
    }

    /// First tick strictly after UTC second `t`.
    pub(crate) fn next_after_secs(&self, t: i64) -> Option<i64> {
        if self.more.is_empty() && self.exclude.is_empty() {
            return self.own_next(t);
        }
        self.set_next(t)
    }

    /// Last tick strictly before UTC second `t`.
    pub(crate) fn prev_before_secs(&self, t: i64) -> Option<i64> {
        if self.more.is_empty() && self.exclude.is_empty() {
            return self.own_prev(t);
        }
        self.set_prev(t)
    }

    /// The first tick of this expression alone strictly after `t`.
    fn own_next(&self, t: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every { start, period } => {
                if t < *start {
                    return Some(*start);
                }
                let k = (t - start) / period + 1;
                k.checked_mul(*period).and_then(|d| d.checked_add(*start))
            }
            Kind::Cron(expr) => self.next_cron(expr, t),
        }
    }

    /// The last tick of this expression alone strictly before `t`: searches windows that
    /// grow backwards.
    fn own_prev(&self, t: i64) -> Option<i64> {
        if let Kind::Every { start, period } = &self.kind {
            if t <= *start {
                return None;
            }
            return Some(start + (t - 1 - start) / period * period);
        }
        let mut window = 60;
        // 400 years bound the search, like the forward one
        while window <= 400 * 366 * 86_400 {
            let mut last = None;
            let mut cursor = t - window - 1;
            while let Some(next) = self.own_next(cursor) {
                if next >= t {
                    break;
                }
                last = Some(next);
                cursor = next;
            }
            if last.is_some() {
                return last;
            }
            window *= 8;
        }
        None
    }

    /// Vixie cron semantics (SPEC §3.2), walking the zone's constant-offset segments.
    fn next_cron(&self, expr: &CronExpr, after: i64) -> Option<i64> {
        let fixed = !expr.is_wildcard_job();
        let mut cursor = after;
        let mut inclusive = false;
        // each turn either answers or moves past a transition or a skipped repeat
        for _ in 0..100_000 {
            let seg = self.zone.segment(cursor);
            let off = i64::from(seg.offset);
            let from_local = cursor + off + i64::from(!inclusive);
            let local = expr.next_local_at_or_after(from_local)?;
            let candidate = local - off;
            match seg.end {
                Some(end) if candidate >= end.at => {
                    let new_off = i64::from(end.after);
                    // spring forward: wall times [end+off, end+new_off) never happen; a fixed-time
                    // job due in them fires once, at the first instant after the gap
                    if fixed && new_off > off && local < end.at + new_off {
                        return Some(end.at);
                    }
                    cursor = end.at;
                    inclusive = true;
                }
                _ => {
                    // fall back: wall times [start+new_off, start+old_off) happen twice; a
                    // fixed-time job fires only at the first occurrence
                    if let Some(start) = seg.start
                        && fixed
                        && start.after < start.before
                        && local < start.at + i64::from(start.before)
                    {
                        cursor = candidate;
                        inclusive = false;
                        continue;
                    }
                    return Some(candidate);
                }
            }
        }
        None
    }

    /// Whether an instant is a tick, decided second by second without the search: the
    /// independent oracle the property tests hold `next_after` to.
    #[doc(hidden)]
    pub fn is_tick_brute_force(&self, t: i64) -> bool {
        match &self.kind {
            Kind::Every { start, period } => t >= *start && (t - start) % period == 0,
            Kind::Cron(expr) => {
                let tz = self.tz;
                let offset = |s: i64| -> i64 {
                    use chrono::{Offset, TimeZone};
                    DateTime::from_timestamp(s, 0).map_or(0, |d| {
                        i64::from(
                            tz.offset_from_utc_datetime(&d.naive_utc())
                                .fix()
                                .local_minus_utc(),
                        )
                    })
                };
                let local = t + offset(t);
                let prev_local = t - 1 + offset(t - 1);
                let fixed = !expr.is_wildcard_job();
                if local > prev_local + 1 {
                    // just after a gap: a fixed job fires here if any skipped wall time matched
                    if fixed && (prev_local + 1..local).any(|l| expr.matches_local(l)) {
                        return true;
                    }
                    return expr.matches_local(local);
                }
                if !expr.matches_local(local) {
                    return false;
                }
                if fixed {
                    // a wall time shown twice (fall back) fires only at its first instant
                    use chrono::TimeZone;
                    let naive = DateTime::from_timestamp(local, 0).map(|d| d.naive_utc());
                    if let Some(chrono::LocalResult::Ambiguous(_, later)) =
                        naive.map(|n| tz.from_local_datetime(&n))
                    {
                        return later.timestamp() != t;
                    }
                }
                true
            }
        }
    }
}

/// Iterator over ticks strictly after a starting instant.
pub struct Ticks<'a> {
    schedule: &'a Schedule,
    cursor: Option<i64>,
}

impl Iterator for Ticks<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.schedule.next_after_secs(self.cursor?);
        self.cursor = next;
        next.and_then(|s| DateTime::from_timestamp(s, 0))
    }
}

/// Go-style durations as robfig/cron accepts them: `90s`, `15m`, `1h30m`, `2h`, `1d`, in whole
/// seconds. Also used for the operator's duration flags.
pub fn parse_duration(text: &str) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            'd' => 86_400,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
    }
    (number.is_empty() && total > 0).then_some(total)
}

/// `secs` as [`parse_duration`] reads it back: `1d2h`, `1m`, `90s` → `1m30s`; `0s` for zero
/// or less.
pub fn format_duration(secs: i64) -> String {
    if secs <= 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_as_they_parse() {
        for (secs, text) in [
            (60, "1m"),
            (90, "1m30s"),
            (82_800, "23h"),
            (90_061, "1d1h1m1s"),
        ] {
            assert_eq!(format_duration(secs), text);
            assert_eq!(parse_duration(text), Some(secs));
        }
        assert_eq!(format_duration(0), "0s");
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn next_n(expr: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(expr, parse_timezone(tz).unwrap(), None).unwrap();
        s.ticks_after(utc(after))
            .take(n)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn spring_forward_fixed_job_fires_once_after_the_gap() {
        assert_eq!(
            next_n("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z", 2),
            ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"]
        );
        // two matches inside the gap still fire once
        assert_eq!(
            next_n(
                "0,30 2 * * *",
                "America/New_York",
                "2024-03-10T00:00:00Z",
                2
            ),
            ["2024-03-10T07:00:00Z", "2024-03-11T06:00:00Z"]
        );
    }

    #[test]
    fn spring_forward_wildcard_job_skips_missing_times() {
        assert_eq!(
            next_n("0 * * * *", "America/New_York", "2024-03-10T05:30:00Z", 3),
            [
                "2024-03-10T06:00:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-10T08:00:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_fixed_once_wildcard_twice() {
        assert_eq!(
            next_n("30 1 * * *", "America/New_York", "2024-11-03T00:00:00Z", 2),
            ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]
        );
        assert_eq!(
            next_n("30 * * * *", "America/New_York", "2024-11-03T04:00:00Z", 4),
            [
                "2024-11-03T04:30:00Z",
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-03T07:30:00Z"
            ]
        );
    }

    #[test]
    fn prefixes_and_descriptors() {
        let s = Schedule::parse("CRON_TZ=Asia/Kolkata 0 9 * * *", Tz::UTC, None).unwrap();
        assert_eq!(s.timezone(), chrono_tz::Asia::Kolkata);
        assert_eq!(
            s.next_after(utc("2024-01-01T00:00:00Z")),
            Some(utc("2024-01-01T03:30:00Z"))
        );
        let s = Schedule::parse("TZ=Europe/Berlin @daily", Tz::UTC, None).unwrap();
        assert_eq!(
            s.next_after(utc("2024-01-01T00:00:00Z")),
            Some(utc("2024-01-01T23:00:00Z"))
        );
    }

    #[test]
    fn every_counts_from_start_date() {
        let start = utc("2024-01-01T00:00:10Z");
        let s = Schedule::parse("@every 1h30m", Tz::UTC, Some(start)).unwrap();
        assert_eq!(s.next_after(utc("2023-01-01T00:00:00Z")), Some(start));
        assert_eq!(s.next_after(start), Some(utc("2024-01-01T01:30:10Z")));
        assert_eq!(
            s.prev_before(utc("2024-01-01T03:00:11Z")),
            Some(utc("2024-01-01T03:00:10Z"))
        );
        assert_eq!(s.prev_before(start), None);
    }

    #[test]
    fn prev_before_finds_sparse_ticks() {
        let s = Schedule::parse("0 0 29 2 *", Tz::UTC, None).unwrap();
        assert_eq!(
            s.prev_before(utc("2028-02-29T00:00:00Z")),
            Some(utc("2024-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}

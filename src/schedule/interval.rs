//! A schedule's expected interval between runs: the longest gap between consecutive ticks
//! over the next ticks (what `dagop_dag_schedule_interval_seconds` exports, so "no success
//! within the expected interval" can be judged per DAG).

use chrono::{DateTime, Utc};

use super::Schedule;

/// At least this many ticks are looked at...
const MIN_TICKS: usize = 8;
/// ...and at least this span of them (a week and a day: a weekday schedule's weekend, any
/// weekly pattern)...
const MIN_SPAN_SECS: i64 = 8 * 86_400;
/// ...but no more ticks than this (an every-second schedule).
const MAX_TICKS: usize = 10_000;

impl Schedule {
    /// The longest gap, in seconds, between consecutive ticks after `after` (and not after
    /// `until`): over at least 8 ticks and 8 days of ticks, at most 10 000 ticks. `None` when
    /// fewer than two ticks are left.
    pub fn longest_gap(&self, after: DateTime<Utc>, until: Option<DateTime<Utc>>) -> Option<i64> {
        let mut ticks = self
            .ticks_after(after)
            .take_while(|t| until.is_none_or(|end| *t <= end));
        let first = ticks.next()?;
        let (mut prev, mut longest, mut count) = (first, None::<i64>, 1usize);
        for t in ticks {
            let gap = (t - prev).num_seconds();
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            prev = t;
            count += 1;
            if count >= MAX_TICKS
                || (count >= MIN_TICKS && (t - first).num_seconds() >= MIN_SPAN_SECS)
            {
                break;
            }
        }
        longest
    }
}

/// Ticks looked at for two closer than a jitter: a year and a day of them (every DST change,
/// every weekday and month pattern, whenever asked)...
const YEAR_SPAN_SECS: i64 = 366 * 86_400;

impl Schedule {
    /// The first two consecutive ticks after `after` (and not after `until`) less than `secs`
    /// apart: over a year and a day of ticks, at most 10 000 of them (an every-minute
    /// schedule's week). `None` when there are none — at once when no two ticks can be that
    /// close (a minute-granular schedule and `secs` ≤ 60).
    pub fn ticks_closer_than(
        &self,
        secs: i64,
        after: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let finest = if self.has_seconds() { 1 } else { 60 };
        if secs <= finest {
            return None;
        }
        let mut ticks = self
            .ticks_after(after)
            .take_while(|t| until.is_none_or(|end| *t <= end))
            .take(MAX_TICKS);
        let first = ticks.next()?;
        let mut prev = first;
        for t in ticks {
            if (t - prev).num_seconds() < secs {
                return Some((prev, t));
            }
            if (t - first).num_seconds() >= YEAR_SPAN_SECS {
                break;
            }
            prev = t;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse_timezone;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("a UTC instant")
    }

    fn gap(expr: &str, tz: &str, after: &str) -> Option<i64> {
        let tz = parse_timezone(tz).expect("a zone");
        let s = Schedule::parse(expr, tz, Some(utc("2026-01-01T00:00:00Z"))).expect("a schedule");
        s.longest_gap(utc(after), None)
    }

    #[test]
    fn regular_schedules_give_their_period() {
        assert_eq!(gap("0 * * * *", "UTC", "2026-03-02T10:15:00Z"), Some(3600));
        assert_eq!(
            gap("@hourly", "Europe/Berlin", "2026-03-02T10:15:00Z"),
            Some(3600)
        );
        assert_eq!(gap("*/5 * * * *", "UTC", "2026-03-02T10:15:00Z"), Some(300));
        assert_eq!(gap("* * * * * *", "UTC", "2026-03-02T10:15:00Z"), Some(1));
        assert_eq!(gap("@every 90s", "UTC", "2026-03-02T10:15:00Z"), Some(90));
        assert_eq!(
            gap("0 2 * * *", "UTC", "2026-03-02T10:15:00Z"),
            Some(86_400)
        );
        assert_eq!(
            gap("0 0 * * 0", "UTC", "2026-03-02T10:15:00Z"),
            Some(7 * 86_400)
        );
    }

    #[test]
    fn weekday_schedules_span_the_weekend_whenever_asked() {
        // Friday 09:00 to Monday 09:00, asked on any day of the week
        for day in 2..=8 {
            let after = format!("2026-03-0{day}T12:00:00Z");
            assert_eq!(
                gap("0 9 * * 1-5", "UTC", &after),
                Some(3 * 86_400),
                "asked {after}"
            );
        }
        // every 5 minutes in office hours: the weekend is the longest gap
        let friday_17_55_to_monday_09_00 = 3 * 86_400 - (8 * 3600 + 55 * 60);
        assert_eq!(
            gap("*/5 9-17 * * 1-5", "UTC", "2026-03-03T12:00:00Z"),
            Some(friday_17_55_to_monday_09_00)
        );
    }

    #[test]
    fn dst_days_are_longer_or_shorter() {
        // Europe/Berlin falls back on 2026-10-25: 09:00 to 09:00 across it is 25 hours
        assert_eq!(
            gap("0 9 * * *", "Europe/Berlin", "2026-10-20T12:00:00Z"),
            Some(25 * 3600)
        );
        // springs forward on 2026-03-29: 23 hours, so the usual day is the longest
        assert_eq!(
            gap("0 9 * * *", "Europe/Berlin", "2026-03-25T12:00:00Z"),
            Some(24 * 3600)
        );
        // an hourly schedule is hourly in UTC across both changes
        assert_eq!(
            gap("0 * * * *", "Europe/Berlin", "2026-10-24T12:00:00Z"),
            Some(3600)
        );
    }

    #[test]
    fn monthly_and_ending_schedules() {
        // the longest month of the next eight
        assert_eq!(
            gap("0 0 1 * *", "UTC", "2026-01-15T00:00:00Z"),
            Some(31 * 86_400)
        );
        let s = Schedule::parse("0 * * * *", parse_timezone("UTC").expect("UTC"), None)
            .expect("hourly");
        let after = utc("2026-03-02T10:15:00Z");
        // one tick left before the end: no interval
        assert_eq!(
            s.longest_gap(after, Some(utc("2026-03-02T11:30:00Z"))),
            None
        );
        assert_eq!(
            s.longest_gap(after, Some(utc("2026-03-02T12:00:00Z"))),
            Some(3600)
        );
        assert_eq!(
            s.longest_gap(after, Some(utc("2026-03-01T00:00:00Z"))),
            None
        );
    }

    fn closer(expr: &str, tz: &str, secs: i64) -> Option<(String, String)> {
        let tz = parse_timezone(tz).expect("a zone");
        let s = Schedule::parse(expr, tz, None).expect("a schedule");
        s.ticks_closer_than(secs, utc("2026-01-10T00:00:00Z"), None)
            .map(|(a, b)| (a.to_rfc3339(), b.to_rfc3339()))
    }

    #[test]
    fn ticks_closer_than_a_jitter() {
        // every minute: 400 days is far too long, 1m fits exactly, 30s at once (no walk)
        assert_eq!(
            closer("* * * * *", "UTC", 400 * 86_400),
            Some((
                "2026-01-10T00:01:00+00:00".into(),
                "2026-01-10T00:02:00+00:00".into()
            ))
        );
        assert_eq!(closer("* * * * *", "UTC", 60), None);
        assert_eq!(closer("* * * * *", "UTC", 30), None);
        assert!(closer("* * * * * *", "UTC", 2).is_some());
        // hourly: a whole hour of jitter fits, a minute more does not
        assert_eq!(closer("0 * * * *", "UTC", 3600), None);
        assert!(closer("0 * * * *", "UTC", 3660).is_some());
        // weekdays: the gap that counts is a day, not the weekend
        assert!(closer("0 9 * * 1-5", "UTC", 2 * 86_400).is_some());
        assert_eq!(closer("0 9 * * 1-5", "UTC", 86_400), None);
        // a day in a DST zone: the 23-hour day of spring is found in January too
        assert_eq!(closer("0 9 * * *", "UTC", 86_400), None);
        assert_eq!(
            closer("0 9 * * *", "Europe/Berlin", 86_400),
            Some((
                "2026-03-28T08:00:00+00:00".into(),
                "2026-03-29T07:00:00+00:00".into()
            ))
        );
        assert_eq!(closer("0 9 * * *", "Europe/Berlin", 23 * 3600), None);
        // monthly: February is the shortest
        assert!(closer("0 0 1 * *", "UTC", 29 * 86_400).is_some());
        assert_eq!(closer("0 0 1 * *", "UTC", 28 * 86_400), None);
        // two schedules together: 09:00 and 09:30 are 30 minutes apart
        let tz = parse_timezone("UTC").expect("UTC");
        let set = Schedule::parse_set(&["0 9 * * *", "30 9 * * *"], &[], tz, None).expect("a set");
        assert!(
            set.ticks_closer_than(3600, utc("2026-01-10T00:00:00Z"), None)
                .is_some()
        );
    }
}

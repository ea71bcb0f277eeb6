//! Several schedules and exclusions (issue 18): a DAG's `schedules` fire at the union of
//! their ticks, de-duplicated, minus the ticks `exclude` removes — holidays as dates
//! (`2025-12-25`, in the DAG's zone) or cron expressions (a tick is removed when it falls in a
//! minute, or for 6 fields the second, the expression matches: `* * 24-26 12 *` removes
//! Christmas). A data interval runs from the previous tick of the result, so the tick after
//! a holiday covers the holiday's data.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::{Schedule, ScheduleError};

/// Most ticks skipped in a row by exclusions before a search gives up (an exclusion that
/// removes every tick leaves a DAG without ticks rather than looping).
const MAX_EXCLUDED_IN_A_ROW: usize = 100_000;

/// A tick removed from a schedule.
#[derive(Clone, Debug)]
pub(super) enum Exclusion {
    /// every tick on this calendar day in the zone
    Date(NaiveDate, Tz),
    /// every tick in a minute (5 fields) or second (6 fields) the expression matches
    Cron(Schedule),
}

impl Exclusion {
    fn parse(text: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let text = text.trim();
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Exclusion::Date(date, tz));
        }
        Schedule::parse(text, tz, None).map(Exclusion::Cron)
    }

    fn removes(&self, t: i64) -> bool {
        match self {
            Exclusion::Date(date, tz) => DateTime::from_timestamp(t, 0)
                .is_some_and(|d| d.with_timezone(tz).date_naive() == *date),
            Exclusion::Cron(s) => {
                let at = if s.has_seconds() {
                    t
                } else {
                    t - t.rem_euclid(60)
                };
                s.own_next(at - 1) == Some(at)
            }
        }
    }
}

impl Schedule {
    /// The union of `exprs` (at least one) minus what `exclude` removes; `default_tz` applies
    /// to every expression without a `CRON_TZ=` prefix and to exclusion dates.
    pub fn parse_set(
        exprs: &[&str],
        exclude: &[String],
        default_tz: Tz,
        start_date: Option<DateTime<Utc>>,
    ) -> Result<Self, ScheduleError> {
        let mut parts = exprs
            .iter()
            .map(|e| Schedule::parse(e, default_tz, start_date))
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut first = parts.remove(0);
        first.more = Arc::from(parts);
        first.exclude = exclude
            .iter()
            .map(|e| Exclusion::parse(e, default_tz))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        Ok(first)
    }

    fn excluded(&self, t: i64) -> bool {
        self.exclude.iter().any(|x| x.removes(t))
    }

    /// The first tick of the set strictly after `t`.
    pub(super) fn set_next(&self, mut t: i64) -> Option<i64> {
        for _ in 0..MAX_EXCLUDED_IN_A_ROW {
            let next = std::iter::once(self.own_next(t))
                .chain(self.more.iter().map(|s| s.own_next(t)))
                .flatten()
                .min()?;
            if !self.excluded(next) {
                return Some(next);
            }
            t = next;
        }
        None
    }

    /// The last tick of the set strictly before `t`.
    pub(super) fn set_prev(&self, mut t: i64) -> Option<i64> {
        for _ in 0..MAX_EXCLUDED_IN_A_ROW {
            let prev = std::iter::once(self.own_prev(t))
                .chain(self.more.iter().map(|s| s.own_prev(t)))
                .flatten()
                .max()?;
            if !self.excluded(prev) {
                return Some(prev);
            }
            t = prev;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("RFC3339")
    }

    fn set(exprs: &[&str], exclude: &[&str]) -> Schedule {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        Schedule::parse_set(exprs, &exclude, chrono_tz::Europe::Berlin, None).expect("valid")
    }

    #[test]
    fn the_union_is_sorted_and_de_duplicated() {
        // 09:00 on weekdays, plus 09:00 and 14:00 on Saturday... and 09:00 daily twice
        let s = set(&["0 9 * * 1-5", "0 9,14 * * 6", "0 9 * * *"], &[]);
        let ticks: Vec<_> = s.ticks_after(utc("2025-06-05T00:00:00Z")).take(5).collect();
        assert_eq!(
            ticks,
            [
                utc("2025-06-05T07:00:00Z"), // Thu 09:00 Berlin
                utc("2025-06-06T07:00:00Z"), // Fri
                utc("2025-06-07T07:00:00Z"), // Sat 09:00
                utc("2025-06-07T12:00:00Z"), // Sat 14:00
                utc("2025-06-08T07:00:00Z"), // Sun (the daily one)
            ]
        );
        assert_eq!(
            s.prev_before(utc("2025-06-08T07:00:00Z")),
            Some(utc("2025-06-07T12:00:00Z"))
        );
        assert!(s.is_tick(utc("2025-06-07T12:00:00Z")));
    }

    #[test]
    fn exclusions_remove_dates_and_cron_matches() {
        let s = set(&["0 9 * * *"], &["2025-12-25", "* * 26 12 *"]);
        let ticks: Vec<_> = s.ticks_after(utc("2025-12-23T12:00:00Z")).take(3).collect();
        assert_eq!(
            ticks,
            [
                utc("2025-12-24T08:00:00Z"),
                utc("2025-12-27T08:00:00Z"),
                utc("2025-12-28T08:00:00Z"),
            ]
        );
        // the data interval after the holidays runs from the last tick before them
        assert_eq!(
            s.prev_before(utc("2025-12-27T08:00:00Z")),
            Some(utc("2025-12-24T08:00:00Z"))
        );
        assert!(!s.is_tick(utc("2025-12-25T08:00:00Z")));
        // an exclusion of everything leaves no tick, and says so rather than looping
        let none = set(&["0 9 * * *"], &["* * * * *"]);
        assert_eq!(none.next_after(utc("2025-01-01T00:00:00Z")), None);
    }

    #[test]
    fn a_bad_exclusion_is_an_error() {
        let bad = Schedule::parse_set(
            &["0 9 * * *"],
            &["2025-13-45".to_string()],
            chrono_tz::UTC,
            None,
        );
        assert!(bad.is_err());
    }

    proptest! {
        /// The union's next tick is the earliest next tick of its parts not excluded; every
        /// tick it yields is a tick of a part, and none is excluded.
        #[test]
        fn the_union_agrees_with_its_parts(
            minutes in proptest::collection::vec(0u32..60, 1..4),
            hours in proptest::collection::vec(0u32..24, 1..4),
            excluded_day in 1u32..28,
            start in 1_700_000_000i64..1_800_000_000i64,
        ) {
            let exprs: Vec<String> = minutes
                .iter()
                .zip(&hours)
                .map(|(m, h)| format!("{m} {h} * * *"))
                .collect();
            let refs: Vec<&str> = exprs.iter().map(String::as_str).collect();
            let exclude = vec![format!("* * {excluded_day} * *")];
            let s = Schedule::parse_set(&refs, &exclude, chrono_tz::UTC, None).expect("valid");
            let parts: Vec<Schedule> = refs
                .iter()
                .map(|e| Schedule::parse(e, chrono_tz::UTC, None).expect("valid"))
                .collect();
            let mut t = start;
            for _ in 0..20 {
                let Some(next) = s.next_after_secs(t) else { break };
                prop_assert!(next > t);
                prop_assert!(parts.iter().any(|p| p.own_next(next - 1) == Some(next)));
                let day = DateTime::from_timestamp(next, 0).map(|d| d.format("%d").to_string());
                prop_assert_ne!(day, Some(format!("{excluded_day:02}")));
                // nothing of the parts in between, unless excluded
                for p in &parts {
                    if let Some(other) = p.own_next(t) {
                        prop_assert!(other >= next || s.excluded(other));
                    }
                }
                prop_assert_eq!(s.prev_before_secs(next + 1), Some(next));
                t = next;
            }
        }
    }
}

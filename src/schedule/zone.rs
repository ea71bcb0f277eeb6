//! UTC-offset transitions of an IANA zone, as a sorted table the schedule engine can search in
//! a few comparisons. chrono-tz answers "offset at instant"; it does not expose its transition
//! list, so the table is recovered once per zone by sampling and bisection, then cached.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use chrono::{Offset, TimeZone};
use chrono_tz::Tz;

/// The table covers instants from 1900 to 2200; outside it the nearest known offset holds.
const TABLE_START: i64 = -2_208_988_800; // 1900-01-01T00:00:00Z
const TABLE_END: i64 = 7_258_118_400; // 2200-01-01T00:00:00Z
/// Sampling step. Two transitions closer than this would be missed; no zone has any since 1900
/// closer than a few days apart except where they cancel out on the same day.
const STEP: i64 = 12 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// first UTC second with the new offset
    pub at: i64,
    pub before: i32,
    pub after: i32,
}

#[derive(Debug)]
pub struct ZoneTable {
    initial: i32,
    transitions: Vec<Transition>,
}

/// The stretch of time around an instant during which the UTC offset is constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: i32,
    /// the transition that started this segment, if any
    pub start: Option<Transition>,
    /// the transition that ends it, if any
    pub end: Option<Transition>,
}

fn offset_at(tz: &Tz, t: i64) -> i32 {
    match chrono::DateTime::from_timestamp(t, 0) {
        Some(dt) => tz
            .offset_from_utc_datetime(&dt.naive_utc())
            .fix()
            .local_minus_utc(),
        None => 0,
    }
}

impl ZoneTable {
    fn build(tz: &Tz) -> Self {
        let initial = offset_at(tz, TABLE_START);
        let mut transitions = Vec::new();
        let mut prev_t = TABLE_START;
        let mut prev_off = initial;
        let mut t = TABLE_START + STEP;
        while t <= TABLE_END {
            let off = offset_at(tz, t);
            if off != prev_off {
                // bisect for the first second with the new offset
                let (mut lo, mut hi) = (prev_t, t);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if offset_at(tz, mid) == prev_off {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let at_off = offset_at(tz, hi);
                transitions.push(Transition {
                    at: hi,
                    before: prev_off,
                    after: at_off,
                });
                prev_off = at_off;
                // continue scanning from the transition in case another one follows soon
                if at_off != off {
                    prev_t = hi;
                    t = hi + 1;
                    continue;
                }
            }
            prev_t = t;
            t += STEP;
        }
        ZoneTable {
            initial,
            transitions,
        }
    }

    /// The cached table of a zone (built on first use).
    pub fn of(tz: Tz) -> Arc<ZoneTable> {
        static CACHE: OnceLock<RwLock<HashMap<Tz, Arc<ZoneTable>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(table) = cache.read().ok().and_then(|c| c.get(&tz).cloned()) {
            return table;
        }
        let table = Arc::new(ZoneTable::build(&tz));
        if let Ok(mut c) = cache.write() {
            return c.entry(tz).or_insert(table).clone();
        }
        table
    }

    /// The segment containing UTC second `t`.
    pub fn segment(&self, t: i64) -> Segment {
        // index of the first transition strictly after t
        let i = self.transitions.partition_point(|tr| tr.at <= t);
        let start = i.checked_sub(1).map(|j| self.transitions[j]);
        Segment {
            offset: start.map_or(self.initial, |s| s.after),
            start,
            end: self.transitions.get(i).copied(),
        }
    }

    #[cfg(test)]
    pub fn offset(&self, t: i64) -> i32 {
        self.segment(t).offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_york_2024_transitions() {
        let table = ZoneTable::of(chrono_tz::America::New_York);
        // 2024-03-10T07:00:00Z: EST -> EDT; 2024-11-03T06:00:00Z: EDT -> EST
        let spring = 1_710_054_000;
        let fall = 1_730_613_600;
        let seg = table.segment(spring - 1);
        assert_eq!(seg.offset, -5 * 3600);
        assert_eq!(seg.end.map(|e| e.at), Some(spring));
        assert_eq!(table.offset(spring), -4 * 3600);
        assert_eq!(table.segment(fall).start.map(|s| s.at), Some(fall));
        assert_eq!(table.offset(fall), -5 * 3600);
    }

    #[test]
    fn table_agrees_with_chrono_tz_everywhere_sampled() {
        for tz in [
            chrono_tz::Europe::London,
            chrono_tz::Australia::Sydney,
            chrono_tz::Asia::Kolkata,
            chrono_tz::America::Sao_Paulo,
            chrono_tz::Africa::Casablanca,
        ] {
            let table = ZoneTable::of(tz);
            let mut t = 0;
            while t < 4_102_444_800 {
                assert_eq!(table.offset(t), offset_at(&tz, t), "{tz} at {t}");
                t += 3 * 3600 + 7;
            }
        }
    }
}

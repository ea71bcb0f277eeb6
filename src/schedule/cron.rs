//! Cron expressions: parsing into bit masks, and the search for the next matching wall-clock
//! second. Nothing here knows about time zones; `zone.rs` and `mod.rs` apply the DST rules.

use super::civil::{SECS_PER_DAY, civil_from_days, days_from_civil, days_in_month, weekday};
use super::error::{Field, FieldProblem, ScheduleError};

/// A parsed 5- or 6-field cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronExpr {
    secs: u64,
    mins: u64,
    hours: u32,
    /// bit d set for day-of-month d (1..=31)
    doms: u32,
    dom_last: bool,
    dom_last_weekday: bool,
    /// bit m set for month m (1..=12)
    months: u16,
    /// bit w set for weekday w (0 = Sunday)
    dows: u8,
    /// bit w set: "the last weekday w of the month" (`wL`)
    dow_last: u8,
    /// `dow_nth[w]` has bit k set: "the k-th weekday w of the month" (`w#k`)
    dow_nth: [u8; 7],
    dom_restricted: bool,
    dow_restricted: bool,
    wildcard_job: bool,
    has_seconds: bool,
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl CronExpr {
    /// Parses whitespace-separated fields: 5 (`min hour dom mon dow`) or 6 (with leading seconds).
    pub fn parse(fields: &[&str]) -> Result<Self, ScheduleError> {
        let (sec, rest) = match fields.len() {
            5 => ("0", fields),
            6 => (fields[0], &fields[1..]),
            n => return Err(ScheduleError::FieldCount { count: n }),
        };
        let (min, hour, dom, mon, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);
        let secs = parse_simple(Field::Second, sec)?;
        let mins = parse_simple(Field::Minute, min)?;
        let hours = parse_simple(Field::Hour, hour)? as u32;
        let months = parse_simple(Field::Month, mon)? as u16;
        let day = parse_dom(dom)?;
        let week = parse_dow(dow)?;
        let expr = CronExpr {
            secs,
            mins,
            hours,
            doms: day.mask,
            dom_last: day.last,
            dom_last_weekday: day.last_weekday,
            months,
            dows: week.mask,
            dow_last: week.last,
            dow_nth: week.nth,
            dom_restricted: !starts_unrestricted(dom),
            dow_restricted: !starts_unrestricted(dow),
            wildcard_job: min.starts_with('*') || hour.starts_with('*'),
            has_seconds: fields.len() == 6,
        };
        expr.check_satisfiable(dom)?;
        Ok(expr)
    }

    /// Vixie cron's "wildcard job": the minute or hour field begins with `*`.
    pub fn is_wildcard_job(&self) -> bool {
        self.wildcard_job
    }

    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// Rejects day-of-month lists that no selected month can ever contain (`0 0 30 2 *`).
    fn check_satisfiable(&self, dom_token: &str) -> Result<(), ScheduleError> {
        if self.dow_restricted || !self.dom_restricted || self.dom_last || self.dom_last_weekday {
            return Ok(());
        }
        // Leap year 2000 gives every month its longest length.
        let possible = (1..=12u32)
            .filter(|m| self.months & (1 << m) != 0)
            .any(|m| self.doms & month_days_mask(days_in_month(2000, m)) != 0);
        if possible {
            Ok(())
        } else {
            Err(ScheduleError::Field {
                field: Field::DayOfMonth,
                token: dom_token.to_string(),
                problem: FieldProblem::NeverMatches,
            })
        }
    }

    /// Whether a wall-clock second matches every field.
    pub fn matches_local(&self, local: i64) -> bool {
        let days = local.div_euclid(SECS_PER_DAY);
        let tod = local.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let (h, mi, s) = (tod / 3600, tod / 60 % 60, tod % 60);
        self.months & (1 << m) != 0
            && self.day_mask(y, m) & (1 << d) != 0
            && self.hours & (1 << h) != 0
            && self.mins & (1 << mi) != 0
            && self.secs & (1 << s) != 0
    }

    /// Days of month `m` of year `y` that match, as bit d for day d.
    fn day_mask(&self, y: i64, m: u32) -> u32 {
        let ndays = days_in_month(y, m);
        let valid = month_days_mask(ndays);
        if !self.dom_restricted && !self.dow_restricted {
            return valid;
        }
        let first_wd = weekday(days_from_civil(y, m, 1));
        let mut dom_part = self.doms;
        if self.dom_last {
            dom_part |= 1 << ndays;
        }
        if self.dom_last_weekday {
            let last_wd = (first_wd + ndays - 1) % 7;
            let last_weekday = match last_wd {
                6 => ndays - 1, // Saturday -> Friday
                0 => ndays - 2, // Sunday -> Friday
                _ => ndays,
            };
            dom_part |= 1 << last_weekday;
        }
        let mut dow_part = 0u32;
        for wd in 0..7u32 {
            // first day of the month falling on weekday wd
            let first = 1 + (wd + 7 - first_wd) % 7;
            if self.dows & (1 << wd) != 0 {
                dow_part |= WEEKLY_FROM_DAY_1 << (first - 1);
            }
            let nth = self.dow_nth[wd as usize];
            if nth != 0 {
                for k in 1..=5u32 {
                    let day = first + 7 * (k - 1);
                    if nth & (1 << k) != 0 && day <= ndays {
                        dow_part |= 1 << day;
                    }
                }
            }
            if self.dow_last & (1 << wd) != 0 {
                let last = first + 7 * ((ndays - first) / 7);
                dow_part |= 1 << last;
            }
        }
        let mask = match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom_part | dow_part,
            (true, false) => dom_part,
            _ => dow_part,
        };
        mask & valid
    }

    /// The first wall-clock second `>= from` that matches, searching at most 400 years ahead
    /// (one full Gregorian cycle, after which the calendar repeats).
    pub fn next_local_at_or_after(&self, from: i64) -> Option<i64> {
        let days = from.div_euclid(SECS_PER_DAY);
        let tod = from.rem_euclid(SECS_PER_DAY);
        let (mut y, mut m, mut d) = civil_from_days(days);
        let limit_year = y + 401;
        let mut floor = (tod / 3600, tod / 60 % 60, tod % 60);
        while y <= limit_year {
            if self.months & (1 << m) != 0 {
                let mut mask = self.day_mask(y, m) & (u32::MAX << d);
                while mask != 0 {
                    let day = mask.trailing_zeros();
                    if day != d {
                        floor = (0, 0, 0);
                    }
                    if let Some((h, mi, s)) = self.time_at_or_after(floor) {
                        let date = days_from_civil(y, m, day);
                        return Some(date * SECS_PER_DAY + h * 3600 + mi * 60 + s);
                    }
                    mask &= !(1 << day);
                    d = day + 1;
                    floor = (0, 0, 0);
                }
            }
            // next month
            floor = (0, 0, 0);
            d = 1;
            if m == 12 {
                m = 1;
                y += 1;
            } else {
                m += 1;
            }
        }
        None
    }

    /// The first (hour, minute, second) of a day at or after `floor` that matches.
    fn time_at_or_after(&self, (h, mi, s): (i64, i64, i64)) -> Option<(i64, i64, i64)> {
        let first_sec = i64::from(self.secs.trailing_zeros());
        let first_min = i64::from(self.mins.trailing_zeros());
        if self.hours & (1 << h) != 0 {
            if self.mins & (1 << mi) != 0
                && let Some(sec) = next_bit(self.secs, s)
            {
                return Some((h, mi, sec));
            }
            if let Some(min) = next_bit(self.mins, mi + 1) {
                return Some((h, min, first_sec));
            }
        }
        next_bit(u64::from(self.hours), h + 1).map(|hour| (hour, first_min, first_sec))
    }
}

/// Days 1, 8, 15, 22 and 29 of a month (bit d for day d).
const WEEKLY_FROM_DAY_1: u32 = (1 << 1) | (1 << 8) | (1 << 15) | (1 << 22) | (1 << 29);

fn month_days_mask(ndays: u32) -> u32 {
    (u32::MAX >> (31 - ndays)) & !1
}

/// Lowest set bit at position `>= from`, if any.
fn next_bit(mask: u64, from: i64) -> Option<i64> {
    if from >= 64 {
        return None;
    }
    let rest = mask & (u64::MAX << from);
    (rest != 0).then(|| i64::from(rest.trailing_zeros()))
}

fn starts_unrestricted(field: &str) -> bool {
    field.starts_with('*') || field.starts_with('?')
}

/// Bounds of each field: (min, max).
fn bounds(field: Field) -> (u32, u32) {
    match field {
        Field::Second | Field::Minute => (0, 59),
        Field::Hour => (0, 23),
        Field::DayOfMonth => (1, 31),
        Field::Month => (1, 12),
        Field::DayOfWeek => (0, 7),
    }
}

fn field_err(field: Field, token: &str, problem: FieldProblem) -> ScheduleError {
    ScheduleError::Field {
        field,
        token: token.to_string(),
        problem,
    }
}

/// Parses one value: a number or, in the month and day-of-week fields, a name.
fn parse_value(field: Field, token: &str, item: &str) -> Result<u32, ScheduleError> {
    let (min, max) = bounds(field);
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        let v: u32 = token
            .parse()
            .map_err(|_| field_err(field, item, FieldProblem::OutOfRange { min, max }))?;
        if v < min || v > max {
            return Err(field_err(
                field,
                item,
                FieldProblem::OutOfRange { min, max },
            ));
        }
        return Ok(v);
    }
    let lower = token.to_ascii_lowercase();
    let names: &[&str] = match field {
        Field::Month => &MONTH_NAMES,
        Field::DayOfWeek => &DAY_NAMES,
        _ => &[],
    };
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + if field == Field::Month { 1 } else { 0 });
    }
    let problem = if token.bytes().all(|b| b.is_ascii_alphabetic()) && !token.is_empty() {
        FieldProblem::UnknownName
    } else {
        FieldProblem::Syntax
    };
    Err(field_err(field, item, problem))
}

/// Parses a list of `*`, `a`, `a-b`, with optional `/step`, into a bit mask.
fn parse_simple(field: Field, text: &str) -> Result<u64, ScheduleError> {
    let mut mask = 0u64;
    for item in text.split(',') {
        mask |= parse_range_item(field, item)?;
    }
    Ok(mask)
}

fn parse_range_item(field: Field, item: &str) -> Result<u64, ScheduleError> {
    let (min, max) = bounds(field);
    if item.is_empty() {
        return Err(field_err(field, text_or_empty(item), FieldProblem::Syntax));
    }
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => {
            let step: u32 = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse()
                    .map_err(|_| field_err(field, item, FieldProblem::BadStep))?
            } else {
                return Err(field_err(field, item, FieldProblem::BadStep));
            };
            if step == 0 || step > max.max(1) {
                return Err(field_err(field, item, FieldProblem::BadStep));
            }
            (r, Some(step))
        }
        None => (item, None),
    };
    let (lo, hi) = if range == "*" || (range == "?" && field.is_day()) {
        (min, if field == Field::DayOfWeek { 6 } else { max })
    } else if let Some((a, b)) = range.split_once('-') {
        let lo = parse_value(field, a, item)?;
        let hi = parse_value(field, b, item)?;
        if lo > hi {
            return Err(field_err(field, item, FieldProblem::ReversedRange));
        }
        (lo, hi)
    } else {
        let v = parse_value(field, range, item)?;
        // `a/step` means `a-max/step` (robfig/cron, Quartz)
        (v, if step.is_some() { max } else { v })
    };
    let step = step.unwrap_or(1);
    let mut mask = 0u64;
    let mut v = lo;
    while v <= hi {
        let bit = if field == Field::DayOfWeek && v == 7 {
            0
        } else {
            v
        };
        mask |= 1 << bit;
        v += step;
    }
    Ok(mask)
}

fn text_or_empty(item: &str) -> &str {
    if item.is_empty() { "(empty)" } else { item }
}

struct DomSpec {
    mask: u32,
    last: bool,
    last_weekday: bool,
}

fn parse_dom(text: &str) -> Result<DomSpec, ScheduleError> {
    let mut spec = DomSpec {
        mask: 0,
        last: false,
        last_weekday: false,
    };
    for item in text.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "L" => spec.last = true,
            "LW" | "WL" => spec.last_weekday = true,
            _ => spec.mask |= parse_range_item(Field::DayOfMonth, item)? as u32,
        }
    }
    Ok(spec)
}

struct DowSpec {
    mask: u8,
    last: u8,
    nth: [u8; 7],
}

fn parse_dow(text: &str) -> Result<DowSpec, ScheduleError> {
    let mut spec = DowSpec {
        mask: 0,
        last: 0,
        nth: [0; 7],
    };
    let f = Field::DayOfWeek;
    for item in text.split(',') {
        if let Some((day, k)) = item.split_once('#') {
            let wd = parse_value(f, day, item)? % 7;
            let k: u32 = match k.parse() {
                Ok(k @ 1..=5) => k,
                _ => return Err(field_err(f, item, FieldProblem::BadNth)),
            };
            spec.nth[wd as usize] |= 1 << k;
        } else if item.len() > 1 && (item.ends_with('L') || item.ends_with('l')) {
            let wd = parse_value(f, &item[..item.len() - 1], item)? % 7;
            spec.last |= 1 << wd;
        } else {
            spec.mask |= parse_range_item(f, item)? as u8;
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> CronExpr {
        let fields: Vec<&str> = s.split_whitespace().collect();
        CronExpr::parse(&fields).expect(s)
    }

    fn local(y: i64, m: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        days_from_civil(y, m, d) * SECS_PER_DAY + h * 3600 + mi * 60 + s
    }

    #[test]
    fn steps_ranges_and_names() {
        let e = p("*/15 9-17 * jan-mar mon-fri");
        assert!(e.matches_local(local(2024, 1, 2, 9, 45, 0)));
        assert!(!e.matches_local(local(2024, 1, 6, 9, 45, 0))); // Saturday
        assert!(!e.matches_local(local(2024, 4, 2, 9, 45, 0)));
        assert!(e.is_wildcard_job());
        assert!(!p("30 2 * * *").is_wildcard_job());
        assert!(p("0 * * * *").is_wildcard_job());
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        assert_eq!(p("0 0 * * 0"), p("0 0 * * 7"));
        assert_eq!(p("0 0 * * 0"), p("0 0 * * SUN"));
    }

    #[test]
    fn dom_dow_or_rule() {
        // the 1st and 15th, or any Wednesday
        let e = p("0 0 1,15 * 3");
        assert!(e.matches_local(local(2024, 5, 1, 0, 0, 0)));
        assert!(e.matches_local(local(2024, 5, 8, 0, 0, 0))); // Wednesday
        assert!(!e.matches_local(local(2024, 5, 9, 0, 0, 0)));
    }

    #[test]
    fn last_day_forms() {
        let l = p("0 0 L * *");
        assert!(l.matches_local(local(2024, 2, 29, 0, 0, 0)));
        assert!(!l.matches_local(local(2024, 2, 28, 0, 0, 0)));
        let lw = p("0 0 LW * *");
        assert!(lw.matches_local(local(2024, 3, 29, 0, 0, 0))); // 31st is a Sunday
        let fri_last = p("0 0 * * 5L");
        assert!(fri_last.matches_local(local(2024, 5, 31, 0, 0, 0)));
        assert!(!fri_last.matches_local(local(2024, 5, 24, 0, 0, 0)));
        let third_fri = p("0 0 * * 5#3");
        assert!(third_fri.matches_local(local(2024, 5, 17, 0, 0, 0)));
    }

    #[test]
    fn next_local_searches_forward() {
        let e = p("0 0 29 2 *");
        let next = e.next_local_at_or_after(local(2097, 3, 1, 0, 0, 0));
        assert_eq!(next, Some(local(2104, 2, 29, 0, 0, 0)));
        let e = p("59 23 31 12 *");
        assert_eq!(
            e.next_local_at_or_after(local(2024, 12, 31, 23, 59, 0)),
            Some(local(2024, 12, 31, 23, 59, 0))
        );
    }

    #[test]
    fn impossible_dates_are_rejected() {
        let err = CronExpr::parse(&["0", "0", "30", "2", "*"]).unwrap_err();
        assert!(err.to_string().contains("day-of-month"), "{err}");
        // with a weekday restriction the OR rule makes it satisfiable
        assert!(CronExpr::parse(&["0", "0", "30", "2", "mon"]).is_ok());
    }
}

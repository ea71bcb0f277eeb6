//! Property tests of the schedule engine against independent oracles: a second-by-second scan
//! using chrono-tz directly (no transition table, no search), and plain iteration for plans.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::plan::{BackfillOrder, BackfillPlan, CatchupPolicy, CatchupRequest, catch_up};
use super::zone::ZoneTable;
use super::{Schedule, parse_timezone};

const ZONES: &[&str] = &[
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe", // 30-minute DST shift
    "America/Sao_Paulo",
    "America/Santiago",
    "Pacific/Chatham",
    "Asia/Tehran",
    "Africa/Casablanca",
    "Asia/Kolkata",
    "UTC",
];

fn minute_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (1u32..=30).prop_map(|k| format!("*/{k}")),
        (0u32..60).prop_map(|m| m.to_string()),
        (0u32..60, 0u32..60).prop_map(|(a, b)| format!("{a},{b}")),
        (0u32..30, 30u32..60, 1u32..10).prop_map(|(a, b, k)| format!("{a}-{b}/{k}")),
    ]
}

fn hour_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (1u32..=6).prop_map(|k| format!("*/{k}")),
        (0u32..24).prop_map(|h| h.to_string()),
        (0u32..12, 12u32..24).prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..4, 0u32..24).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

fn day_fields() -> impl Strategy<Value = (String, String, String)> {
    prop_oneof![
        4 => Just(("*".to_string(), "*".to_string(), "*".to_string())),
        1 => (1u32..=31).prop_map(|d| (format!("{d}"), "*".to_string(), "*".to_string())),
        1 => (0u32..7).prop_map(|w| ("*".to_string(), "*".to_string(), format!("{w}"))),
        1 => (1u32..=28, 0u32..7).prop_map(|(d, w)| (format!("{d}"), "*".to_string(), format!("{w}"))),
        1 => Just(("L".to_string(), "*".to_string(), "*".to_string())),
        1 => (0u32..7).prop_map(|w| ("?".to_string(), "*".to_string(), format!("{w}L"))),
        1 => (0u32..7, 1u32..=5).prop_map(|(w, k)| ("*".to_string(), "*".to_string(), format!("{w}#{k}"))),
    ]
}

/// 5-field expressions, plus 6-field ones with a seconds field.
fn expression() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop_oneof![
            Just("0".to_string()),
            Just("*/20".to_string()),
            Just("15,45".to_string())
        ]),
        minute_field(),
        hour_field(),
        day_fields(),
    )
        .prop_map(|(sec, min, hour, (dom, mon, dow))| {
            let base = format!("{min} {hour} {dom} {mon} {dow}");
            match sec {
                Some(s) => format!("{s} {base}"),
                None => base,
            }
        })
}

/// An instant near a DST transition of the zone (or a plain instant for zones without one).
fn instant_in(zone: Tz, pick: usize, jitter: i64) -> i64 {
    let table = ZoneTable::of(zone);
    // transitions between 2000 and 2040
    let mut t = 946_684_800;
    let mut near = Vec::new();
    while t < 2_208_988_800 && near.len() < 200 {
        match table.segment(t).end {
            Some(e) if e.at < 2_208_988_800 => {
                near.push(e.at);
                t = e.at;
            }
            _ => break,
        }
    }
    match near.get(pick % near.len().max(1)) {
        Some(at) => at + jitter,
        None => 1_700_000_000 + jitter * 97,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn next_is_the_least_tick_after(
        expr in expression(),
        zone in prop::sample::select(ZONES),
        pick in 0usize..200,
        jitter in -4 * 3600i64..4 * 3600,
    ) {
        let tz = parse_timezone(zone).unwrap();
        let schedule = Schedule::parse(&expr, tz, None).unwrap();
        let after = instant_in(tz, pick, jitter);
        let window = 6 * 3600;
        let mut expected = Vec::new();
        for t in after + 1..=after + window {
            if schedule.is_tick_brute_force(t) {
                expected.push(t);
            }
        }
        let mut got = Vec::new();
        let mut cursor = after;
        while let Some(t) = schedule.next_after_secs(cursor) {
            prop_assert!(t > cursor, "ticks must strictly increase: {t} after {cursor}");
            if t > after + window {
                break;
            }
            got.push(t);
            cursor = t;
        }
        prop_assert_eq!(got, expected, "{} in {} after {}", expr, zone, after);
    }

    #[test]
    fn prev_before_inverts_next_after(
        expr in expression(),
        zone in prop::sample::select(ZONES),
        pick in 0usize..200,
        jitter in -4 * 3600i64..4 * 3600,
    ) {
        let tz = parse_timezone(zone).unwrap();
        let schedule = Schedule::parse(&expr, tz, None).unwrap();
        let t = instant_in(tz, pick, jitter);
        if let Some(prev) = schedule.prev_before_secs(t) {
            prop_assert!(prev < t);
            let next = schedule.next_after_secs(prev);
            prop_assert!(next.is_some_and(|n| n >= t), "a tick between {prev} and {t}");
        }
    }

    #[test]
    fn catch_up_is_bounded_and_keeps_the_latest_due_tick(
        expr in expression(),
        zone in prop::sample::select(ZONES),
        downtime in 0i64..3 * 86_400,
        keep in 0u32..60,
        catchup in any::<bool>(),
    ) {
        let tz = parse_timezone(zone).unwrap();
        let schedule = Schedule::parse(&expr, tz, None).unwrap();
        let now = DateTime::from_timestamp(1_710_000_000 + downtime, 0).unwrap();
        let after = DateTime::from_timestamp(1_710_000_000, 0).unwrap();
        let policy = CatchupPolicy::from_spec(catchup, keep);
        let plan = catch_up(&schedule, &CatchupRequest {
            after: Some(after),
            not_before: DateTime::<Utc>::UNIX_EPOCH,
            not_after: None,
            now,
            policy,
        });
        let bound = if catchup { keep as usize } else { 1 };
        prop_assert!(plan.due.len() <= bound);
        let all: Vec<_> = schedule.ticks_after(after).take_while(|t| *t <= now).collect();
        prop_assert_eq!(plan.due.len() as u64 + plan.missed, all.len() as u64);
        if bound > 0 {
            prop_assert_eq!(plan.due.last(), all.last());
        }
        prop_assert!(plan.due.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn backfill_plan_equals_the_ticks_in_range(
        expr in expression(),
        zone in prop::sample::select(ZONES),
        start in 1_700_000_000i64..1_720_000_000,
        len in 0i64..20 * 86_400,
    ) {
        let tz = parse_timezone(zone).unwrap();
        let schedule = Schedule::parse(&expr, tz, None).unwrap();
        let s = DateTime::from_timestamp(start, 0).unwrap();
        let e = DateTime::from_timestamp(start + len, 0).unwrap();
        let expected: Vec<_> = schedule
            .ticks_after(DateTime::from_timestamp(start - 1, 0).unwrap())
            .take_while(|t| *t < e)
            .collect();
        let oldest = BackfillPlan::new(&schedule, s, e, BackfillOrder::OldestFirst);
        prop_assert_eq!(oldest.count(), expected.len() as u64);
        prop_assert_eq!(oldest.iter().collect::<Vec<_>>(), expected.clone());
        let newest = BackfillPlan::new(&schedule, s, e, BackfillOrder::NewestFirst);
        let mut reversed = expected;
        reversed.reverse();
        prop_assert_eq!(newest.iter().collect::<Vec<_>>(), reversed);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,60}") {
        let _ = Schedule::parse(&text, Tz::UTC, None);
    }

    #[test]
    fn parser_never_panics_on_cron_like_text(
        fields in prop::collection::vec("[0-9*/,LW#?a-zA-Z@-]{0,8}", 0..8),
        zone in prop::option::of("[A-Za-z_/]{0,20}"),
    ) {
        let mut text = fields.join(" ");
        if let Some(z) = zone {
            text = format!("CRON_TZ={z} {text}");
        }
        if let Ok(s) = Schedule::parse(&text, Tz::UTC, None) {
            // whatever parses must also evaluate without panicking
            let _ = s.next_after(DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        }
    }
}

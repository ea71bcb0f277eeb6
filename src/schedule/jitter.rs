//! Jitter (issue 18): a scheduled run starts a little after its tick so that many DAGs on the
//! same schedule do not all start at once. The delay is random-looking but a pure function of
//! the DAG and the logical date — every replica and every restart computes the same one — and
//! below the jitter. The logical date and the data interval do not move.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::Digest;

/// The delay of the run of `dag` (`namespace/name`) for `logical_date`: in `[0, jitter)`,
/// in whole milliseconds.
pub fn jitter_delay(dag: &str, logical_date: DateTime<Utc>, jitter: Duration) -> Duration {
    let span = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    let digest = sha2::Sha256::digest(format!("{dag}@{}", logical_date.to_rfc3339()).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_be_bytes(first) % span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Below the jitter, and the same every time it is asked.
        #[test]
        fn below_the_jitter_and_deterministic(
            secs in 1u64..86_400,
            date in 0i64..4_000_000_000,
            name in "[a-z]{1,12}/[a-z]{1,12}",
        ) {
            let jitter = Duration::from_secs(secs);
            let t = DateTime::from_timestamp(date, 0).expect("in range");
            let d = jitter_delay(&name, t, jitter);
            prop_assert!(d < jitter);
            prop_assert_eq!(d, jitter_delay(&name, t, jitter));
        }
    }

    #[test]
    fn delays_spread_over_the_window() {
        let jitter = Duration::from_secs(60);
        let t: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().expect("date");
        let delays: Vec<Duration> = (0..200)
            .map(|i| jitter_delay(&format!("ns/dag-{i}"), t, jitter))
            .collect();
        // 200 DAGs on one tick: spread over the minute, not bunched at its start
        let early = delays.iter().filter(|d| d.as_secs() < 30).count();
        assert!(
            (60..140).contains(&early),
            "{early} of 200 in the first half"
        );
        assert_eq!(jitter_delay("ns/a", t, Duration::ZERO), Duration::ZERO);
    }
}

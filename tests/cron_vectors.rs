//! Every vector of ../shared/testdata/cron-vectors.jsonl (an independent implementation's
//! answers) through `schedule::next_ticks`, the function behind `dag-operator schedule next`.

use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use dag_operator::schedule::next_ticks;

#[derive(serde::Deserialize)]
struct Vector {
    expr: String,
    timezone: String,
    after: DateTime<Utc>,
    next: Vec<String>,
}

fn vectors_path() -> PathBuf {
    match std::env::var_os("DAGOP_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
    .join("testdata/cron-vectors.jsonl")
}

#[test]
fn every_cron_vector_matches() {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut failures = Vec::new();
    let mut count = 0;
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Vector = serde_json::from_str(line).expect("vector line is JSON");
        count += 1;
        let got = match next_ticks(&v.expr, &v.timezone, None, v.after, v.next.len()) {
            Ok(ticks) => ticks
                .iter()
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .collect(),
            Err(e) => vec![format!("error: {e}")],
        };
        if got != v.next {
            failures.push(format!(
                "line {}: {:?} in {} after {}: expected {:?}, got {:?}",
                line_no + 1,
                v.expr,
                v.timezone,
                v.after,
                v.next,
                got
            ));
        }
    }
    assert_eq!(count, 1350, "expected all 1,350 vectors");
    assert!(
        failures.is_empty(),
        "{} of {count} vectors failed:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

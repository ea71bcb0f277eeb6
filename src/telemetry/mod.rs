//! Observability (SPEC §9): logging setup, the Prometheus registry, readiness, and the HTTP
//! endpoint on `--metrics-addr`. Metric families and endpoints are documented in
//! docs/METRICS.md.
//!
//! Wiring, in `run`: `init_tracing(json)` first; one `Arc<Metrics>` and one `Arc<Health>`
//! handed to the engine, gate, store and controllers; `serve(addr, metrics, health, access,
//! shutdown)` before leader election so that probes answer while the replica starts (`access`:
//! who may read `/metrics` with `--metrics-auth`, see [`MetricsAccess`]).

mod access;
mod health;
mod http;
mod metrics;

pub use access::{MetricsAccess, Verdict};
pub use health::{Health, Role};
pub use http::{resolve_addr, serve};
pub use metrics::{
    CONTENT_TYPE, Component, ControllerKind, Metrics, PREFIX, PassKind, RECONCILE_ERRORS,
};

use tracing_subscriber::EnvFilter;

/// Level filter used when `RUST_LOG` is unset or invalid.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Installs the global `tracing` subscriber: filter from `RUST_LOG` (default `info`), one line
/// per event on stderr, as text or, with `json`, as JSON objects (event fields at the top
/// level, plus `timestamp`, `level`, `target` and the current span).
///
/// Only the first call installs anything; later calls (and calls after another subscriber
/// was set) are ignored.
pub fn init_tracing(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    // Err means a global subscriber already exists: keep it.
    drop(installed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_tracing_twice_is_harmless() {
        init_tracing(true);
        init_tracing(false);
        tracing::debug!("still logging after a second init");
    }
}

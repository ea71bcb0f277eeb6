//! The `dag-operator` binary: parse the command line, then hand over to `cli`.

mod cli;

use clap::Parser;

/// jemalloc returns freed memory to the OS far better than glibc malloc under the operator's
/// pattern (large watch lists decoded at start, then small steady churn).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): a background thread purges freed pages on schedule even while the operator
/// idles (without it, purging waits for allocations), freed pages go back to the OS after 1 s
/// and at once from the "muzzy" state (MADV_FREE pages still count in RSS), and two arenas
/// suit a process of a few threads. docs/BENCHMARKS.md, "Memory while watching 10,000 DAGs".
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"background_thread:true,narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::dispatch(cli) {
        eprintln!("error: {}", e.message.replace('\n', " "));
        std::process::exit(e.code);
    }
}

//! The `dag-operator` binary: parse the command line, then hand over to `cli`.

mod cli;

use clap::Parser;

/// jemalloc returns freed memory to the OS far better than glibc malloc under the operator's
/// pattern (large watch lists decoded at start, then small steady churn).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::dispatch(cli) {
        eprintln!("error: {}", e.message.replace('\n', " "));
        std::process::exit(e.code);
    }
}

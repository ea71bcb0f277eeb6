//! The `dag-operator` binary: parse the command line, then hand over to `cli`.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::dispatch(cli) {
        eprintln!("error: {}", e.message.replace('\n', " "));
        std::process::exit(e.code);
    }
}

//! `warren`: the producer CLI. Enqueueing, batches and result collection arrive with the queue
//! worker; for now it describes itself.

use clap::Parser;

/// Enqueue sandboxed WebAssembly tasks for warren workers and collect their results.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("warren: no commands yet; run a module locally with `warren-worker exec`");
}

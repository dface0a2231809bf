//! `echo`: copies stdin to stdout unchanged.
//!
//! The trivial module the benchmarks use to measure the worker's own per-task
//! overhead, so it does nothing beyond one read of all input and one write.
//! With no input it writes nothing and exits 0.

use std::io::{self, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut data = Vec::new();
    let copied = io::stdin()
        .read_to_end(&mut data)
        .and_then(|_| io::stdout().write_all(&data));
    match copied {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo: {err}");
            ExitCode::FAILURE
        }
    }
}

//! `sleep`: sleeps for argv[1] milliseconds, then copies stdin to stdout.
//!
//! A task that is busy for a known time without using CPU (the sleep is a WASI
//! `poll_oneoff` clock subscription), for tests of draining and shutdown.
//! A missing or non-numeric argument is reported on stderr with exit code 2.

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

fn main() -> ExitCode {
    let arg = std::env::args_os().nth(1);
    let Some(millis) = arg
        .as_deref()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<u64>().ok())
    else {
        eprintln!("sleep: usage: sleep <milliseconds>, got {arg:?}");
        return ExitCode::from(2);
    };
    thread::sleep(Duration::from_millis(millis));
    let copied = io::copy(&mut io::stdin().lock(), &mut io::stdout().lock())
        .and_then(|_| io::stdout().flush());
    match copied {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sleep: {err}");
            ExitCode::FAILURE
        }
    }
}

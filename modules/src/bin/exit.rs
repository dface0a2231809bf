//! `exit`: exits with the status given as its first argument, writing nothing.
//!
//! Lets tests check that a guest's exit code reaches the task result exactly.
//! `exit 3` exits 3; no argument exits 0; an argument that is not a decimal
//! number in 0..=255 is reported on stderr with exit code 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(arg) = std::env::args_os().nth(1) else {
        return ExitCode::SUCCESS;
    };
    match arg.to_str().and_then(|s| s.parse::<u8>().ok()) {
        Some(code) => ExitCode::from(code),
        None => {
            eprintln!("exit: expected an exit code in 0..=255, got {arg:?}");
            ExitCode::from(2)
        }
    }
}

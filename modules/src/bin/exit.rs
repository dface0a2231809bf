//! `exit`: exits with the status given as its first argument, writing nothing.
//!
//! Lets tests check that a guest's exit code reaches the task result exactly. Built as a
//! component (`exit-c`) it exits through `wasi:cli/exit`'s `exit-with-code`: Rust's standard
//! library on `wasm32-wasip2` reports every non-zero status as 1 (`exit(err)`).
//! `exit 3` exits 3; no argument exits 0; an argument that is not a decimal
//! number in 0..=255 is reported on stderr with exit code 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(arg) = std::env::args_os().nth(1) else {
        return ExitCode::SUCCESS;
    };
    match arg.to_str().and_then(|s| s.parse::<u8>().ok()) {
        Some(code) => exit_with(code),
        None => {
            eprintln!("exit: expected an exit code in 0..=255, got {arg:?}");
            ExitCode::from(2)
        }
    }
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn exit_with(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn exit_with(code: u8) -> ExitCode {
    use std::io::Write;
    // Nothing buffered may be lost: `exit-with-code` ends the program where it stands.
    let _ = std::io::stdout().flush();
    wasip2::cli::exit::exit_with_code(code);
    unreachable!("exit-with-code returned")
}

//! `sha256`: prints the lowercase hex SHA-256 of stdin, then `\n`.
//!
//! A CPU-bound module with a known answer: handy for checking that large
//! inputs arrive intact and for measuring compute speed inside the sandbox.

use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut hasher = Sha256::new();
    let result = io::copy(&mut io::stdin().lock(), &mut hasher)
        .and_then(|_| writeln!(io::stdout(), "{:x}", hasher.finalize()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sha256: {err}");
            ExitCode::FAILURE
        }
    }
}

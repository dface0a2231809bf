//! `upper`: copies stdin to stdout with ASCII letters uppercased.
//!
//! A streaming byte filter: bytes outside ASCII (including UTF-8 sequences)
//! pass through unchanged, so any input is valid.

use std::io::{self, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("upper: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> io::Result<()> {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let chunk = &mut buf[..n];
        chunk.make_ascii_uppercase();
        output.write_all(chunk)?;
    }
    output.flush()
}

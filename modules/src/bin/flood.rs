//! `flood`: writes `y\n` forever, for tests of the output caps.
//!
//! Writes to stdout (or to stderr with argv[1] == `stderr`) in 64 KiB chunks
//! until a write fails, which it treats as the end (exit 1). The worker ends
//! a task whose stdout passes the cap as "output limit exceeded" and
//! truncates stderr at its cap, so a stderr flood runs until its deadline.

use std::io::{self, Write};
use std::process::ExitCode;

const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let chunk = b"y\n".repeat(CHUNK / 2);
    let to_stderr = std::env::args().nth(1).as_deref() == Some("stderr");
    let mut sink: Box<dyn Write> = if to_stderr {
        Box::new(io::stderr().lock())
    } else {
        Box::new(io::stdout().lock())
    };
    loop {
        if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
}

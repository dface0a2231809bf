//! `wc`: prints `<lines> <words> <bytes>\n` for stdin.
//!
//! lines = number of `\n` bytes, words = maximal runs of non-whitespace bytes,
//! bytes = input length. Whitespace is C's `isspace` set (space, `\t`, `\n`,
//! `\v`, `\f`, `\r`). Unlike coreutils `wc` the numbers are not padded, so
//! callers can parse the line without trimming.

use std::io::{self, Read, Write};
use std::process::ExitCode;

#[derive(Default)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
    in_word: bool,
}

impl Counts {
    fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        for &b in chunk {
            if b == b'\n' {
                self.lines += 1;
            }
            let space = matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
            if !space && !self.in_word {
                self.words += 1;
            }
            self.in_word = !space;
        }
    }
}

fn main() -> ExitCode {
    let result =
        count().and_then(|c| writeln!(io::stdout(), "{} {} {}", c.lines, c.words, c.bytes));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wc: {err}");
            ExitCode::FAILURE
        }
    }
}

fn count() -> io::Result<Counts> {
    let mut input = io::stdin().lock();
    let mut counts = Counts::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(counts),
            Ok(n) => counts.feed(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

//! `trap`: always traps, for tests of how guest crashes are reported.
//!
//! * no argument: `panic!` — with `panic = "abort"` the message goes to stderr
//!   and the abort executes `unreachable`, so the task ends in a trap.
//! * `unreachable`: executes the wasm `unreachable` instruction directly,
//!   without any message.
//! * `divzero`: executes a wasm integer division by a zero read through
//!   `black_box`, so the engine raises its "integer divide by zero" trap.
//!
//! Any other argument is reported on stderr with exit code 2.

use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => panic!("boom: this module always traps"),
        Some("unreachable") => core::arch::wasm32::unreachable(),
        Some("divzero") => {
            let divisor = black_box(0u32);
            // SAFETY: deliberately not sound; this module exists to trap. Rust's
            // own `/` would check for zero and panic (an `unreachable` trap like
            // the no-argument case); promising the divisor is non-zero makes
            // LLVM emit a bare `i32.div_u`, which wasm defines to trap on zero.
            // The divisor is opaque (black_box), so nothing can be folded away.
            unsafe { std::hint::assert_unchecked(divisor != 0) };
            let quotient = black_box(1u32) / divisor;
            black_box(quotient);
            eprintln!("trap: division by zero did not trap");
            ExitCode::FAILURE
        }
        Some(other) => {
            eprintln!(
                "trap: unknown mode {other:?} (expected none, \"unreachable\" or \"divzero\")"
            );
            ExitCode::from(2)
        }
    }
}

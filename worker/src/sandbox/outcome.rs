//! Turning how a guest's run ended into an [`Outcome`] — the one place that reads wasmtime's
//! errors, so guest behaviour becomes data before it leaves the sandbox.

use warren_schemas::Outcome;
use wasmtime::Trap;

use super::output::OutputLimitExceeded;
use super::wasi::{GuestExit, WallClockExceeded};
use super::Limits;

/// Classifies the end of a run. `memory_limit_hit` says whether the limiter refused a growth,
/// which explains the abort most guests perform when allocation fails.
pub fn classify(
    ended: wasmtime::Result<()>,
    memory_limit_hit: bool,
    limits: &Limits,
) -> (Outcome, Option<i32>) {
    let error = match ended {
        Ok(()) => return (Outcome::Success, Some(0)),
        Err(error) => error,
    };
    if let Some(GuestExit(code)) = error.downcast_ref::<GuestExit>() {
        return match *code {
            0 => (Outcome::Success, Some(0)),
            code => (Outcome::NonZeroExit { code }, Some(code)),
        };
    }
    let timeout = Outcome::Timeout {
        limit_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
    };
    if error.downcast_ref::<WallClockExceeded>().is_some() {
        return (timeout, None);
    }
    if let Some(exceeded) = error.downcast_ref::<OutputLimitExceeded>() {
        return (
            Outcome::OutputLimitExceeded {
                limit_bytes: exceeded.limit,
            },
            None,
        );
    }
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return (timeout, None);
    }
    if memory_limit_hit {
        return (
            Outcome::MemoryLimitExceeded {
                limit_bytes: limits.max_memory,
            },
            None,
        );
    }
    let message = match trap {
        Some(Trap::StackOverflow) => "stack overflow: call stack exhausted".to_owned(),
        Some(trap) => trap.to_string(),
        // Not a wasm trap: a host error or an instantiation failure. Keep the whole chain.
        None => format!("{error:#}"),
    };
    (Outcome::Trap { message }, None)
}

//! Turning how a guest's run ended into an [`Outcome`] — the one place that reads wasmtime's
//! errors, so guest behaviour becomes data before it leaves the sandbox.

use warren_schemas::Outcome;
use wasmtime::Trap;

use super::output::OutputLimitExceeded;
use super::wasi::{GuestExit, WallClockExceeded};
use super::Limits;

/// Classifies the end of a run. `memory_limit_hit` says whether the limiter refused a growth,
/// which explains the abort most guests perform when allocation fails, and a non-zero exit
/// that follows it.
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
            // A guest that reports a refused growth and gives up (Python's MemoryError, a C
            // program checking malloc) failed because of the limit; its exit code is kept.
            code if memory_limit_hit => (
                Outcome::MemoryLimitExceeded {
                    limit_bytes: limits.max_memory,
                },
                Some(code),
            ),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(1),
        max_memory: 64 << 20,
        max_output: 1 << 20,
    };

    fn exit(code: i32, memory_limit_hit: bool) -> (Outcome, Option<i32>) {
        classify(Err(GuestExit(code).into()), memory_limit_hit, &LIMITS)
    }

    #[test]
    fn an_exit_is_the_guests_answer_unless_it_follows_a_refused_growth() {
        assert_eq!(exit(3, false), (Outcome::NonZeroExit { code: 3 }, Some(3)));
        let limit = Outcome::MemoryLimitExceeded {
            limit_bytes: 64 << 20,
        };
        assert_eq!(exit(1, true), (limit, Some(1)));
        // A guest that recovered from the refusal and succeeded did succeed.
        assert_eq!(exit(0, true), (Outcome::Success, Some(0)));
    }
}

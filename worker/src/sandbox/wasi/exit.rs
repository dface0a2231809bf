//! Ending the process: `proc_exit`, and `proc_raise`, which a sandboxed command cannot use.
//!
//! Every exit status is reported as it is: a non-zero exit is a result in warren's contract,
//! not a crash (wasmtime-wasi's own `proc_exit` turns statuses of 126 and above into a trap).
//! `proc_raise` is `ENOTSUP`, as in wasmtime-wasi; guests' `abort` traps instead.

use wasmtime::Linker;

use super::errno::NOTSUP;
use super::{SandboxState, WASI};

/// The guest called `proc_exit` with this status; it unwinds the guest like a trap and is
/// classified as the task's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest exited with status {0}")]
pub struct GuestExit(pub i32);

/// Defines `proc_exit` and `proc_raise`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "proc_exit", |status: u32| -> wasmtime::Result<()> {
        Err(GuestExit(status as i32).into())
    })?;
    linker.func_wrap(WASI, "proc_raise", |_signal: u32| NOTSUP)?;
    Ok(())
}

//! `proc_exit` that reports every exit status as it is.
//!
//! wasmtime-wasi's `proc_exit` turns statuses of 126 and above into a trap ("invalid exit
//! status"), so a guest that exits 255 would look like a crash. warren's contract is that a
//! non-zero exit is a result: every status becomes `I32Exit(status)`.

use wasmtime::{Caller, Linker};
use wasmtime_wasi::I32Exit;

use super::state::SandboxState;

/// Replaces wasmtime-wasi's `proc_exit` in `linker`.
pub fn shadow_proc_exit(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |_: Caller<'_, SandboxState>, status: u32| -> wasmtime::Result<()> {
            Err(I32Exit(status as i32).into())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

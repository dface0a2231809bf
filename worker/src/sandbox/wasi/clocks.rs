//! The guest's clocks: realtime (the host's wall clock) and monotonic (nanoseconds since the
//! task's store was created, so that [`super::poll`] can place absolute monotonic deadlines).
//! CPU-time clocks are not offered (`EBADF`, as wasmtime-wasi answers); an unknown clock id is
//! `EINVAL`.
//!
//! ABI: `clock_res_get(id, out u64)`, `clock_time_get(id, precision u64, out u64)`; ids are
//! 0 realtime, 1 monotonic, 2 process CPU time, 3 thread CPU time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::errno::{BADF, INVAL};
use super::{store, with_memory, SandboxState, WASI};

pub const REALTIME: u32 = 0;
pub const MONOTONIC: u32 = 1;
const PROCESS_CPUTIME: u32 = 2;
const THREAD_CPUTIME: u32 = 3;

/// Both clocks count in nanoseconds.
const RESOLUTION_NS: u64 = 1;

/// Defines `clock_res_get` and `clock_time_get`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut caller: Caller<'_, SandboxState>, id: u32, out: u32| {
            answer(&mut caller, id, out, |_| RESOLUTION_NS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Caller<'_, SandboxState>, id: u32, _precision: u64, out: u32| {
            answer(&mut caller, id, out, |origin| now(id, origin))
        },
    )?;
    Ok(())
}

/// Nanoseconds on clock `id` (realtime or monotonic) now.
pub fn now(id: u32, origin: Instant) -> u64 {
    let nanos = match id {
        REALTIME => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        _ => origin.elapsed().as_nanos(),
    };
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

fn answer(
    caller: &mut Caller<'_, SandboxState>,
    id: u32,
    out: u32,
    value: impl FnOnce(Instant) -> u64,
) -> wasmtime::Result<i32> {
    match id {
        REALTIME | MONOTONIC => with_memory(caller, |memory, state| {
            Ok(store(memory, out, &value(state.clock_origin).to_le_bytes()))
        }),
        PROCESS_CPUTIME | THREAD_CPUTIME => Ok(BADF),
        _ => Ok(INVAL),
    }
}

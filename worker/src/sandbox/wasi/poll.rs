//! `poll_oneoff`, the one WASI call that can block, bounded by the task's wall-clock deadline;
//! and `sched_yield`.
//!
//! A sleeping guest is not running wasm, so the epoch deadline cannot interrupt it: left
//! alone, `sleep(1 day)` would hold a lane (and its pool slot) for a day. A sandboxed command's
//! only descriptors are its in-memory standard streams, which are always ready, so a complete
//! `poll_oneoff` is small: fd subscriptions on an open stream are ready at once (others report
//! `EBADF`), clock subscriptions sleep — but never past the task's deadline, where the guest is
//! stopped with [`WallClockExceeded`] and the task ends as a timeout. `sched_yield` returns at
//! once: a lane runs one guest, there is nobody in the sandbox to yield to.
//!
//! ABI (wasi_snapshot_preview1): `subscription` is 48 bytes: userdata u64 @0, tag u8 @8, then
//! clock {id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40} or fd {fd u32 @16}.
//! `event` is 32 bytes: userdata u64 @0, errno u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker};

use super::clocks::REALTIME as CLOCKID_REALTIME;
use super::errno::{FAULT as ERRNO_FAULT, INVAL as ERRNO_INVAL, SUCCESS as ERRNO_SUCCESS};
use super::{span, store, SandboxState, WASI};

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const ERRNO_BADF: u16 = super::errno::BADF as u16;

/// Defines the deadline-bounded `poll_oneoff`, and `sched_yield`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "poll_oneoff", poll_oneoff)?;
    linker.func_wrap(WASI, "sched_yield", || ERRNO_SUCCESS)?;
    Ok(())
}

enum Wake {
    /// An fd subscription: ready now.
    Fd { userdata: u64, kind: u8, fd: u32 },
    /// A clock subscription, due at this instant.
    Clock { userdata: u64, due: Instant },
}

fn poll_oneoff(
    mut caller: Caller<'_, SandboxState>,
    subscriptions: u32,
    events: u32,
    count: u32,
    nevents_out: u32,
) -> wasmtime::Result<i32> {
    if count == 0 {
        return Ok(ERRNO_INVAL);
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(ERRNO_FAULT);
    };
    let now = Instant::now();
    let origin = caller.data().clock_origin;
    let wakes = {
        let data = memory.data(&caller);
        let Some(bytes) = span(
            data.len(),
            subscriptions,
            count as usize * SUBSCRIPTION_SIZE,
        )
        .map(|range| &data[range]) else {
            return Ok(ERRNO_FAULT);
        };
        match bytes
            .chunks_exact(SUBSCRIPTION_SIZE)
            .map(|s| parse(s, now, origin))
            .collect::<Option<Vec<_>>>()
        {
            Some(wakes) => wakes,
            None => return Ok(ERRNO_INVAL),
        }
    };

    let any_fd = wakes.iter().any(|w| matches!(w, Wake::Fd { .. }));
    let earliest = wakes
        .iter()
        .filter_map(|w| match w {
            Wake::Clock { due, .. } => Some(*due),
            Wake::Fd { .. } => None,
        })
        .min();
    let wake_at = match (any_fd, earliest) {
        (true, _) | (false, None) => now,
        (false, Some(due)) => due,
    };
    let deadline = caller.data().deadline;
    if wake_at > deadline {
        std::thread::sleep(deadline.saturating_duration_since(now));
        return Err(WallClockExceeded(deadline.saturating_duration_since(origin)).into());
    }
    std::thread::sleep(wake_at.saturating_duration_since(Instant::now()));

    let woke = Instant::now();
    let stdio = &caller.data().stdio;
    let mut out = Vec::with_capacity(wakes.len() * EVENT_SIZE);
    for wake in &wakes {
        let mut event = [0u8; EVENT_SIZE];
        match *wake {
            Wake::Fd { userdata, kind, fd } => {
                event[0..8].copy_from_slice(&userdata.to_le_bytes());
                if !stdio.is_open(fd) {
                    event[8..10].copy_from_slice(&ERRNO_BADF.to_le_bytes());
                }
                event[10] = kind;
            }
            Wake::Clock { userdata, due } if due <= woke => {
                event[0..8].copy_from_slice(&userdata.to_le_bytes());
                event[10] = EVENTTYPE_CLOCK;
            }
            Wake::Clock { .. } => continue,
        }
        out.extend_from_slice(&event);
    }
    let written = (out.len() / EVENT_SIZE) as u32;
    let data = memory.data_mut(&mut caller);
    if span(data.len(), nevents_out, 4).is_none() {
        return Ok(ERRNO_FAULT);
    }
    match store(data, events, &out) {
        ERRNO_SUCCESS => Ok(store(data, nevents_out, &written.to_le_bytes())),
        fault => Ok(fault),
    }
}

fn parse(sub: &[u8], now: Instant, origin: Instant) -> Option<Wake> {
    let userdata = u64::from_le_bytes(sub[0..8].try_into().ok()?);
    match sub[8] {
        EVENTTYPE_CLOCK => {
            let clock = u32::from_le_bytes(sub[16..20].try_into().ok()?);
            let timeout = u64::from_le_bytes(sub[24..32].try_into().ok()?);
            let flags = u16::from_le_bytes(sub[40..42].try_into().ok()?);
            let due = if flags & SUBCLOCKFLAGS_ABSTIME == 0 {
                now.checked_add(Duration::from_nanos(timeout))
            } else if clock == CLOCKID_REALTIME {
                let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
                let wait = Duration::from_nanos(timeout).saturating_sub(since_epoch);
                now.checked_add(wait)
            } else {
                origin.checked_add(Duration::from_nanos(timeout))
            };
            // A due time past the end of representable time is "never": treat as far future.
            let due = due.unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 100));
            Some(Wake::Clock { userdata, due })
        }
        kind @ (EVENTTYPE_FD_READ | EVENTTYPE_FD_WRITE) => {
            let fd = u32::from_le_bytes(sub[16..20].try_into().ok()?);
            Some(Wake::Fd { userdata, kind, fd })
        }
        _ => None,
    }
}

/// The wall-clock guard fired: a blocking host call (a sleep) outlived the task's deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("task deadline of {0:?} reached while the guest was blocked in a host call")]
pub struct WallClockExceeded(pub Duration);

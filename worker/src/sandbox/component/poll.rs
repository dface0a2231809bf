//! Waiting, bounded by the task's deadline: `wasi:io/poll`'s `poll` and `pollable.block`.
//!
//! A sleeping guest runs no wasm, so the epoch deadline cannot stop it; left alone,
//! `sleep(1 day)` would hold a lane for a day. These two are the only calls through which a
//! component waits (its streams are in memory and always ready, it has no sockets), so they
//! replace wasmtime-wasi's: the same wait, given up at the task's deadline with
//! [`WallClockExceeded`], which ends the task as a timeout as for modules.

use std::future::Future;
use std::time::Instant;

use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host, HostPollable};

use super::ComponentState;
use crate::sandbox::WallClockExceeded;

/// The `wasi:io/poll` instance wasmtime-wasi defines; older guest versions resolve to it.
const POLL: &str = "wasi:io/poll@0.2.12";

/// Replaces `poll` and `[method]pollable.block` of the WASI already in `linker`.
pub fn bound_waits(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, ComponentState>,
         (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let ready = until(state.deadline, Host::poll(&mut state.table, pollables))
                .map_err(|_| WallClockExceeded(state.timeout))??;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, ComponentState>, (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            until(
                state.deadline,
                HostPollable::block(&mut state.table, pollable),
            )
            .map_err(|_| WallClockExceeded(state.timeout))??;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs `wait` to completion on wasmtime-wasi's runtime, or gives up at `deadline`.
fn until<F: Future>(deadline: Instant, wait: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    wasmtime_wasi::runtime::in_tokio(async { tokio::time::timeout_at(deadline.into(), wait).await })
}

//! WASI preview 1 for a sandboxed command, implemented by warren.
//!
//! What a task's guest may touch is small and fixed (modules/README.md, "guest contract"):
//! stdin from the task, stdout and stderr captured in memory, argv and an explicit environment,
//! a monotonic and a wall clock, random bytes, sleeping — and no files, directories or sockets.
//! warren serves exactly that itself instead of through wasmtime-wasi, which builds a full WASI
//! context per task (random generators, a resource table, preview-2 streams for stdio) and
//! enters tokio (`block_on`) on every synchronous call (BENCHMARKS.md, "Decisions"). Here a
//! store's WASI state is the task's input and output buffers, its argv and environment, and
//! three descriptor numbers; a call is a bounds check and a copy.
//!
//! Every `wasi_snapshot_preview1` function is defined, so any command links. The answers are
//! those wasmtime-wasi gives a context with in-memory stdio and no preopens: the only
//! descriptors are the three standard streams (which a guest may close or renumber), so file,
//! directory and path operations are `EBADF`, seeking a stream is `ESPIPE`, sockets are
//! `ENOTSOCK`. `poll_oneoff` and `proc_exit` differ on purpose (see [`poll`] and [`exit`]).

mod cli;
mod clocks;
mod exit;
mod filesystem;
mod poll;
mod random;
mod stdio;

use std::ops::Range;

use wasmtime::{Caller, Extern, Linker};

pub use cli::{CommandLine, StringList};
pub use exit::GuestExit;
pub use poll::WallClockExceeded;
pub use stdio::Stdio;

use super::SandboxState;

/// The module name every preview-1 import uses.
const WASI: &str = "wasi_snapshot_preview1";

/// WASI errno values (a `u16` on the wire, returned as the function's `i32` result).
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOTSOCK: i32 = 57;
    pub const NOTSUP: i32 = 58;
    pub const SPIPE: i32 = 70;
}

/// Defines every `wasi_snapshot_preview1` function in `linker`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    cli::add_to_linker(linker)?;
    clocks::add_to_linker(linker)?;
    stdio::add_to_linker(linker)?;
    filesystem::add_to_linker(linker)?;
    random::add_to_linker(linker)?;
    poll::add_to_linker(linker)?;
    exit::add_to_linker(linker)?;
    Ok(())
}

/// Runs `answer` on the guest's memory and the store's state; `EFAULT` when the guest exports
/// no memory. The memory is the one bound at instantiation; a call made before that (from a
/// module's start function) looks the export up by name.
fn with_memory(
    caller: &mut Caller<'_, SandboxState>,
    answer: impl FnOnce(&mut [u8], &mut SandboxState) -> wasmtime::Result<i32>,
) -> wasmtime::Result<i32> {
    let memory = match caller.data().memory {
        Some(memory) => memory,
        None => match caller.get_export("memory") {
            Some(Extern::Memory(memory)) => memory,
            _ => return Ok(errno::FAULT),
        },
    };
    let (memory, state) = memory.data_and_store_mut(&mut *caller);
    answer(memory, state)
}

/// `start..start + len` when it lies within a memory of `memory_len` bytes.
fn span(memory_len: usize, start: u32, len: usize) -> Option<Range<usize>> {
    let end = (start as usize).checked_add(len)?;
    (end <= memory_len).then_some(start as usize..end)
}

/// Stores `bytes` at `at`; `EFAULT` (nothing stored) when it does not fit.
fn store(memory: &mut [u8], at: u32, bytes: &[u8]) -> i32 {
    match span(memory.len(), at, bytes.len()) {
        Some(range) => {
            memory[range].copy_from_slice(bytes);
            errno::SUCCESS
        }
        None => errno::FAULT,
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::{Engine, Module};

    use super::*;

    /// Every function of wasi_snapshot_preview1.witx, with its core signature.
    const PREVIEW1: &str = r#"(module
      (import "wasi_snapshot_preview1" "args_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "args_sizes_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_sizes_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_res_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_advise" (func (param i32 i64 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_allocate" (func (param i32 i64 i64) (result i32)))
      (import "wasi_snapshot_preview1" "fd_close" (func (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_datasync" (func (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_fdstat_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_fdstat_set_rights" (func (param i32 i64 i64) (result i32)))
      (import "wasi_snapshot_preview1" "fd_filestat_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_filestat_set_size" (func (param i32 i64) (result i32)))
      (import "wasi_snapshot_preview1" "fd_filestat_set_times" (func (param i32 i64 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_pread" (func (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_prestat_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_pwrite" (func (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_readdir" (func (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_renumber" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_seek" (func (param i32 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_sync" (func (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_tell" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_create_directory" (func (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_filestat_get" (func (param i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_filestat_set_times" (func (param i32 i32 i32 i32 i64 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_link" (func (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_readlink" (func (param i32 i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_remove_directory" (func (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_rename" (func (param i32 i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_symlink" (func (param i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_unlink_file" (func (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
      (import "wasi_snapshot_preview1" "proc_raise" (func (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))
      (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "sock_recv" (func (param i32 i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "sock_send" (func (param i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "sock_shutdown" (func (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")))"#;

    #[test]
    fn every_preview1_function_is_defined_with_its_signature() {
        let engine = Engine::default();
        let module = Module::new(&engine, PREVIEW1).unwrap();
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).unwrap();
        if let Err(error) = linker.instantiate_pre(&module) {
            panic!("{error:#}");
        }
        assert_eq!(module.imports().len(), 46);
    }

    #[test]
    fn stores_outside_memory_fault_and_write_nothing() {
        let mut memory = [0u8; 8];
        assert_eq!(store(&mut memory, 6, &[1, 2, 3]), errno::FAULT);
        assert_eq!(store(&mut memory, u32::MAX, &[1]), errno::FAULT);
        assert_eq!(memory, [0; 8]);
        assert_eq!(store(&mut memory, 5, &[1, 2, 3]), errno::SUCCESS);
        assert_eq!(memory, [0, 0, 0, 0, 0, 1, 2, 3]);
    }
}

//! `random_get`: bytes from a cryptographically secure generator.
//!
//! The thread's generator (ChaCha, seeded from the OS and reseeded periodically) rather than a
//! system call per request: guests ask for random bytes at start-up (hash map keys), so this is
//! on many tasks' path. Nothing is shared with another task but the generator's stream.

use rand::RngCore;
use wasmtime::{Caller, Linker};

use super::errno::{FAULT, SUCCESS};
use super::{span, with_memory, SandboxState, WASI};

/// Defines `random_get`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, SandboxState>, buf: u32, len: u32| {
            with_memory(&mut caller, |memory, _| {
                let Some(range) = span(memory.len(), buf, len as usize) else {
                    return Ok(FAULT);
                };
                rand::rng().fill_bytes(&mut memory[range]);
                Ok(SUCCESS)
            })
        },
    )?;
    Ok(())
}

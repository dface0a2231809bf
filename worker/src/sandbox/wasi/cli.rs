//! The guest's argv and environment.
//!
//! Every command a C or Rust toolchain builds asks for its arguments at start-up
//! (`args_sizes_get`, `args_get`), so these calls are on every task's path. They are fixed for
//! the task: the store holds them already in the layout the guest wants (NUL-terminated
//! strings back to back), and an answer is two copies.
//!
//! ABI (wasi_snapshot_preview1): `args_sizes_get(argc_out, buf_size_out)` stores two u32s;
//! `args_get(argv, argv_buf)` stores the strings at `argv_buf` and a u32 pointer to each at
//! `argv`. `environ_*` are the same with `KEY=VALUE` strings.

use wasmtime::{Caller, Linker};

use super::errno::{FAULT, SUCCESS};
use super::{span, with_memory, SandboxState, WASI};

/// A list of strings as the guest receives it: each followed by a NUL, back to back.
#[derive(Debug, Default)]
pub struct StringList {
    bytes: Vec<u8>,
    count: u32,
}

impl StringList {
    /// Encodes `items` (each written as its parts in order, then a NUL). The caller has made
    /// sure no part contains a NUL.
    pub fn encode<'a, I, P>(items: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: IntoIterator<Item = &'a str>,
    {
        let mut list = StringList::default();
        for parts in items {
            for part in parts {
                list.bytes.extend_from_slice(part.as_bytes());
            }
            list.bytes.push(0);
            list.count += 1;
        }
        list
    }

    /// Answers `*_sizes_get`: the count and the total size, at `count_out` and `size_out`.
    fn sizes(&self, memory: &mut [u8], count_out: u32, size_out: u32) -> i32 {
        let size = u32::try_from(self.bytes.len()).unwrap_or(u32::MAX);
        store_u32s(memory, &[(count_out, self.count), (size_out, size)])
    }

    /// Answers `*_get`: the strings at `buf`, a pointer to each at `pointers`.
    fn copy_to(&self, memory: &mut [u8], pointers: u32, buf: u32) -> i32 {
        let Some(strings) = span(memory.len(), buf, self.bytes.len()) else {
            return FAULT;
        };
        let table_len = self.count as usize * 4;
        let Some(table) = span(memory.len(), pointers, table_len) else {
            return FAULT;
        };
        memory[strings].copy_from_slice(&self.bytes);
        let mut next = buf;
        let starts = self.bytes.split_inclusive(|&b| b == 0).map(|s| {
            let start = next;
            next = next.wrapping_add(s.len() as u32);
            start
        });
        for (slot, start) in memory[table].chunks_exact_mut(4).zip(starts) {
            slot.copy_from_slice(&start.to_le_bytes());
        }
        SUCCESS
    }
}

/// The task's argv and environment.
#[derive(Debug, Default)]
pub struct CommandLine {
    /// argv: program name, then the task's args.
    pub args: StringList,
    /// `KEY=VALUE` pairs.
    pub env: StringList,
}

/// Defines `args_get`, `args_sizes_get`, `environ_get` and `environ_sizes_get`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    fn args(state: &SandboxState) -> &StringList {
        &state.command_line.args
    }
    fn env(state: &SandboxState) -> &StringList {
        &state.command_line.env
    }
    for (sizes, get, list) in [
        (
            "args_sizes_get",
            "args_get",
            args as fn(&SandboxState) -> &StringList,
        ),
        ("environ_sizes_get", "environ_get", env),
    ] {
        linker.func_wrap(
            WASI,
            sizes,
            move |mut caller: Caller<'_, SandboxState>, count_out: u32, size_out: u32| {
                with_memory(&mut caller, |memory, state| {
                    Ok(list(state).sizes(memory, count_out, size_out))
                })
            },
        )?;
        linker.func_wrap(
            WASI,
            get,
            move |mut caller: Caller<'_, SandboxState>, pointers: u32, buf: u32| {
                with_memory(&mut caller, |memory, state| {
                    Ok(list(state).copy_to(memory, pointers, buf))
                })
            },
        )?;
    }
    Ok(())
}

/// Stores each `(address, value)` as a little-endian u32; `EFAULT` (and nothing stored) when
/// any address is out of bounds.
fn store_u32s(memory: &mut [u8], values: &[(u32, u32)]) -> i32 {
    if values
        .iter()
        .any(|&(at, _)| span(memory.len(), at, 4).is_none())
    {
        return FAULT;
    }
    for &(at, value) in values {
        memory[at as usize..at as usize + 4].copy_from_slice(&value.to_le_bytes());
    }
    SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_laid_out_nul_terminated_with_a_pointer_to_each() {
        let list = StringList::encode([vec!["prog"], vec!["KEY", "=", "v"], vec![""]]);
        let mut memory = vec![0xAAu8; 64];
        assert_eq!(list.sizes(&mut memory, 0, 4), SUCCESS);
        assert_eq!(&memory[0..8], &[3, 0, 0, 0, 12, 0, 0, 0]);
        assert_eq!(list.copy_to(&mut memory, 16, 32), SUCCESS);
        assert_eq!(&memory[32..44], b"prog\0KEY=v\0\0");
        let pointers: Vec<u32> = memory[16..28]
            .chunks_exact(4)
            .map(|p| u32::from_le_bytes(p.try_into().unwrap()))
            .collect();
        assert_eq!(pointers, [32, 37, 43]);
    }

    #[test]
    fn out_of_bounds_addresses_fault_without_writing() {
        let list = StringList::encode([vec!["a"]]);
        let mut memory = vec![0u8; 16];
        assert_eq!(list.sizes(&mut memory, 0, 14), FAULT);
        assert_eq!(list.copy_to(&mut memory, 0, 15), FAULT);
        assert_eq!(list.copy_to(&mut memory, 14, 0), FAULT);
        assert_eq!(memory, [0u8; 16]);
    }
}

//! The guest's descriptors: its three standard streams, in memory.
//!
//! stdin is the task's input, read front to back; stdout and stderr are capped captures
//! ([`OutputCapture`]). A read or a write is a copy between guest memory and a buffer, over all
//! the (c)iovecs of the call at once. The guest may close a stream or renumber it (`dup2`),
//! so [`Stdio`] keeps the descriptor number each stream is at; every call that takes a
//! descriptor looks it up there, and a number that names no stream is `EBADF`.
//!
//! ABI (wasi_snapshot_preview1): an `iovec`/`ciovec` is 8 bytes, buf u32 @0 and len u32 @4.
//! `fdstat` is 24 bytes: filetype u8 @0, flags u16 @2, rights base u64 @8, inheriting u64 @16.
//! `filestat` is 64 bytes: dev, ino, filetype u8 @16, nlink, size, atim, mtim, ctim.

use wasmtime::{Caller, Linker};

use super::errno::{BADF, FAULT, NOTSOCK, SPIPE, SUCCESS};
use super::{span, store, with_memory, SandboxState, WASI};
use crate::sandbox::output::{OutputCapture, OutputLimitExceeded};

const IOVEC_SIZE: u32 = 8;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
/// `filetype::unknown`: what a stream that is not a terminal reports.
const FILETYPE_UNKNOWN: u8 = 0;

/// One of the three standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    In = 0,
    Out = 1,
    Err = 2,
}

const STREAMS: [Stream; 3] = [Stream::In, Stream::Out, Stream::Err];

/// A task's standard streams and the descriptor number each is at (`None`: closed).
#[derive(Debug)]
pub struct Stdio {
    input: Vec<u8>,
    read: usize,
    /// What the guest wrote to stdout.
    pub stdout: OutputCapture,
    /// What the guest wrote to stderr.
    pub stderr: OutputCapture,
    fds: [Option<u32>; 3],
}

impl Stdio {
    /// Streams at their usual numbers: `input` on 0, `stdout` on 1, `stderr` on 2.
    pub fn new(input: Vec<u8>, stdout: OutputCapture, stderr: OutputCapture) -> Self {
        Stdio {
            input,
            read: 0,
            stdout,
            stderr,
            fds: [Some(0), Some(1), Some(2)],
        }
    }

    /// Whether `fd` names an open stream.
    pub fn is_open(&self, fd: u32) -> bool {
        self.stream_at(fd).is_some()
    }

    fn stream_at(&self, fd: u32) -> Option<Stream> {
        STREAMS
            .into_iter()
            .find(|&stream| self.fds[stream as usize] == Some(fd))
    }

    fn close(&mut self, fd: u32) -> i32 {
        match self.stream_at(fd) {
            Some(stream) => {
                self.fds[stream as usize] = None;
                SUCCESS
            }
            None => BADF,
        }
    }

    /// `dup2` semantics, as wasmtime-wasi has them: both must be open; `to` is closed and
    /// `from`'s stream moves to it.
    fn renumber(&mut self, from: u32, to: u32) -> i32 {
        let (Some(moving), Some(_)) = (self.stream_at(from), self.stream_at(to)) else {
            return BADF;
        };
        if from != to {
            self.close(to);
            self.fds[moving as usize] = Some(to);
        }
        SUCCESS
    }

    /// Copies unread input into `buffer`; the number of bytes copied (0 at the end).
    fn read_into(&mut self, buffer: &mut [u8]) -> usize {
        let rest = &self.input[self.read..];
        let n = rest.len().min(buffer.len());
        buffer[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        n
    }
}

/// Defines the descriptor calls whose answer depends on the streams.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "fd_read", fd_read)?;
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    linker.func_wrap(
        WASI,
        "fd_pread",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32, _: u32, _: u64, _: u32| {
            on_stream(&caller, fd, |stream| match stream {
                Stream::In => SPIPE,
                Stream::Out | Stream::Err => BADF,
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pwrite",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32, _: u32, _: u64, _: u32| {
            on_stream(&caller, fd, |stream| match stream {
                Stream::Out | Stream::Err => SPIPE,
                Stream::In => BADF,
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_close",
        |mut caller: Caller<'_, SandboxState>, fd: u32| caller.data_mut().stdio.close(fd),
    )?;
    linker.func_wrap(
        WASI,
        "fd_renumber",
        |mut caller: Caller<'_, SandboxState>, from: u32, to: u32| {
            caller.data_mut().stdio.renumber(from, to)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |caller: Caller<'_, SandboxState>, fd: u32, _: i64, _: u32, _: u32| {
            on_stream(&caller, fd, |_| SPIPE)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_tell",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32| on_stream(&caller, fd, |_| SPIPE),
    )?;
    linker.func_wrap(WASI, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(WASI, "fd_filestat_get", fd_filestat_get)?;
    linker.func_wrap(
        WASI,
        "sock_accept",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32, _: u32| {
            on_stream(&caller, fd, |_| NOTSOCK)
        },
    )?;
    linker.func_wrap(
        WASI,
        "sock_recv",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            on_stream(&caller, fd, |_| NOTSOCK)
        },
    )?;
    linker.func_wrap(
        WASI,
        "sock_send",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32, _: u32, _: u32, _: u32| {
            on_stream(&caller, fd, |_| NOTSOCK)
        },
    )?;
    linker.func_wrap(
        WASI,
        "sock_shutdown",
        |caller: Caller<'_, SandboxState>, fd: u32, _: u32| on_stream(&caller, fd, |_| NOTSOCK),
    )?;
    Ok(())
}

fn fd_read(
    mut caller: Caller<'_, SandboxState>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    nread_out: u32,
) -> wasmtime::Result<i32> {
    if caller.data().stdio.stream_at(fd) != Some(Stream::In) {
        return Ok(BADF);
    }
    transfer(&mut caller, iovs, iovs_len, nread_out, |stdio, buffer| {
        Ok(stdio.read_into(buffer))
    })
}

fn fd_write(
    mut caller: Caller<'_, SandboxState>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    nwritten_out: u32,
) -> wasmtime::Result<i32> {
    let to_stdout = match caller.data().stdio.stream_at(fd) {
        Some(Stream::Out) => true,
        Some(Stream::Err) => false,
        Some(Stream::In) | None => return Ok(BADF),
    };
    transfer(
        &mut caller,
        iovs,
        iovs_len,
        nwritten_out,
        |stdio, buffer| {
            let capture = if to_stdout {
                &mut stdio.stdout
            } else {
                &mut stdio.stderr
            };
            capture.append(buffer).map(|()| buffer.len())
        },
    )
}

fn fd_fdstat_get(mut caller: Caller<'_, SandboxState>, fd: u32, out: u32) -> wasmtime::Result<i32> {
    with_memory(&mut caller, |memory, state| {
        let rights = match state.stdio.stream_at(fd) {
            Some(Stream::In) => RIGHT_FD_READ,
            Some(Stream::Out | Stream::Err) => RIGHT_FD_WRITE,
            None => return Ok(BADF),
        };
        let mut fdstat = [0u8; 24];
        fdstat[0] = FILETYPE_UNKNOWN;
        fdstat[8..16].copy_from_slice(&rights.to_le_bytes());
        fdstat[16..24].copy_from_slice(&rights.to_le_bytes());
        Ok(store(memory, out, &fdstat))
    })
}

fn fd_filestat_get(
    mut caller: Caller<'_, SandboxState>,
    fd: u32,
    out: u32,
) -> wasmtime::Result<i32> {
    with_memory(&mut caller, |memory, state| {
        if !state.stdio.is_open(fd) {
            return Ok(BADF);
        }
        // A stream has no device, inode, links, size or times: all zero, filetype unknown.
        let mut filestat = [0u8; 64];
        filestat[16] = FILETYPE_UNKNOWN;
        Ok(store(memory, out, &filestat))
    })
}

/// The answer of a call that cannot apply to a stream: `answer(stream)` for the stream at `fd`
/// (`ESPIPE` for seeking or positional I/O in its direction, `ENOTSOCK` for socket calls, …),
/// `EBADF` when `fd` names none.
fn on_stream(caller: &Caller<'_, SandboxState>, fd: u32, answer: fn(Stream) -> i32) -> i32 {
    caller.data().stdio.stream_at(fd).map_or(BADF, answer)
}

/// Runs `each` over the guest buffers that `iovs_len` (c)iovecs at `iovs` describe, in order,
/// then stores the sum of the byte counts it returned at `count_out`. Out-of-bounds vectors,
/// buffers or count are `EFAULT` before any byte moves.
fn transfer(
    caller: &mut Caller<'_, SandboxState>,
    iovs: u32,
    iovs_len: u32,
    count_out: u32,
    mut each: impl FnMut(&mut Stdio, &mut [u8]) -> Result<usize, OutputLimitExceeded>,
) -> wasmtime::Result<i32> {
    with_memory(caller, |memory, state| {
        let in_bounds = (0..iovs_len).all(|i| buffer_span(memory, iovs, i).is_some());
        if !in_bounds || span(memory.len(), count_out, 4).is_none() {
            return Ok(FAULT);
        }
        let mut moved = 0usize;
        for i in 0..iovs_len {
            if let Some(buffer) = buffer_span(memory, iovs, i) {
                moved += each(&mut state.stdio, &mut memory[buffer])?;
            }
        }
        let count = u32::try_from(moved).unwrap_or(u32::MAX);
        Ok(store(memory, count_out, &count.to_le_bytes()))
    })
}

/// The bytes of the buffer the `index`th (c)iovec at `iovs` describes, when it and the iovec
/// are inside `memory`.
fn buffer_span(memory: &[u8], iovs: u32, index: u32) -> Option<std::ops::Range<usize>> {
    let at = iovs.checked_add(index.checked_mul(IOVEC_SIZE)?)?;
    let iovec = &memory[span(memory.len(), at, IOVEC_SIZE as usize)?];
    let buf = u32::from_le_bytes(iovec[0..4].try_into().ok()?);
    let len = u32::from_le_bytes(iovec[4..8].try_into().ok()?);
    span(memory.len(), buf, len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::output::OverflowPolicy;

    fn stdio(input: &[u8]) -> Stdio {
        Stdio::new(
            input.to_vec(),
            OutputCapture::new(64, OverflowPolicy::Fail),
            OutputCapture::new(64, OverflowPolicy::Truncate),
        )
    }

    #[test]
    fn input_is_read_front_to_back_across_buffers() {
        let mut stdio = stdio(b"hello");
        let (mut a, mut b) = ([0u8; 2], [0u8; 8]);
        assert_eq!(stdio.read_into(&mut a), 2);
        assert_eq!(stdio.read_into(&mut b), 3);
        assert_eq!((&a, &b[..3]), (b"he", &b"llo"[..]));
        assert_eq!(stdio.read_into(&mut b), 0, "end of input");
    }

    #[test]
    fn renumbering_moves_a_stream_and_closes_the_target() {
        let mut stdio = stdio(b"");
        assert_eq!(stdio.renumber(2, 1), SUCCESS);
        assert_eq!(stdio.stream_at(1), Some(Stream::Err));
        assert!(!stdio.is_open(2));
        assert_eq!(stdio.renumber(1, 2), BADF, "2 is closed now");
        assert_eq!(stdio.renumber(0, 0), SUCCESS);
        assert_eq!(stdio.close(0), SUCCESS);
        assert_eq!(stdio.close(0), BADF);
        assert_eq!(stdio.stream_at(0), None);
        assert_eq!(stdio.renumber(7, 1), BADF, "no such descriptor");
    }
}

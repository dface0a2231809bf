//! Capturing a guest's stdout and stderr in memory, with caps.
//!
//! wasmtime-wasi's own `MemoryOutputPipe` reports a full buffer to the guest as a closed stream,
//! which a guest turns into a panic or an exit code of its own choosing; we could not tell that
//! from a real failure. This capture instead decides at the cap:
//! - [`OverflowPolicy::Fail`] (stdout) stops the guest with [`OutputLimitExceeded`], which the
//!   sandbox reports as the `OutputLimitExceeded` outcome;
//! - [`OverflowPolicy::Truncate`] (stderr) keeps the first bytes, drops the rest and remembers
//!   that it did, so a chatty guest still finishes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// What happens when a guest writes past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Stop the guest with [`OutputLimitExceeded`].
    Fail,
    /// Keep what fits, drop the rest, mark the capture truncated.
    Truncate,
}

/// The error that stops a guest which wrote more stdout than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output limit of {limit} bytes exceeded")]
pub struct OutputLimitExceeded {
    /// The cap, in bytes.
    pub limit: u64,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    truncated: bool,
}

/// A capped in-memory sink for one guest stream. Clones share the buffer.
#[derive(Debug, Clone)]
pub struct OutputCapture {
    buffer: Arc<Mutex<Buffer>>,
    limit: usize,
    policy: OverflowPolicy,
}

impl OutputCapture {
    /// A capture that holds at most `limit` bytes.
    pub fn new(limit: u64, policy: OverflowPolicy) -> Self {
        OutputCapture {
            buffer: Arc::default(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            policy,
        }
    }

    /// Takes what was captured, and whether anything was dropped.
    pub fn take(&self) -> (Vec<u8>, bool) {
        let mut buffer = self.lock();
        (std::mem::take(&mut buffer.bytes), buffer.truncated)
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A poisoned lock only means another writer panicked mid-append; the bytes are still ours.
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `data`, applying the overflow policy. Returns how many bytes were consumed.
    fn append(&self, data: &[u8]) -> Result<usize, OutputLimitExceeded> {
        let mut buffer = self.lock();
        let room = self.limit.saturating_sub(buffer.bytes.len());
        if data.len() <= room {
            buffer.bytes.extend_from_slice(data);
            return Ok(data.len());
        }
        match self.policy {
            OverflowPolicy::Fail => Err(OutputLimitExceeded {
                limit: self.limit as u64,
            }),
            OverflowPolicy::Truncate => {
                buffer.bytes.extend_from_slice(&data[..room]);
                buffer.truncated = true;
                Ok(data.len())
            }
        }
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes)
            .map(|_| ())
            .map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: the cap is enforced in `write`, where the policy can be applied.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.append(buf).map_err(io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_policy_refuses_the_write_that_crosses_the_cap() {
        let capture = OutputCapture::new(4, OverflowPolicy::Fail);
        assert_eq!(capture.append(b"abc"), Ok(3));
        assert_eq!(capture.append(b"de"), Err(OutputLimitExceeded { limit: 4 }));
        assert_eq!(capture.take(), (b"abc".to_vec(), false));
    }

    #[test]
    fn truncate_policy_keeps_the_head_and_marks_truncation() {
        let capture = OutputCapture::new(4, OverflowPolicy::Truncate);
        assert_eq!(capture.append(b"abc"), Ok(3));
        assert_eq!(capture.append(b"defg"), Ok(4));
        assert_eq!(capture.take(), (b"abcd".to_vec(), true));
    }
}

//! stdout and stderr of a component task: WASI 0.2 output streams into the same capped
//! [`OutputCapture`] a module's descriptors write to, so the caps and their outcomes are the
//! same for both kinds of guest.
//!
//! A stream always grants a full write permit and is always ready: the cap is applied by the
//! capture when bytes arrive (stdout's overflow stops the guest with [`OutputLimitExceeded`],
//! stderr's is dropped and marked), never by a short permit the guest would see as a closed
//! or stalled stream.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::sandbox::output::OutputCapture;

/// Largest write a guest is permitted at once (WASI's own `blocking-write-and-flush` limit).
const PERMIT: usize = 4096;

/// One captured stream, shared by the guest's handles to it and the sandbox that takes the
/// bytes after the run.
#[derive(Clone)]
pub struct CapturedStream(Arc<Mutex<OutputCapture>>);

impl CapturedStream {
    /// A stream into `capture`.
    pub fn new(capture: OutputCapture) -> Self {
        CapturedStream(Arc::new(Mutex::new(capture)))
    }

    /// Takes what was captured, and whether anything was dropped.
    pub fn take(&self) -> (Vec<u8>, bool) {
        self.capture().take()
    }

    fn capture(&self) -> MutexGuard<'_, OutputCapture> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture()
            .append(&bytes)
            .map_err(|exceeded| StreamError::Trap(exceeded.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

/// The same capture for wasmtime-wasi's asynchronous interfaces (WASI 0.3), which warren does
/// not link; a write past stdout's cap is an error there.
impl AsyncWrite for CapturedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.capture()
                .append(buf)
                .map(|()| buf.len())
                .map_err(io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

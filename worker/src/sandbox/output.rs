//! Capturing a guest's stdout and stderr in memory, with caps.
//!
//! A full buffer is not a closed stream to the guest (which it would turn into a panic or an
//! exit code of its own choosing, indistinguishable from a real failure); the capture decides at
//! the cap instead:
//! - [`OverflowPolicy::Fail`] (stdout) stops the guest with [`OutputLimitExceeded`], which the
//!   sandbox reports as the `OutputLimitExceeded` outcome;
//! - [`OverflowPolicy::Truncate`] (stderr) keeps the first bytes, drops the rest and remembers
//!   that it did, so a chatty guest still finishes.

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

/// A capped in-memory sink for one guest stream.
#[derive(Debug)]
pub struct OutputCapture {
    bytes: Vec<u8>,
    truncated: bool,
    limit: usize,
    policy: OverflowPolicy,
}

impl OutputCapture {
    /// A capture that holds at most `limit` bytes.
    pub fn new(limit: u64, policy: OverflowPolicy) -> Self {
        OutputCapture {
            bytes: Vec::new(),
            truncated: false,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            policy,
        }
    }

    /// Takes what was captured, and whether anything was dropped.
    pub fn take(&mut self) -> (Vec<u8>, bool) {
        (std::mem::take(&mut self.bytes), self.truncated)
    }

    /// Appends `data`, applying the overflow policy.
    pub fn append(&mut self, data: &[u8]) -> Result<(), OutputLimitExceeded> {
        let room = self.limit.saturating_sub(self.bytes.len());
        if data.len() <= room {
            self.bytes.extend_from_slice(data);
            return Ok(());
        }
        match self.policy {
            OverflowPolicy::Fail => Err(OutputLimitExceeded {
                limit: self.limit as u64,
            }),
            OverflowPolicy::Truncate => {
                self.bytes.extend_from_slice(&data[..room]);
                self.truncated = true;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_policy_refuses_the_write_that_crosses_the_cap() {
        let mut capture = OutputCapture::new(4, OverflowPolicy::Fail);
        assert_eq!(capture.append(b"abc"), Ok(()));
        assert_eq!(capture.append(b"de"), Err(OutputLimitExceeded { limit: 4 }));
        assert_eq!(capture.take(), (b"abc".to_vec(), false));
    }

    #[test]
    fn truncate_policy_keeps_the_head_and_marks_truncation() {
        let mut capture = OutputCapture::new(4, OverflowPolicy::Truncate);
        assert_eq!(capture.append(b"abc"), Ok(()));
        assert_eq!(capture.append(b"defg"), Ok(()));
        assert_eq!(capture.take(), (b"abcd".to_vec(), true));
    }
}

//! The task a producer enqueues: which module to run, on what input, with which limits.
//!
//! A task only ever *lowers* the worker's limits: the worker's own caps are the ceiling, so a
//! task cannot buy itself more CPU time or memory than the operator allowed.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's identity: 128 random bits, also used as the AMQP message id and correlation id.
pub type TaskId = Uuid;

/// One unit of work for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id; results carry it back so a producer can match them.
    pub id: TaskId,
    /// Which module to run: a name, optionally pinned to a content digest.
    pub module: ModuleRef,
    /// Bytes given to the guest on stdin.
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Arguments after argv[0] (argv[0] is always the module name).
    pub args: Vec<String>,
    /// Environment variables the guest sees — only these; nothing is inherited from the host.
    pub env: Vec<(String, String)>,
    /// Per-task limits; each can only lower the worker's own cap.
    pub limits: TaskLimits,
    /// When the producer submitted the task, in nanoseconds since the Unix epoch; queue wait is
    /// measured from here.
    pub submitted_at_unix_ns: u64,
    /// Set when the task belongs to a batch, so results can be put back in order.
    pub batch: Option<BatchRef>,
}

impl Task {
    /// A task for `module` with `input`, a fresh id, no args, no env, the worker's default limits,
    /// submitted now.
    pub fn new(module: ModuleRef, input: impl Into<Vec<u8>>) -> Self {
        Task {
            id: Uuid::new_v4(),
            module,
            input: input.into(),
            args: Vec::new(),
            env: Vec::new(),
            limits: TaskLimits::default(),
            submitted_at_unix_ns: unix_now_ns(),
            batch: None,
        }
    }
}

/// Nanoseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Limits a task asks for. `None` means "the worker's cap"; a value above the cap is clamped to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// CPU deadline for the guest, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Largest linear memory the guest may grow to, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Largest stdout the guest may write, in bytes.
    pub max_output_bytes: Option<u64>,
}

impl TaskLimits {
    /// The timeout as a [`Duration`], when set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// Where a task sits in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchRef {
    /// The batch's id (also names its results queue).
    pub batch_id: Uuid,
    /// Position of the task's input in the batch, from 0.
    pub index: u64,
}

/// A reference to a module: `name` (the newest version the worker has) or `name@<hex digest
/// prefix>` (one exact version, identified by the sha256 of its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModuleRef {
    /// The module's name: the file stem of its `.wasm` in the worker's modules directory.
    pub name: String,
    /// Lowercase hex prefix of the module's sha256, when the task pins a version.
    pub digest_prefix: Option<String>,
}

/// Why a module reference string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleRefError {
    /// The name part is empty or has characters a file stem cannot safely have.
    #[error(
        "invalid module name {0:?}: use letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidName(String),
    /// The digest part is not lowercase hex, or is shorter than 4 characters, or longer than 64.
    #[error("invalid module digest {0:?}: expected 4 to 64 lowercase hex characters")]
    InvalidDigest(String),
}

impl ModuleRef {
    /// The newest version of the module called `name`.
    pub fn latest(name: impl Into<String>) -> Self {
        ModuleRef {
            name: name.into(),
            digest_prefix: None,
        }
    }

    /// Checks that the name and digest have a shape a worker can look up.
    pub fn validate(&self) -> Result<(), ModuleRefError> {
        if !is_valid_name(&self.name) {
            return Err(ModuleRefError::InvalidName(self.name.clone()));
        }
        if let Some(digest) = &self.digest_prefix {
            if !is_valid_digest_prefix(digest) {
                return Err(ModuleRefError::InvalidDigest(digest.clone()));
            }
        }
        Ok(())
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_valid_digest_prefix(digest: &str) -> bool {
    (4..=64).contains(&digest.len())
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for ModuleRef {
    type Err = ModuleRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let module = match s.split_once('@') {
            Some((name, digest)) => ModuleRef {
                name: name.to_owned(),
                digest_prefix: Some(digest.to_ascii_lowercase()),
            },
            None => ModuleRef::latest(s),
        };
        module.validate()?;
        Ok(module)
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.digest_prefix {
            Some(digest) => write!(f, "{}@{}", self.name, digest),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_ref_parses_name_and_pinned_digest() {
        assert_eq!("wc".parse::<ModuleRef>().unwrap(), ModuleRef::latest("wc"));
        let pinned: ModuleRef = "wc@ABCDEF12".parse().unwrap();
        assert_eq!(pinned.digest_prefix.as_deref(), Some("abcdef12"));
        assert_eq!(pinned.to_string(), "wc@abcdef12");
    }

    #[test]
    fn module_ref_rejects_paths_and_bad_digests() {
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            ".hidden",
            "wc@xyz1",
            "wc@ab",
            "wc@",
        ] {
            assert!(
                bad.parse::<ModuleRef>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}

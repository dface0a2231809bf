//! The one place that turns wire types into bytes and back.
//!
//! A frame is one version byte ([`WIRE_VERSION`]) followed by a bincode 2 body (serde, standard
//! config: little-endian varints). The version byte lets a worker refuse a message from a newer
//! producer with a clear reason instead of misreading it. Decoding is bounded twice: the frame
//! must fit the caller's size limit, and bincode itself refuses any length field that claims more
//! than [`DEFAULT_MAX_MESSAGE_BYTES`], so a forged "4 GiB string" cannot make us allocate.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

/// The encoding version written in front of every frame.
pub const WIRE_VERSION: u8 = 1;

/// AMQP content type of a frame, naming the codec and schema version.
pub const CONTENT_TYPE: &str = "application/x-warren+bincode; v=1";

/// Largest frame accepted by default (64 MiB); also the hard ceiling on any decoded length field.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

type WireConfig = Configuration<LittleEndian, Varint, Limit<DEFAULT_MAX_MESSAGE_BYTES>>;

fn config() -> WireConfig {
    bincode::config::standard().with_limit::<DEFAULT_MAX_MESSAGE_BYTES>()
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message had no bytes at all.
    #[error("empty message")]
    Empty,
    /// The frame is bigger than the receiver accepts.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the frame.
        len: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// The version byte is not one this build understands.
    #[error("unsupported wire version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The body is not a valid encoding of the expected type (truncated, corrupt, or a length
    /// field claiming more than the limit).
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over, so it was not what the sender meant.
    #[error("{0} unexpected trailing bytes after the message body")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// A short, bounded label for metrics (`warren_deliveries_rejected_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

/// Encodes `value` as a versioned frame.
///
/// # Panics
/// Never for the types in this crate: they hold no maps with non-string keys or other shapes
/// bincode cannot encode, and bincode's encoder does not apply the decode limit.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.push(WIRE_VERSION);
    bincode::serde::encode_into_std_write(value, &mut frame, config())
        .expect("warren wire types always encode");
    frame
}

/// Decodes a versioned frame of at most `max_len` bytes.
pub fn decode<T: DeserializeOwned>(frame: &[u8], max_len: usize) -> Result<T, DecodeError> {
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if frame.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            limit: max_len,
        });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: WIRE_VERSION,
        });
    }
    let (value, read) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BatchRef, ModuleRef, Outcome, ResolvedModule, Task, TaskLimits, TaskResult, Timings,
    };
    use proptest::prelude::*;
    use uuid::Uuid;

    fn sample_task() -> Task {
        let mut task = Task::new("csv2json@abcd".parse().unwrap(), b"a,b\n1,2\n".to_vec());
        task.args = vec!["--pretty".into()];
        task.env = vec![("GREETING".into(), "hi".into())];
        task.limits = TaskLimits {
            timeout_ms: Some(500),
            max_memory_bytes: Some(1 << 20),
            max_output_bytes: None,
        };
        task.batch = Some(BatchRef {
            batch_id: Uuid::new_v4(),
            index: 7,
        });
        task
    }

    fn sample_result(outcome: Outcome) -> TaskResult {
        TaskResult {
            task_id: Uuid::new_v4(),
            batch: None,
            module: Some(ResolvedModule {
                name: "wc".into(),
                digest: "ab".repeat(32),
            }),
            outcome,
            stdout: b"1 2 3\n".to_vec(),
            stderr: Vec::new(),
            stderr_truncated: false,
            exit_code: Some(0),
            timings: Timings {
                queue_wait_ns: 1,
                instantiate_ns: 2,
                run_ns: 3,
                total_ns: 6,
            },
            worker_id: "host-1".into(),
            attempt: 1,
        }
    }

    #[test]
    fn task_round_trips() {
        let task = sample_task();
        let frame = encode(&task);
        assert_eq!(frame[0], WIRE_VERSION);
        assert_eq!(
            decode::<Task>(&frame, DEFAULT_MAX_MESSAGE_BYTES).unwrap(),
            task
        );
    }

    #[test]
    fn every_outcome_round_trips() {
        let outcomes = [
            Outcome::Success,
            Outcome::NonZeroExit { code: 1 },
            Outcome::Trap {
                message: "unreachable".into(),
            },
            Outcome::Timeout { limit_ms: 5 },
            Outcome::MemoryLimitExceeded { limit_bytes: 9 },
            Outcome::OutputLimitExceeded { limit_bytes: 9 },
            Outcome::ModuleNotFound {
                module: "nope".into(),
            },
            Outcome::InvalidTask {
                reason: "bad".into(),
            },
            Outcome::ResultRefused {
                reason: "too large".into(),
            },
        ];
        for outcome in outcomes {
            let result = sample_result(outcome);
            let decoded: TaskResult = decode(&encode(&result), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
            assert_eq!(decoded, result);
        }
    }

    #[test]
    fn outcome_variants_keep_their_wire_tags() {
        // A variant's tag is its position: new ones go last, so results written by an older
        // worker still decode, and an older reader refuses only the new variant.
        let tag = |outcome: &Outcome| encode(outcome)[1];
        assert_eq!(tag(&Outcome::Success), 0);
        assert_eq!(
            tag(&Outcome::InvalidTask {
                reason: String::new()
            }),
            7
        );
        assert_eq!(
            tag(&Outcome::ResultRefused {
                reason: String::new()
            }),
            8
        );
    }

    #[test]
    fn refuses_empty_oversized_unknown_version_truncated_and_trailing() {
        let frame = encode(&sample_task());
        assert!(matches!(decode::<Task>(&[], 100), Err(DecodeError::Empty)));
        assert!(matches!(
            decode::<Task>(&frame, frame.len() - 1),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut future = frame.clone();
        future[0] = 2;
        assert!(matches!(
            decode::<Task>(&future, usize::MAX),
            Err(DecodeError::UnsupportedVersion { found: 2, .. })
        ));
        for cut in 1..frame.len() {
            assert!(
                decode::<Task>(&frame[..cut], usize::MAX).is_err(),
                "a frame cut at {cut} bytes must not decode"
            );
        }
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Task>(&trailing, usize::MAX),
            Err(DecodeError::TrailingBytes(1))
        ));
    }

    #[test]
    fn length_claiming_gigabytes_is_refused_without_allocating() {
        // Version, uuid (16 bytes: bincode serde encodes it as a length-prefixed byte slice),
        // then a module name whose varint length claims 2^32 bytes.
        let mut frame = vec![WIRE_VERSION, 16];
        frame.extend_from_slice(&[0x11; 16]);
        frame.push(252); // varint tag: u32 follows
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode::<Task>(&frame, usize::MAX).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Task>(&bytes, DEFAULT_MAX_MESSAGE_BYTES);
            let _ = decode::<TaskResult>(&bytes, DEFAULT_MAX_MESSAGE_BYTES);
        }

        #[test]
        fn corrupting_a_valid_frame_never_panics(pos in 0usize..64, byte in any::<u8>()) {
            let mut frame = encode(&sample_task());
            let pos = pos % frame.len();
            frame[pos] = byte;
            let _ = decode::<Task>(&frame, DEFAULT_MAX_MESSAGE_BYTES);
        }

        #[test]
        fn arbitrary_tasks_round_trip(
            name in "[a-z][a-z0-9_-]{0,20}",
            input in proptest::collection::vec(any::<u8>(), 0..256),
            args in proptest::collection::vec(".{0,16}", 0..4),
            timeout in proptest::option::of(any::<u64>()),
            submitted in any::<u64>(),
        ) {
            let mut task = Task::new(ModuleRef::latest(name), input);
            task.args = args;
            task.limits.timeout_ms = timeout;
            task.submitted_at_unix_ns = submitted;
            let decoded: Task = decode(&encode(&task), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
            prop_assert_eq!(decoded, task);
        }
    }
}

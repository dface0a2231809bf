//! The errors the producer library returns, as enums callers can branch on.
//!
//! Broker failures carry what was being done (`context`) so a message names the queue or the
//! step; input and output-directory problems carry the path. Guest outcomes are never errors:
//! a task that trapped is a [`warren_schemas::TaskResult`] like any other.

use std::path::PathBuf;

use warren_schemas::TaskId;

/// Everything that can go wrong talking to the broker or the output directory.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// The broker refused or dropped an operation.
    #[error("{context}: {source}")]
    Broker {
        /// What was being done, e.g. "declaring queue warren.tasks".
        context: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// A queue that must already exist does not (a passive declare answered NOT_FOUND).
    #[error("queue {queue:?} does not exist{hint}")]
    QueueNotFound {
        /// The queue's name.
        queue: String,
        /// What that probably means, starting with "; " (may be empty).
        hint: String,
    },
    /// The broker answered a publish with a nack: the message may not have been stored.
    #[error("the broker refused (nacked) task {task_id}; nothing was lost, retry it")]
    Nacked {
        /// The task the broker refused.
        task_id: TaskId,
    },
    /// The broker ended a consumer (its queue was deleted, or the connection closed).
    #[error(
        "the broker stopped delivering from queue {queue:?} (deleted, or the connection closed)"
    )]
    ConsumerEnded {
        /// The queue consumed.
        queue: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The output directory holds something that does not fit this operation.
    #[error("{0}")]
    OutDir(String),
    /// A background task of the producer itself failed (a bug, or the runtime shutting down).
    #[error("internal error: {0}")]
    Internal(String),
    /// The batch's inputs are unusable (detected before anything is published).
    #[error(transparent)]
    Input(#[from] crate::batch::inputs::InputError),
    /// An OCI registry refused or failed an operation (`warren module push` / `ls`).
    #[error(transparent)]
    Registry(#[from] warren_worker::oci::OciError),
    /// The broker addresses (`AMQP_URL`) are unusable.
    #[error(transparent)]
    Nodes(#[from] warren_schemas::nodes::NodesError),
    /// A queue could not be declared (one declared with other arguments, e.g. a classic
    /// queue from an older warren, or a broker failure).
    #[error(transparent)]
    Declare(#[from] warren_schemas::topology::DeclareError),
}

impl ProducerError {
    /// Wraps a lapin error with what was being done.
    pub(crate) fn broker(context: impl Into<String>, source: lapin::Error) -> Self {
        ProducerError::Broker {
            context: context.into(),
            source,
        }
    }

    /// True when the broker connection (or the channel under it) went away: the broker
    /// restarted, closed the connection (`connection-forced`), the network dropped, or a
    /// consumer stopped because of that. Such a failure is worth a reconnect; a refusal that
    /// would repeat (access refused, a missing queue, a nack) is not.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ProducerError::Broker { source, .. } => is_connection_lost(source),
            ProducerError::Declare(declare) => {
                declare.broker_error().is_some_and(is_connection_lost)
            }
            ProducerError::ConsumerEnded { .. } => true,
            _ => false,
        }
    }

    /// True when the broker refused (nacked) a publish: in a cluster, a quorum queue does
    /// while it elects a new leader; a queue with `reject-publish` does while it is full.
    /// Worth publishing again after a while.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ProducerError::Nacked { .. })
    }

    /// Wraps an I/O error with the path involved.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ProducerError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = ProducerError> = std::result::Result<T, E>;

/// True when a lapin error is the broker saying "no such queue" (404 NOT_FOUND).
fn is_connection_lost(source: &lapin::Error) -> bool {
    match source.kind() {
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::MissingHeartbeatError => true,
        lapin::ErrorKind::ProtocolError(_) => source.is_amqp_hard_error(),
        _ => false,
    }
}

pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_id() == 404,
        _ => false,
    }
}

//! The queues warren uses, declared idempotently at every (re)connect.
//!
//! - Tasks: a durable **quorum** queue with `x-delivery-limit`, dead-lettering to the dead queue,
//!   so a message that keeps killing workers ends there instead of looping forever.
//! - Dead letters: a durable quorum queue holding undecodable messages and poison tasks (the
//!   broker's `x-death` header says why).
//! - Results: a durable quorum queue for results of tasks without `reply_to`.
//! - Unroutable results: where a worker puts a result whose `reply_to` queue does not exist (a
//!   batch's results queue that expired, a reply queue that died with its client), with
//!   [`UNROUTABLE_REPLY_TO_HEADER`] and the return's code and reason as headers. By default the
//!   results queue itself.
//!
//! Every queue is a quorum queue, replicated on the cluster's nodes, so losing a node loses
//! no task and no result (a batch's results queue too: [`results_queue_arguments`]). A queue's
//! type cannot change in place: a queue declared classic by an older warren is refused with
//! [`DeclareError::Inequivalent`], whose message points to the migration steps.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;

/// Where the docs say how to move queues declared classic by an older warren to quorum.
pub const MIGRATION_DOC: &str = "docs/deployment.md#queues-declared-classic-by-an-older-warren";

/// A queue could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The queue exists with other arguments (another type, delivery limit or expiry) than
    /// warren declares; the broker refused (406 PRECONDITION_FAILED) and closed the channel.
    #[error("queue {queue} exists with other arguments than warren declares ({detail}); a queue's type cannot change in place: see {MIGRATION_DOC}")]
    Inequivalent {
        /// The queue.
        queue: String,
        /// The broker's words.
        detail: String,
    },
    /// Anything else: the connection or channel failed, or the broker refused otherwise.
    #[error("declaring queue {queue}: {source}")]
    Broker {
        /// The queue.
        queue: String,
        /// What the broker or the connection said.
        source: lapin::Error,
    },
}

impl DeclareError {
    /// The broker error underneath, if the declare got that far (for retry decisions).
    pub fn broker_error(&self) -> Option<&lapin::Error> {
        match self {
            DeclareError::Inequivalent { .. } => None,
            DeclareError::Broker { source, .. } => Some(source),
        }
    }
}

/// Queue names and the delivery limit. Defaults match the docs; override per deployment (and per
/// test, for isolation).
#[derive(Debug, Clone, clap::Args)]
pub struct Topology {
    /// Task queue (quorum queue, consumed by workers).
    #[arg(
        long = "tasks-queue",
        env = "WARREN_TASKS_QUEUE",
        default_value = "warren.tasks"
    )]
    pub tasks: String,

    /// Dead-letter queue for undecodable and poison messages.
    #[arg(
        long = "dead-queue",
        env = "WARREN_DEAD_QUEUE",
        default_value = "warren.tasks.dead"
    )]
    pub dead: String,

    /// Results of tasks that carry no `reply_to`.
    #[arg(
        long = "results-queue",
        env = "WARREN_RESULTS_QUEUE",
        default_value = "warren.results"
    )]
    pub results: String,

    /// Where a result goes when its `reply_to` queue does not exist (the broker returned it),
    /// with headers saying where it was meant to go and why it came back. Default: the
    /// `--results-queue` (`warren.results`). `warren collect` takes a batch's late results from
    /// here.
    #[arg(
        long = "unroutable-results-queue",
        env = "WARREN_UNROUTABLE_RESULTS_QUEUE"
    )]
    pub unroutable: Option<String>,

    /// Deliveries of one message before the broker dead-letters it (`x-delivery-limit`).
    #[arg(long, env = "WARREN_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
}

impl Topology {
    /// Default names with a suffix, for tests that need isolated queues.
    pub fn with_suffix(suffix: &str) -> Self {
        Topology {
            tasks: format!("warren.tasks.{suffix}"),
            dead: format!("warren.tasks.dead.{suffix}"),
            results: format!("warren.results.{suffix}"),
            unroutable: None,
            delivery_limit: 5,
        }
    }

    /// The queue unroutable results go to: `--unroutable-results-queue`, else the results queue.
    pub fn unroutable_queue(&self) -> &str {
        self.unroutable.as_deref().unwrap_or(&self.results)
    }

    /// Declares the queues (idempotent when they exist with the same arguments).
    pub async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        declare_queue(channel, &self.dead, results_queue_arguments(None)).await?;
        declare_queue(channel, &self.results, results_queue_arguments(None)).await?;
        if self.unroutable_queue() != self.results {
            let unroutable = self.unroutable_queue();
            declare_queue(channel, unroutable, results_queue_arguments(None)).await?;
        }
        declare_queue(channel, &self.tasks, self.task_queue_arguments()).await
    }

    /// Arguments of the task queue.
    pub fn task_queue_arguments(&self) -> FieldTable {
        let mut args = quorum();
        args.insert(
            key("x-delivery-limit"),
            AMQPValue::LongUInt(self.delivery_limit),
        );
        args.insert(key("x-dead-letter-exchange"), text(""));
        args.insert(key("x-dead-letter-routing-key"), text(&self.dead));
        args
    }
}

/// Arguments of a queue of results (or dead letters): quorum, and when `expires` is given,
/// deleted by the broker that long after its last use (`x-expires`: no consumer, no declare;
/// quorum queues honour it since RabbitMQ 3.9), as a batch's results queue is.
pub fn results_queue_arguments(expires: Option<Duration>) -> FieldTable {
    let mut args = quorum();
    if let Some(expires) = expires {
        let millis = u32::try_from(expires.as_millis().max(1)).unwrap_or(u32::MAX);
        args.insert(key("x-expires"), AMQPValue::LongUInt(millis));
    }
    args
}

/// Declares durable `queue` with `arguments`, telling a queue that exists with other arguments
/// apart from other failures.
pub async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), DeclareError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), durable, arguments)
        .await
    {
        Ok(_) => Ok(()),
        Err(source) => Err(match source.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => {
                DeclareError::Inequivalent {
                    queue: queue.to_owned(),
                    detail: amqp.get_message().to_string(),
                }
            }
            _ => DeclareError::Broker {
                queue: queue.to_owned(),
                source,
            },
        }),
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(key("x-queue-type"), text("quorum"));
    args
}

/// Header of a result in the unroutable-results queue: the `reply_to` it was published to
/// (long string).
pub const UNROUTABLE_REPLY_TO_HEADER: &str = "x-warren-reply-to";
/// Header of a result in the unroutable-results queue: the broker's reply code for the return
/// (long int; 312 `NO_ROUTE` when the queue does not exist).
pub const UNROUTABLE_CODE_HEADER: &str = "x-warren-return-code";
/// Header of a result in the unroutable-results queue: the broker's reply text for the return
/// (long string, e.g. `NO_ROUTE`).
pub const UNROUTABLE_REASON_HEADER: &str = "x-warren-return-reason";

fn key(name: &str) -> ShortString {
    name.into()
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The broker URL (or a malformed address without a scheme) with its password replaced by
/// `***`, for logs and error messages: neither side may ever print the credential.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs_or_messages() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact_url("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact_url("amqps://u:p@ss@h/v"), "amqps://u:***@h/v");
        assert_eq!(redact_url("u:s3cret@host:5672"), "u:***@host:5672");
    }
}

//! The queues warren uses, declared idempotently at every (re)connect.
//!
//! - Tasks: a durable **quorum** queue with `x-delivery-limit`, dead-lettering to the dead queue,
//!   so a message that keeps killing workers ends there instead of looping forever.
//! - Dead letters: a durable queue holding undecodable messages and poison tasks (the broker's
//!   `x-death` header says why).
//! - Results: a durable queue for results of tasks without `reply_to`.
//! - Unroutable results: where a worker puts a result whose `reply_to` queue does not exist (a
//!   batch's results queue that expired, a reply queue that died with its client), with
//!   [`UNROUTABLE_REPLY_TO_HEADER`] and the return's code and reason as headers. By default the
//!   results queue itself.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;

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
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(self.dead.as_str().into(), durable, FieldTable::default())
            .await?;
        channel
            .queue_declare(self.results.as_str().into(), durable, FieldTable::default())
            .await?;
        if self.unroutable_queue() != self.results {
            channel
                .queue_declare(
                    self.unroutable_queue().into(),
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_declare(
                self.tasks.as_str().into(),
                durable,
                self.task_queue_arguments(),
            )
            .await?;
        Ok(())
    }

    /// Arguments of the task queue.
    pub fn task_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(key("x-queue-type"), text("quorum"));
        args.insert(
            key("x-delivery-limit"),
            AMQPValue::LongUInt(self.delivery_limit),
        );
        args.insert(key("x-dead-letter-exchange"), text(""));
        args.insert(key("x-dead-letter-routing-key"), text(&self.dead));
        args
    }
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

/// The broker URL with its password replaced by `***`, for logs and error messages: both sides
/// print the URL they connect to, and neither may ever print the credential.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
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
    }
}

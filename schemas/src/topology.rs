//! The queues warren uses, declared idempotently at every (re)connect.
//!
//! - Tasks: a durable **quorum** queue with `x-delivery-limit`, dead-lettering to the dead queue,
//!   so a message that keeps killing workers ends there instead of looping forever.
//! - Dead letters: a durable queue holding undecodable messages and poison tasks (the broker's
//!   `x-death` header says why).
//! - Results: a durable queue for results of tasks without `reply_to`.

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
            delivery_limit: 5,
        }
    }

    /// Declares the three queues (idempotent when they exist with the same arguments).
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

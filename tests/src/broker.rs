//! A test's view of the real broker: its own uniquely named queues, publishing tasks and raw
//! bytes, collecting results, reading queue depths.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use warren_schemas::{decode, encode, Task, TaskId, TaskResult, DEFAULT_MAX_MESSAGE_BYTES};
use warren_worker::daemon::Topology;

/// The broker URL tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A connection plus a unique set of queue names.
pub struct TestBroker {
    /// Queue names the worker under test is given.
    pub topology: Topology,
    /// A private durable reply queue for this test.
    pub reply_queue: String,
    channel: Channel,
    _connection: Connection,
}

impl TestBroker {
    /// Connects and declares this test's queues (same declarations as the worker).
    pub async fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology::with_suffix(&suffix[..12]);
        let reply_queue = format!("warren.test.replies.{}", &suffix[..12]);
        let (connection, channel) = connect().await;
        topology.declare(&channel).await.expect("declare topology");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(reply_queue.as_str().into(), durable, FieldTable::default())
            .await
            .expect("declare reply queue");
        TestBroker {
            topology,
            reply_queue,
            channel,
            _connection: connection,
        }
    }

    /// Publishes `task` (confirmed) with this test's reply queue as `reply_to`.
    pub async fn publish(&self, task: &Task) {
        let props = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_message_id(task.id.to_string().into());
        self.publish_raw_with(&encode(task), props).await;
    }

    /// Publishes arbitrary bytes to the task queue (confirmed).
    pub async fn publish_raw(&self, body: &[u8]) {
        self.publish_raw_with(
            body,
            BasicProperties::default().with_reply_to(self.reply_queue.as_str().into()),
        )
        .await;
    }

    async fn publish_raw_with(&self, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.topology.tasks.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
        assert!(
            confirm.await.expect("confirm").is_ack(),
            "broker refused a test message"
        );
    }

    /// Messages ready in `queue` (not counting unacknowledged ones).
    pub async fn depth(&self, queue: &str) -> u32 {
        let (_c, channel) = connect().await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .expect("queue exists")
            .message_count()
    }

    /// Collects results from the reply queue until `want` distinct task ids arrived (or
    /// `timeout`). Returns every result received, duplicates included, in arrival order.
    pub async fn collect(&self, want: usize, timeout: Duration) -> Vec<TaskResult> {
        let (_c, channel) = connect().await;
        let mut consumer = channel
            .basic_consume(
                self.reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume replies");
        let deadline = Instant::now() + timeout;
        let mut results: Vec<TaskResult> = Vec::new();
        let mut ids = std::collections::HashSet::<TaskId>::new();
        while ids.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(delivery))) = tokio::time::timeout(left, consumer.next()).await else {
                break;
            };
            let result: TaskResult =
                decode(&delivery.data, DEFAULT_MAX_MESSAGE_BYTES).expect("results decode");
            let correlation = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string());
            assert_eq!(
                correlation,
                Some(result.task_id.to_string()),
                "correlation id is the task id"
            );
            delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack result");
            ids.insert(result.task_id);
            results.push(result);
        }
        results
    }

    /// Deletes this test's queues.
    pub async fn cleanup(self) {
        let (_c, channel) = connect().await;
        for queue in [
            &self.topology.tasks,
            &self.topology.dead,
            &self.topology.results,
            &self.reply_queue,
        ] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

async fn connect() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running at AMQP_URL (scripts/ensure-rabbitmq starts it)");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (connection, channel)
}

//! A test's view of the real broker: its own uniquely named queues, publishing tasks and raw
//! bytes, collecting results, reading queue depths.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use warren_schemas::Topology;
use warren_schemas::{decode, encode, Task, TaskId, TaskResult, DEFAULT_MAX_MESSAGE_BYTES};

/// The broker URL tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| warren_schemas::args::DEFAULT_AMQP_URL.into())
}

/// Deletes the test's queues (they are quorum queues: each one left behind costs the shared
/// broker memory and CPU in every later run). Runs on a thread of its own, since a test's
/// runtime may be shutting down.
impl Drop for TestBroker {
    fn drop(&mut self) {
        let url = self.url.clone();
        let queues = [
            self.topology.tasks.clone(),
            self.topology.dead.clone(),
            self.topology.results.clone(),
            self.reply_queue.clone(),
        ];
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let connection = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .ok()?;
                let channel = connection.create_channel().await.ok()?;
                for queue in &queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "test over".into()).await;
                Some(())
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(()))) {
            eprintln!("could not delete the test's queues ({:?})", self.topology);
        }
    }
}

/// A connection plus a unique set of queue names.
pub struct TestBroker {
    /// Queue names the worker under test is given.
    pub topology: Topology,
    /// A private durable reply queue for this test.
    pub reply_queue: String,
    /// The broker URL this test's queues live on.
    pub url: String,
    channel: Channel,
    _connection: Connection,
}

impl TestBroker {
    /// Connects and declares this test's queues (same declarations as the worker).
    pub async fn new() -> Self {
        Self::new_on(amqp_url()).await
    }

    /// Like [`TestBroker::new`], on the broker (or virtual host) at `url`.
    pub async fn new_on(url: String) -> Self {
        Self::new_with_delivery_limit(url, 5).await
    }

    /// Like [`TestBroker::new_on`], with the task queue's `x-delivery-limit` set to `limit`.
    pub async fn new_with_delivery_limit(url: String, limit: u32) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology {
            delivery_limit: limit,
            ..Topology::with_suffix(&suffix[..12])
        };
        let reply_queue = format!("warren.test.replies.{}", &suffix[..12]);
        let (connection, channel) = connect(&url).await;
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
            url,
            channel,
            _connection: connection,
        }
    }

    /// Replaces this test's publishing connection (after a test closed it on purpose).
    pub async fn reconnect(&mut self) {
        let (connection, channel) = connect(&self.url).await;
        self.channel = channel;
        self._connection = connection;
    }

    /// Publishes `task` (confirmed) with this test's reply queue as `reply_to`.
    pub async fn publish(&self, task: &Task) {
        let props = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_message_id(task.id.to_string().into());
        self.publish_raw_with(&encode(task), props).await;
    }

    /// Publishes `task` (confirmed) with `reply_to` naming any queue, existing or not.
    pub async fn publish_replying_to(&self, task: &Task, reply_to: &str) {
        let props = BasicProperties::default()
            .with_reply_to(reply_to.into())
            .with_message_id(task.id.to_string().into());
        self.publish_raw_with(&encode(task), props).await;
    }

    /// Takes (and acks) the next message of `queue`, waiting up to `timeout` for one.
    pub async fn take(&self, queue: &str, timeout: Duration) -> Option<(BasicProperties, Vec<u8>)> {
        let (_c, channel) = connect(&self.url).await;
        let deadline = Instant::now() + timeout;
        loop {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(message) = got {
                let delivery = message.delivery;
                return Some((delivery.properties, delivery.data));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `queue` holds at least `count` ready messages (or `timeout`); returns the
    /// last depth seen.
    pub async fn wait_depth(&self, queue: &str, count: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.depth(queue).await;
            if depth >= count || Instant::now() >= deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes many tasks with confirms pipelined (at most 1024 unconfirmed), for big batches.
    pub async fn publish_many(&self, tasks: &[Task]) {
        let mut unconfirmed = std::collections::VecDeque::new();
        for task in tasks {
            if unconfirmed.len() >= 1024 {
                Self::expect_ack(unconfirmed.pop_front()).await;
            }
            let props = BasicProperties::default()
                .with_reply_to(self.reply_queue.as_str().into())
                .with_message_id(task.id.to_string().into());
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.topology.tasks.as_str().into(),
                    BasicPublishOptions::default(),
                    &encode(task),
                    props,
                )
                .await
                .expect("publish");
            unconfirmed.push_back(confirm);
        }
        while !unconfirmed.is_empty() {
            Self::expect_ack(unconfirmed.pop_front()).await;
        }
    }

    async fn expect_ack(confirm: Option<lapin::PublisherConfirm>) {
        if let Some(confirm) = confirm {
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "broker refused a test message"
            );
        }
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
        let (_c, channel) = connect(&self.url).await;
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
        let mut results = Vec::new();
        self.collect_more(&mut results, want, timeout).await;
        results
    }

    /// Appends results to `results` until it holds `total` distinct task ids (or `timeout`):
    /// continues an earlier [`collect`](Self::collect) whose results were already acked.
    pub async fn collect_more(
        &self,
        results: &mut Vec<TaskResult>,
        total: usize,
        timeout: Duration,
    ) {
        let (_c, channel) = connect(&self.url).await;
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
        let mut ids: std::collections::HashSet<TaskId> =
            results.iter().map(|r| r.task_id).collect();
        while ids.len() < total {
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
    }
}

async fn connect(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running at AMQP_URL (scripts/ensure-rabbitmq starts it)");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (connection, channel)
}

/// Runs `rabbitmqctl` on the local broker node and returns its stdout; panics with its stderr
/// when it fails. Fault tests use it to do what an operator (or a network) would do.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (the local RabbitMQ node's CLI)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A virtual host of its own (created if missing, guest given full rights) and its URL, so a test
/// can force-close every connection of that vhost without touching other tests' connections.
pub fn private_vhost(name: &str) -> String {
    let exists = rabbitmqctl(&["list_vhosts", "-q", "--no-table-headers"])
        .lines()
        .any(|line| line.trim() == name);
    if !exists {
        rabbitmqctl(&["add_vhost", name]);
    }
    rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
    let base = amqp_url();
    let root = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(root, _)| root);
    format!("{root}/{name}")
}

/// Closes every client connection of `vhost`, as a broker restart or network cut would.
pub fn close_all_connections(vhost: &str) {
    rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        vhost,
        "warren test: connection force-closed",
    ]);
}

/// Messages delivered and not yet acknowledged in `queue` of `vhost`, as the broker counts them.
/// For quorum queues the broker refreshes this figure every statistics interval (5 s by default),
/// so a sampler must watch for longer than that.
pub fn unacked(vhost: &str, queue: &str) -> u32 {
    rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "-p",
        vhost,
        "name",
        "messages_unacknowledged",
    ])
    .lines()
    .filter_map(|line| line.split_once('\t'))
    .find(|(name, _)| name.trim() == queue)
    .and_then(|(_, count)| count.trim().parse().ok())
    .unwrap_or(0)
}

/// Prefetch counts of the consumers on `queue` of `vhost`, as the broker applies them.
pub fn consumer_prefetch(vhost: &str, queue: &str) -> Vec<u32> {
    rabbitmqctl(&[
        "list_consumers",
        "-q",
        "--no-table-headers",
        "-p",
        vhost,
        "queue_name",
        "prefetch_count",
    ])
    .lines()
    .filter_map(|line| line.split_once('\t'))
    .filter(|(name, _)| name.trim() == queue)
    .filter_map(|(_, count)| count.trim().parse().ok())
    .collect()
}

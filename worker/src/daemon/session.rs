//! One broker session: connect, declare, consume — the lanes take the deliveries — until the
//! connection or the consumer ends or the worker stops; then the steps of a stop (stop
//! consuming, drain, close) or of a loss (abandon), which [`super::run_with`] calls in order.
//!
//! lapin's automatic recovery does not re-apply `basic_qos` and a consumer cancelled by the
//! broker simply ends, so warren owns the reconnect path: every session starts from a fresh
//! connection and redoes everything (topology, QoS, consumer).

use std::sync::Arc;
use std::time::Instant;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_schemas::nodes::{ConnectError, Connected, NodeFailure};
use warren_schemas::topology::DeclareError;
use warren_schemas::{BrokerNodes, Topology};

use super::delivery::{Carrier, TaskPath};
use super::lanes::{Feed, FeedEnd, Lanes};
use super::settler::{Settler, Settling};

/// What every session of a worker connects with.
pub struct SessionSettings {
    /// The broker's nodes (one, or a cluster's).
    pub nodes: BrokerNodes,
    /// The worker's id: names the connection (operators tell workers apart in the management UI
    /// and `rabbitmqctl`) and the consumer tag.
    pub worker_id: String,
    /// Queues declared at every connect; tasks are consumed from `topology.tasks`.
    pub topology: Topology,
    /// Deliveries outstanding per consumer.
    pub prefetch: u16,
}

/// A session that is consuming: its connection, channels, the lanes' feed and its settling.
pub struct Session {
    /// Index of the node connected to, in [`SessionSettings::nodes`].
    pub node: usize,
    /// Nodes tried before that one that did not answer.
    pub skipped: Vec<NodeFailure>,
    connection: Connection,
    consume: Channel,
    publish: Channel,
    consumer_tag: String,
    feed: Arc<Feed<lapin::Consumer, Carrier>>,
    settling: Settling,
}

/// What a drain left behind at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Deliveries not settled: the broker redelivers them.
    pub abandoned: usize,
    /// Every lane left the session (no task of it still running).
    pub lanes_left: bool,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No node accepted a connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Connected to node `node`, then setting up failed (the connection is dropped).
    #[error("{source}")]
    Setup {
        /// Index of the node.
        node: usize,
        /// What failed.
        source: SetupError,
    },
}

/// What failed after connecting.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A channel, QoS or the consumer.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// Declaring the topology.
    #[error(transparent)]
    Declare(#[from] DeclareError),
}

impl Session {
    /// Connects to a node (any but `last` first), declares the topology, sets QoS, starts
    /// consuming and hands the consumer to the lanes. The session is over when `over` is
    /// cancelled or the consumer ends.
    pub async fn open(
        settings: &SessionSettings,
        last: Option<usize>,
        lanes: &Lanes,
        path: &Arc<TaskPath>,
        over: CancellationToken,
    ) -> Result<Session, OpenError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("warren-worker {}", settings.worker_id).into());
        let connected = settings.nodes.connect(&properties, last).await?;
        let node = connected.node;
        Self::set_up(settings, connected, lanes, path, over)
            .await
            .map_err(|source| OpenError::Setup { node, source })
    }

    async fn set_up(
        settings: &SessionSettings,
        Connected {
            connection,
            node,
            skipped,
        }: Connected,
        lanes: &Lanes,
        path: &Arc<TaskPath>,
        over: CancellationToken,
    ) -> Result<Session, SetupError> {
        let consume = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        settings.topology.declare(&consume).await?;
        // Per-consumer prefetch (quorum queues refuse global QoS).
        consume
            .basic_qos(settings.prefetch, BasicQosOptions { global: false })
            .await?;
        let consumer_tag = format!("warren-{}", settings.worker_id);
        let consumer = consume
            .basic_consume(
                settings.topology.tasks.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(
            node = settings.nodes.nodes()[node].label(),
            queue = %settings.topology.tasks,
            prefetch = settings.prefetch,
            "consuming"
        );
        let (settler, settling) = Settler::start(consume.clone(), settings.prefetch);
        let carrier = Carrier::new(path.clone(), publish.clone(), settler);
        let feed = lanes.feed(consumer, carrier, over);
        Ok(Session {
            node,
            skipped,
            connection,
            consume,
            publish,
            consumer_tag,
            feed,
            settling,
        })
    }

    /// Waits until the session is over, and says why.
    pub async fn ended(&self) -> FeedEnd {
        self.feed.ended().await
    }

    /// Stops the broker's deliveries to this worker (the lanes already stopped taking them).
    pub async fn stop_consuming(&self) {
        let cancel = self.consume.basic_cancel(
            self.consumer_tag.as_str().into(),
            BasicCancelOptions::default(),
        );
        if let Err(error) = cancel.await {
            warn!(%error, "could not cancel the consumer");
        }
    }

    /// Lets the tasks in flight finish — run, publish, confirm, ack — until `deadline`, then
    /// sends the acks that are due. What is unfinished then stays unacked: the broker
    /// redelivers it.
    pub async fn drain(&mut self, deadline: Instant) -> Drained {
        let lanes_left = self.feed.left(deadline).await;
        let abandoned = self
            .settling
            .drained(deadline.saturating_duration_since(Instant::now()))
            .await;
        Drained {
            abandoned,
            lanes_left,
        }
    }

    /// Sends the last acks and closes the channels and the connection.
    pub async fn close(self) {
        self.settling.finish().await;
        let _ = self.consume.close(200, "worker stopping".into()).await;
        let _ = self.publish.close(200, "worker stopping".into()).await;
        let _ = self.connection.close(200, "worker stopping".into()).await;
    }

    /// Gives the session up (the connection is gone or going): nothing more is sent; tasks
    /// still running finish in the background, fail to publish or ack, and the broker
    /// redelivers their messages to whoever consumes next.
    pub async fn abandon(self) {
        self.settling.abandon();
        let _ = self.connection.close(200, "reconnecting".into()).await;
    }
}

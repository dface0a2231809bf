//! One broker session: connect, declare, consume — the lanes take the deliveries — until the
//! connection or consumer ends or the worker is asked to stop; then, when stopping, drain.
//!
//! lapin's automatic recovery does not re-apply `basic_qos` and a consumer cancelled by the
//! broker simply ends, so warren owns the reconnect path: every session starts from a fresh
//! connection and redoes everything (topology, QoS, consumer). [`super::run`] loops over
//! sessions with capped backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lanes::{FeedEnd, Lanes};
use super::settler::Settler;
use super::Worker;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The worker was asked to stop and drained (or hit the drain deadline).
    Stopped,
    /// The broker cancelled the consumer or closed the stream; reconnect.
    ConsumerEnded,
}

/// Runs one session. Errors mean the connection failed or was lost.
pub async fn serve(
    worker: &Arc<Worker>,
    lanes: &Lanes,
    stop: &CancellationToken,
) -> lapin::Result<SessionEnd> {
    // Named, so operators can tell workers apart in the management UI and `rabbitmqctl`.
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("warren-worker {}", worker.runner_id).into());
    let connection = Connection::connect(&worker.amqp_url, properties).await?;
    let consume = connection.create_channel().await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    worker.topology.declare(&consume).await?;
    // Per-consumer prefetch (quorum queues refuse global QoS).
    consume
        .basic_qos(worker.prefetch, BasicQosOptions { global: false })
        .await?;
    let tag = format!("warren-{}", worker.runner_id);
    let consumer = consume
        .basic_consume(
            worker.topology.tasks.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    worker.consuming.store(true, Ordering::Relaxed);
    info!(queue = %worker.topology.tasks, prefetch = worker.prefetch, "consuming");

    let (settler, mut settling) = Settler::start(consume.clone(), worker.prefetch);
    let over = stop.child_token();
    let feed = lanes.feed(consumer, publish.clone(), settler, over);
    let end = match feed.ended().await {
        FeedEnd::Over => Ok(SessionEnd::Stopped),
        FeedEnd::ConsumerEnded => Ok(SessionEnd::ConsumerEnded),
        FeedEnd::Failed(error) => Err(error),
    };
    worker.consuming.store(false, Ordering::Relaxed);

    match end {
        Ok(SessionEnd::Stopped) => {
            // Ordered shutdown: stop consuming → finish in flight (run, publish, confirm, ack) →
            // close.
            if let Err(error) = consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                warn!(%error, "could not cancel the consumer");
            }
            info!(deadline = ?worker.drain_timeout, "draining");
            let deadline = Instant::now() + worker.drain_timeout;
            let lanes_done = feed.left(deadline).await;
            let abandoned = settling
                .drained(deadline.saturating_duration_since(Instant::now()))
                .await;
            if abandoned > 0 || !lanes_done {
                warn!(
                    abandoned,
                    "drain deadline reached; unfinished tasks will be redelivered"
                );
            }
            // Let the last acks out.
            settling.finish().await;
            let _ = consume.close(200, "worker stopping".into()).await;
            let _ = publish.close(200, "worker stopping".into()).await;
            let _ = connection.close(200, "worker stopping".into()).await;
            Ok(SessionEnd::Stopped)
        }
        other => {
            // The connection is gone or going: in-flight tasks finish in the background, fail to
            // publish or ack, and the broker redelivers their messages to whoever consumes next.
            settling.abandon();
            let _ = connection.close(200, "reconnecting".into()).await;
            other
        }
    }
}

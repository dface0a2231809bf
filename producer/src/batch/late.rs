//! Late results: those of a batch whose results queue had expired (or was deleted) when they
//! arrived. A worker publishes such a result to the unroutable-results queue
//! ([`warren_schemas::Topology::unroutable_queue`], by default `warren.results`), which every
//! batch and client shares; [`take`] moves this batch's results from there to the output
//! directory and leaves every other message where it was.
//!
//! How: one `basic.get` at a time, at most as many as the queue held when the scan started (so
//! messages arriving meanwhile never make it endless). A result of this batch is written to
//! disk, then acked; any other message is left unacked, so the next `basic.get` moves past it,
//! and closing the channel at the end puts them all back, in their order. A crash mid-scan does
//! the same: the broker requeues a closed channel's unacked messages. The cost: a consumer of
//! that queue does not see the held messages until the scan ends, and the scan reads each
//! message in the queue once.

use lapin::options::{BasicAckOptions, BasicGetOptions};
use tracing::{debug, info};
use warren_schemas::{decode, TaskResult, DEFAULT_MAX_MESSAGE_BYTES};

use super::manifest::{Manifest, ManifestTask};
use super::sink::Sink;
use super::Observer;
use crate::error::{ProducerError, Result};
use crate::producer::Producer;

/// What [`take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateResults {
    /// The batch's results queue, found gone.
    pub expired_queue: String,
    /// Where the late results were looked for.
    pub unroutable_queue: String,
    /// Results of this batch written to disk from there.
    pub taken: u64,
    /// Messages looked at.
    pub scanned: u64,
}

/// Writes every result of `manifest`'s batch found in the unroutable-results queue to `sink`
/// (acking each once it is on disk); leaves the other messages in the queue.
pub async fn take(
    producer: &Producer,
    manifest: &Manifest,
    sink: &mut Sink,
    observer: &dyn Observer,
) -> Result<LateResults> {
    let queue = producer.topology().unroutable_queue().to_owned();
    let mut late = LateResults {
        expired_queue: manifest.results_queue.clone(),
        unroutable_queue: queue.clone(),
        taken: 0,
        scanned: 0,
    };
    let depth = match producer.inspect_queue(&queue).await {
        Ok(depth) => depth.messages,
        Err(ProducerError::QueueNotFound { .. }) => return Ok(late),
        Err(error) => return Err(error),
    };
    let channel = producer.channel().await?;
    let scanned = scan(&channel, &queue, depth, manifest, sink, observer, &mut late).await;
    // Puts back every message left unacked: the ones of other batches and clients.
    let _ = channel.close(200, "late results taken".into()).await;
    scanned?;
    info!(queue = %queue, taken = late.taken, scanned = late.scanned, batch_id = %manifest.batch_id, "late results taken from the unroutable-results queue");
    Ok(late)
}

async fn scan(
    channel: &lapin::Channel,
    queue: &str,
    depth: u32,
    manifest: &Manifest,
    sink: &mut Sink,
    observer: &dyn Observer,
    late: &mut LateResults,
) -> Result<()> {
    for _ in 0..depth {
        let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| ProducerError::broker(format!("reading queue {queue}"), e))?
        else {
            break;
        };
        late.scanned += 1;
        let delivery = message.delivery;
        let result = match decode::<TaskResult>(&delivery.data, DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(result) => result,
            Err(error) => {
                debug!(%error, "leaving a message that is not a result");
                continue;
            }
        };
        let Some(entry) = of_batch(manifest, &result) else {
            continue;
        };
        if !sink.is_done(&result.task_id) {
            let record = sink.write(&result, entry.index, &entry.name)?.clone();
            late.taken += 1;
            observer.completed(&record);
        }
        // On disk (now or before): the message has served its purpose.
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| {
                ProducerError::broker(
                    format!("acking the late result of task {}", result.task_id),
                    e,
                )
            })?;
    }
    Ok(())
}

/// The manifest entry `result` answers, when it is one of this batch's tasks.
pub(super) fn of_batch<'m>(
    manifest: &'m Manifest,
    result: &TaskResult,
) -> Option<&'m ManifestTask> {
    result
        .batch
        .filter(|b| b.batch_id == manifest.batch_id)
        .and_then(|b| manifest.task(b.index))
        .filter(|entry| entry.task_id == result.task_id)
}

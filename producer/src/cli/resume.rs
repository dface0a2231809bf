//! Riding out a lost broker connection in `warren batch` and `warren collect`.
//!
//! A batch is resumable by construction (manifest + journal + results on disk; see
//! [`crate::batch`]), so after a broker restart, failover or force-closed connection the CLI does
//! what a user would do by hand: reconnect, then carry on as `warren collect --publish-rest` —
//! republish what was never confirmed, publish what was never sent, collect the rest. Nothing
//! already on disk is written again; duplicates from republishing are dropped by task id.
//!
//! Retries back off from 100 ms to 5 s and give up once the broker has been unreachable for
//! [`RECONNECT_WINDOW`] in a row, or on Ctrl-C; the error then says how to resume by hand.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;
use warren_schemas::{BrokerNodes, Topology};

use crate::batch::{self, BatchOptions, BatchReport, Observer};
use crate::error::Result;
use crate::producer::Producer;

/// How long the broker may stay unreachable before a batch gives up.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(120);

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Where a batch lives and how to carry on with it.
pub struct Resume<'a> {
    /// The broker's nodes.
    pub nodes: &'a BrokerNodes,
    /// The node the batch was connected to (tried last when reconnecting).
    pub node: usize,
    /// Queue names (as the batch was started with).
    pub topology: &'a Topology,
    /// The batch.
    pub batch_id: Uuid,
    /// Its output directory.
    pub out: &'a Path,
    /// Whether resuming also publishes inputs that were never sent (`batch`: yes; `collect`:
    /// as its `--publish-rest` says).
    pub publish_rest: bool,
    /// Its options (output, bounds, rate, whether to wait).
    pub options: &'a BatchOptions,
    /// Progress.
    pub observer: &'a dyn Observer,
    /// Ctrl-C.
    pub shutdown: &'a CancellationToken,
}

impl Resume<'_> {
    /// Returns `outcome` unless it is a lost connection; then reconnects and resumes until the
    /// batch is done, fails otherwise, is interrupted, or the broker stays away too long. An
    /// error that stops the batch for good says how to resume it by hand.
    pub async fn after(&self, outcome: Result<BatchReport>) -> anyhow::Result<BatchReport> {
        self.ride_out(outcome)
            .await
            .map_err(|error| with_resume_hint(error, self.batch_id, self.out))
    }

    async fn ride_out(&self, mut outcome: Result<BatchReport>) -> Result<BatchReport> {
        let mut delay = FIRST_DELAY;
        let mut unreachable_since: Option<Instant> = None;
        let mut last_node = self.node;
        loop {
            let error = match outcome {
                Err(error) if error.is_connection_lost() => error,
                other => return other,
            };
            let since = *unreachable_since.get_or_insert_with(Instant::now);
            if self.shutdown.is_cancelled() || since.elapsed() > RECONNECT_WINDOW {
                return Err(error);
            }
            let node = self.nodes.nodes()[last_node].label();
            warn!(node, %error, retry_in = ?delay, "lost the broker connection mid-batch; reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(error),
            }
            delay = (delay * 2).min(MAX_DELAY);
            let connect = Producer::connect_to(self.nodes, self.topology.clone(), Some(last_node));
            let producer = match connect.await {
                Ok(producer) => producer,
                Err(connect_error) => {
                    outcome = Err(if connect_error.is_connection_lost() {
                        connect_error
                    } else {
                        // Refused for good (credentials, vhost): no point retrying.
                        return Err(connect_error);
                    });
                    continue;
                }
            };
            // Connected: the broker is back, so the unreachable clock starts again next time
            // (the delay keeps growing, so a flapping broker is not hammered).
            unreachable_since = None;
            last_node = producer.node();
            let node = self.nodes.nodes()[last_node].label();
            warn!(node, "reconnected; carrying on with the batch");
            outcome = batch::collect(
                &producer,
                self.batch_id,
                self.out,
                self.publish_rest,
                self.options,
                self.observer,
                self.shutdown,
            )
            .await;
            producer.close().await;
        }
    }
}

/// Adds "how to resume" to an error that stopped a batch midway (broker or disk trouble).
fn with_resume_hint(error: crate::ProducerError, batch_id: Uuid, out: &Path) -> anyhow::Error {
    use crate::ProducerError::{Broker, ConsumerEnded, Declare, Internal, Io, Nacked};
    let resumable = matches!(
        error,
        Broker { .. } | Declare(_) | Nacked { .. } | Io { .. } | Internal(_) | ConsumerEnded { .. }
    );
    if resumable && batch::manifest::Manifest::path(out).exists() {
        anyhow::anyhow!(
            "{error}\nbatch {batch_id} stopped; what is in {} is complete and correct. Resume with:\n  warren collect {batch_id} --out {} --publish-rest",
            out.display(),
            out.display()
        )
    } else {
        error.into()
    }
}

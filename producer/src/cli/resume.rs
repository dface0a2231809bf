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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;
use warren_schemas::{BrokerNodes, Topology};

use crate::batch::late::LateResults;
use crate::batch::manifest::Manifest;
use crate::batch::sink::Record;
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
        let mut refused_since: Option<Instant> = None;
        let mut last_node = self.node;
        let progress = Progress::new(self.observer);
        loop {
            let error = match outcome {
                Err(error) if error.is_connection_lost() || error.is_refusal() => error,
                other => return other,
            };
            let clock = if error.is_refusal() {
                &mut refused_since
            } else {
                &mut unreachable_since
            };
            let since = *clock.get_or_insert_with(Instant::now);
            if self.shutdown.is_cancelled() || since.elapsed() > RECONNECT_WINDOW {
                return Err(error);
            }
            let node = self.nodes.nodes()[last_node].label();
            if error.is_refusal() {
                warn!(node, %error, retry_in = ?delay, "the broker refused a task mid-batch (a queue electing a new leader, or full); publishing it again");
            } else {
                warn!(node, %error, retry_in = ?delay, "lost the broker connection mid-batch; reconnecting");
            }
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
            let done_before = progress.done();
            outcome = batch::collect(
                &producer,
                self.batch_id,
                self.out,
                self.publish_rest,
                self.options,
                &progress,
                self.shutdown,
            )
            .await;
            producer.close().await;
            if progress.done() > done_before {
                // Got somewhere: a refusal now is a new one, and the next retry is quick.
                refused_since = None;
                delay = FIRST_DELAY;
            }
        }
    }
}

/// Passes everything on to the batch's observer and counts confirms and results, so that
/// refusals that each come after some progress are not mistaken for a broker that refuses
/// for good.
struct Progress<'a> {
    observer: &'a dyn Observer,
    done: AtomicU64,
}

impl<'a> Progress<'a> {
    fn new(observer: &'a dyn Observer) -> Self {
        Progress {
            observer,
            done: AtomicU64::new(0),
        }
    }

    /// Confirms and results seen so far.
    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

impl Observer for Progress<'_> {
    fn started(&self, manifest: &Manifest, to_publish: u64, expected: u64, done: u64) {
        self.observer.started(manifest, to_publish, expected, done);
    }

    fn confirmed(&self, count: u64) {
        self.done.fetch_add(count, Ordering::Relaxed);
        self.observer.confirmed(count);
    }

    fn completed(&self, record: &Record) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.observer.completed(record);
    }

    fn late_results(&self, late: &LateResults, missing: u64) {
        self.observer.late_results(late, missing);
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

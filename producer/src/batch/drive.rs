//! The two loops of a batch run, side by side in one task: **publish** (journal a burst of tasks,
//! publish it, journal the confirms; paced by `--rate`, bounded by `--max-outstanding`) and
//! **collect** (write each burst of results received, then ack it with one message) until every
//! published task has its result on disk. Working in bursts makes one `write`, one ack and one
//! wake-up serve many tasks.
//!
//! Either loop failing, or the shutdown signal, stops both: publishing stops issuing new tasks
//! but still waits for the confirms of those on the wire (so the journal knows about them), and
//! collecting stops after the result in hand is written and acked. Unacked results stay in the
//! queue for the next `collect`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_schemas::task::unix_now_ns;
use warren_schemas::{BatchRef, Task};

use super::inputs::{self, BatchInput};
use super::journal::Journal;
use super::manifest::Manifest;
use super::sink::Sink;
use super::summary::Summary;
use super::{BatchOptions, BatchReport, Observer};
use crate::error::{ProducerError, Result};
use crate::producer::Producer;
use crate::publisher::{Confirmed, Publisher};
use crate::results::{Received, ResultStream, RESULTS_PREFETCH};

/// Bursts of results smaller than this wait [`RESULTS_LINGER`] for more before being written
/// and acked: when results trickle in one by one, a write, an ack and two thread wake-ups per
/// result would cost more than the results themselves.
const RESULTS_LINGER_BELOW: usize = 32;

/// How long a small burst of results waits for more (the way a network card coalesces
/// interrupts): a millisecond of delay on results that wait for the batch to end anyway.
const RESULTS_LINGER: Duration = Duration::from_millis(1);

/// One run over a batch: the shared context of the publish and collect loops.
pub(super) struct Run<'a> {
    /// The connection to publish and consume on.
    pub producer: &'a Producer,
    /// The batch.
    pub manifest: &'a Manifest,
    /// Its output directory.
    pub out: PathBuf,
    /// Told about progress.
    pub observer: &'a dyn Observer,
    /// Cancelled by the user (Ctrl-C): stop both loops, keep everything consistent.
    pub shutdown: &'a CancellationToken,
    /// When this run started, for the rate in the report.
    pub started: Instant,
}

impl Run<'_> {
    /// Publishes `to_publish` and (when waiting) collects until every published task has a
    /// result on disk.
    pub async fn drive(
        &self,
        mut journal: Journal,
        mut sink: Sink,
        to_publish: Vec<(u64, BatchInput)>,
        options: &BatchOptions,
    ) -> Result<BatchReport> {
        let mut expected: HashSet<u64> = journal.state().sent.iter().copied().collect();
        expected.extend(to_publish.iter().map(|(i, _)| *i));
        let done_expected = sink
            .records()
            .iter()
            .filter(|r| expected.contains(&r.index))
            .count() as u64;
        self.observer.started(
            self.manifest,
            to_publish.len() as u64,
            expected.len() as u64,
            done_expected,
        );
        // Stops both loops: the user's shutdown, or either loop failing.
        let stop = self.shutdown.child_token();
        let mut stream = if options.wait {
            Some(
                ResultStream::consume(self.producer, &self.manifest.results_queue, sink.done_ids())
                    .await?,
            )
        } else {
            None
        };
        let publishing = async {
            let outcome = self.publish(&mut journal, to_publish, options, &stop).await;
            if outcome.is_err() {
                stop.cancel();
            }
            outcome
        };
        let collecting = async {
            let Some(stream) = stream.as_mut() else {
                return Ok(0);
            };
            let outcome = self.collect(stream, &mut sink, expected, &stop).await;
            if outcome.is_err() {
                stop.cancel();
            }
            outcome
        };
        let (published, collected) = tokio::join!(publishing, collecting);
        let duplicates = stream.as_ref().map_or(0, ResultStream::duplicates);
        if let Some(stream) = stream {
            stream.close().await;
        }
        published?;
        let collected_now = collected?;
        let interrupted = self.shutdown.is_cancelled();
        let report = self.report(
            journal.state().sent.len() as u64,
            &sink,
            collected_now,
            duplicates,
            interrupted,
            options.wait,
        );
        if options.wait && !interrupted && report.missing() == 0 && report.unpublished() == 0 {
            self.tidy_up().await;
        }
        Ok(report)
    }

    /// Publishes the tasks in bursts (journal a burst, publish it, journal the confirms that
    /// came), paced by `rate`, until done or `stop`.
    async fn publish(
        &self,
        journal: &mut Journal,
        to_publish: Vec<(u64, BatchInput)>,
        options: &BatchOptions,
        stop: &CancellationToken,
    ) -> Result<()> {
        if to_publish.is_empty() {
            return Ok(());
        }
        let mut publisher = Publisher::new(self.producer, options.max_outstanding).await?;
        let started = tokio::time::Instant::now();
        let reply_to = Some(self.manifest.results_queue.as_str());
        // Half the confirm window: one burst goes out while the previous one's confirms come.
        let burst_max = (options.max_outstanding / 2).max(1);
        let mut pending = to_publish.into_iter();
        let mut published = 0usize;
        let mut outcome = Ok(());
        while pending.len() > 0 && !stop.is_cancelled() {
            let mut burst = burst_max.min(pending.len());
            if let Some(rate) = options.rate {
                // Tasks due by now; when none is, sleep until the next one is.
                let due = (started.elapsed().as_secs_f64() * rate) as usize + 1;
                if due <= published {
                    let at = started + Duration::from_secs_f64(published as f64 / rate);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep_until(at) => {}
                    }
                    continue;
                }
                burst = burst.min(due - published);
            }
            let step = async {
                let mut indices = Vec::with_capacity(burst);
                let mut tasks = Vec::with_capacity(burst);
                for (index, input) in pending.by_ref().take(burst) {
                    tasks.push(self.task(index, &input)?);
                    indices.push(index);
                }
                journal.sent(&indices)?;
                let confirmed = publisher.publish_all(&tasks, reply_to).await?;
                self.record_confirms(journal, &confirmed)?;
                Ok::<_, ProducerError>(tasks.len())
            };
            match step.await {
                Ok(n) => published += n,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        // Whatever happened, wait for the confirms of what is on the wire (bounded: the broker
        // answers quickly or the connection is gone), recording them as they come.
        while let Some(confirm) = publisher.next_confirmed().await {
            let recorded = match confirm {
                Ok(first) => match publisher.ready().await {
                    Ok(mut more) => {
                        more.insert(0, first);
                        self.record_confirms(journal, &more)
                    }
                    Err(e) => self.record_confirms(journal, &[first]).and(Err(e)),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        publisher.close().await;
        outcome
    }

    fn record_confirms(&self, journal: &mut Journal, confirmed: &[Confirmed]) -> Result<()> {
        if confirmed.is_empty() {
            return Ok(());
        }
        let indices: Vec<u64> = confirmed
            .iter()
            .filter_map(|c| c.batch.map(|b| b.index))
            .collect();
        journal.confirmed(&indices)?;
        self.observer.confirmed(confirmed.len() as u64);
        Ok(())
    }

    /// The task for input `index`.
    fn task(&self, index: u64, input: &BatchInput) -> Result<Task> {
        build_task(self.manifest, index, input)
    }

    /// Writes results until every index in `expected` has one, or `stop`: each burst of results
    /// already received is written, then acked with one message. Returns how many this run
    /// wrote.
    async fn collect(
        &self,
        stream: &mut ResultStream,
        sink: &mut Sink,
        expected: HashSet<u64>,
        stop: &CancellationToken,
    ) -> Result<u64> {
        let done: HashSet<u64> = sink.records().iter().map(|r| r.index).collect();
        let mut remaining: HashSet<u64> = expected.difference(&done).copied().collect();
        let mut written = 0;
        let mut burst = Vec::with_capacity(usize::from(RESULTS_PREFETCH));
        while !remaining.is_empty() {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                next = stream.next() => match next {
                    Some(received) => received?,
                    None => return Err(ProducerError::ConsumerEnded {
                        queue: self.manifest.results_queue.clone(),
                    }),
                },
            };
            burst.clear();
            burst.push(first);
            self.take_ready(stream, &mut burst).await?;
            if burst.len() < RESULTS_LINGER_BELOW {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RESULTS_LINGER) => {}
                }
                self.take_ready(stream, &mut burst).await?;
            }
            let mut ours = Vec::with_capacity(burst.len());
            for received in &burst {
                let result = &received.result;
                match super::late::of_batch(self.manifest, result) {
                    Some(entry) => ours.push((result, entry.index, entry.name.as_str())),
                    None => {
                        warn!(task_id = %result.task_id, "dropping a result that is not from this batch")
                    }
                }
            }
            let records = sink.write_all(ours)?;
            for record in records {
                remaining.remove(&record.index);
                self.observer.completed(record);
            }
            written += records.len() as u64;
            if let Some(last) = burst.pop() {
                stream.ack_through(last).await?;
            }
        }
        Ok(written)
    }

    /// Adds the results already received to `burst`, up to the prefetch window.
    async fn take_ready(&self, stream: &mut ResultStream, burst: &mut Vec<Received>) -> Result<()> {
        while burst.len() < usize::from(RESULTS_PREFETCH) {
            match stream.next_ready().await {
                Some(received) => burst.push(received?),
                None => break,
            }
        }
        Ok(())
    }

    pub fn report(
        &self,
        published: u64,
        sink: &Sink,
        collected_now: u64,
        duplicates: u64,
        interrupted: bool,
        waited: bool,
    ) -> BatchReport {
        BatchReport {
            batch_id: self.manifest.batch_id,
            out: self.out.clone(),
            results_queue: self.manifest.results_queue.clone(),
            inputs: self.manifest.tasks.len() as u64,
            published,
            results: sink.records().len() as u64,
            collected_now,
            duplicates,
            summary: Summary::of(sink.records()),
            elapsed: self.started.elapsed(),
            interrupted,
            waited,
            late: None,
        }
    }

    /// Every published result is on disk: the results queue has served its purpose.
    pub async fn tidy_up(&self) {
        match self
            .producer
            .delete_queue_if_empty(&self.manifest.results_queue)
            .await
        {
            Ok(()) => info!(queue = %self.manifest.results_queue, "results queue deleted"),
            Err(e) => {
                info!(queue = %self.manifest.results_queue, error = %e, "results queue left to expire")
            }
        }
    }
}

/// The task of `manifest`'s input `index`: its id, module, args and env (the batch's, then the
/// input's), limits and place in the batch.
pub(super) fn build_task(manifest: &Manifest, index: u64, input: &BatchInput) -> Result<Task> {
    let entry = manifest
        .task(index)
        .ok_or_else(|| ProducerError::Internal(format!("task {index} is not in the manifest")))?;
    let bytes = input.read().map_err(|e| match &input.data {
        inputs::InputData::File(path) => ProducerError::io(path, e),
        inputs::InputData::Inline(_) => ProducerError::Internal(e.to_string()),
    })?;
    Ok(Task {
        id: entry.task_id,
        module: manifest.module.clone(),
        input: bytes,
        args: manifest.args.iter().chain(&input.args).cloned().collect(),
        env: manifest
            .env
            .iter()
            .filter(|(k, _)| !input.env.iter().any(|(k2, _)| k2 == k))
            .chain(&input.env)
            .cloned()
            .collect(),
        limits: manifest.limits,
        submitted_at_unix_ns: unix_now_ns(),
        batch: Some(BatchRef {
            batch_id: manifest.batch_id,
            index,
        }),
    })
}

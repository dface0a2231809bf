//! Where a task's result goes, and what happens when the broker does not take it there.
//!
//! A result is published `mandatory` to its task's `reply_to` (else the results queue), and the
//! task is acked only once the broker confirmed that the result, or the result standing in for
//! it, is stored in some queue:
//!
//! - **Returned** (`basic.return`: no queue of that name — a batch's results queue that
//!   expired, a reply queue that died with its client): the result is published again to the
//!   unroutable-results queue ([`Topology::unroutable_queue`]) with headers naming where it was
//!   meant to go and why it came back ([`unroutable_headers`]). One warning and one count of
//!   `warren_results_unroutable_total` per returned result.
//! - **Refused** (nack): published again after [`REFUSAL_RETRY_DELAYS`] — in a cluster a quorum
//!   queue nacks while it elects a new leader after losing a node, for a second or so.
//! - **Too large** (over `--max-result`, checked before publishing, since an oversized publish
//!   makes the broker close the channel) or **still refused** after those retries (a full
//!   queue with `reject-publish`): a small [`Outcome::ResultRefused`] result naming the reason
//!   takes its place, published the same way (`warren_results_refused_total{reason}`).
//! - **Nothing left to try** (the stand-in refused too, or the unroutable-results queue itself
//!   missing): the task is requeued, and its delivery limit ends that in the dead-letter queue.
//!
//! lapin gives a returned message to the confirm it resolves next, which with a `multiple` ack
//! can be another publish's. So a returned message is judged by what it is (its message id and
//! routing key), not by which confirm carried it, and the publish that got it reroutes it.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::{error, warn};
use warren_schemas::task::unix_now_ns;
use warren_schemas::topology::{
    UNROUTABLE_CODE_HEADER, UNROUTABLE_REASON_HEADER, UNROUTABLE_REPLY_TO_HEADER,
};
use warren_schemas::{
    decode, encode, BatchRef, Outcome, ResolvedModule, TaskResult, Timings, Topology, CONTENT_TYPE,
};

use super::settler::Publishing;
use crate::metrics;
use warren_schemas::args::parse_bytes;

/// Default of `--max-result`: the largest frame warren's own readers decode
/// ([`warren_schemas::DEFAULT_MAX_MESSAGE_BYTES`]), below RabbitMQ's default `max_message_size`
/// (128 MiB).
pub const DEFAULT_MAX_RESULT: &str = "64MiB";

/// How results are published (flags of `warren-worker run`).
#[derive(Debug, Clone, clap::Args)]
pub struct ResultArgs {
    /// Largest result the worker publishes, in encoded bytes (stdout + stderr + a few hundred
    /// bytes). A larger one is replaced by a small `result_refused` result naming both sizes.
    /// Default 64MiB: the most `warren` decodes, and under RabbitMQ's default
    /// `max_message_size` (128MiB). Keep it at or under the broker's `max_message_size`: the
    /// broker closes the channel on a larger publish. See also --max-output, --max-stderr.
    #[arg(long, env = "WARREN_MAX_RESULT", default_value = DEFAULT_MAX_RESULT, value_parser = parse_bytes)]
    pub max_result: u64,
}

/// What every result's publish needs, shared by the lanes.
#[derive(Debug)]
pub struct ResultRoute {
    /// Where returned results go.
    unroutable: ShortString,
    /// Results larger than this are replaced before publishing.
    max_result: usize,
    /// Named in stand-in results, as in real ones.
    worker_id: String,
}

impl ResultRoute {
    /// The route for a worker on `topology`.
    pub fn new(topology: &Topology, args: &ResultArgs, worker_id: &str) -> Self {
        ResultRoute {
            unroutable: topology.unroutable_queue().into(),
            max_result: usize::try_from(args.max_result).unwrap_or(usize::MAX),
            worker_id: worker_id.to_owned(),
        }
    }
}

/// The publish of `result` to `reply_to` via the default exchange, as a future the settler
/// polls: its first poll queues the frames; it resolves to `true` once the result or its
/// stand-in is stored in a queue (ack the task), `false` when nothing is left to try.
pub fn publish(
    channel: Arc<Channel>,
    route: Arc<ResultRoute>,
    reply_to: ShortString,
    result: &TaskResult,
) -> Publishing {
    let stub = Stub::of(result);
    let mut attempt = Attempt {
        id: result.task_id.to_string().into(),
        payload: encode(result),
        routing_key: reply_to,
        headers: None,
        stage: Stage::default(),
        first_answer: None,
    };
    if attempt.payload.len() > route.max_result {
        let reason = format!(
            "the result of {} bytes ({}) exceeds the worker's --max-result of {} bytes; stdout and stderr dropped",
            attempt.payload.len(),
            result.outcome,
            route.max_result
        );
        warn!(task_id = %result.task_id, bytes = attempt.payload.len(), limit = route.max_result, "result too large to publish; publishing a result_refused result instead");
        metrics::record_result_refused("too_large");
        attempt.payload = encode(&stub.refused(result.module.clone(), &route.worker_id, reason));
        attempt.stage.replaced = true;
    }
    Box::pin(async move {
        let mut returned_others = Vec::new();
        let stored = carry(&channel, &route, attempt, Some(stub), &mut returned_others).await;
        // Results of other publishes whose return came with this one's confirm.
        while let Some(returned) = returned_others.pop() {
            let attempt = Attempt::returned(returned);
            let id = attempt.id.clone();
            match carry(&channel, &route, attempt, None, &mut returned_others).await {
                Ok(true) => {}
                Ok(false) => {
                    error!(task_id = %id, "a returned result could not be stored anywhere and is lost")
                }
                Err(error) => {
                    error!(task_id = %id, %error, "a returned result could not be republished and is lost")
                }
            }
        }
        stored
    })
}

/// Publishes `attempt` until it (or its stand-in) is stored, or nothing is left to try.
/// Returned messages that are not this attempt's are pushed to `others`.
async fn carry(
    channel: &Channel,
    route: &ResultRoute,
    mut attempt: Attempt,
    mut stub: Option<Stub>,
    others: &mut Vec<BasicReturnMessage>,
) -> lapin::Result<bool> {
    let mut answer = attempt.first_answer.take();
    loop {
        let (own, other) = match answer.take() {
            Some(known) => (known, None),
            None => {
                let confirmation = channel
                    .basic_publish(
                        "".into(),
                        attempt.routing_key.clone(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &attempt.payload,
                        attempt.properties(),
                    )
                    .await?
                    .await?;
                sort(confirmation, &attempt.id, &attempt.routing_key)
            }
        };
        others.extend(other);
        match next(attempt.stage, own) {
            Step::Stored => return Ok(true),
            Step::Reroute { code, reason } => {
                warn!(
                    task_id = %attempt.id,
                    reply_to = %attempt.routing_key,
                    code,
                    reason = %reason,
                    queue = %route.unroutable,
                    "result returned by the broker: no queue named by its reply_to; sending it to the unroutable-results queue"
                );
                metrics::record_result_unroutable();
                attempt.headers = Some(unroutable_headers(
                    attempt.routing_key.as_str(),
                    code,
                    &reason,
                ));
                attempt.routing_key = route.unroutable.clone();
                attempt.stage.rerouted = true;
            }
            Step::Retry(delay) => {
                warn!(task_id = %attempt.id, queue = %attempt.routing_key, retry_in = ?delay, "the broker refused the result (nack); publishing it again");
                attempt.stage.refusals += 1;
                tokio::time::sleep(delay).await;
            }
            Step::Replace => {
                let stub = match stub.take() {
                    Some(stub) => stub,
                    None => match decode::<TaskResult>(&attempt.payload, usize::MAX) {
                        Ok(result) => Stub::of(&result),
                        Err(error) => {
                            error!(task_id = %attempt.id, %error, "the broker refused a result that cannot be read back to replace it");
                            return Ok(false);
                        }
                    },
                };
                let reason = format!(
                    "the broker refused the result ({}) published to {} (nack); stdout and stderr dropped",
                    stub.outcome,
                    attempt.routing_key.as_str()
                );
                warn!(task_id = %attempt.id, queue = %attempt.routing_key, "the broker kept refusing the result (nack); publishing a result_refused result instead");
                metrics::record_result_refused("nacked");
                attempt.payload = encode(&stub.refused(None, &route.worker_id, reason));
                attempt.stage.replaced = true;
                attempt.stage.refusals = 0;
            }
            Step::GiveUp(why) => {
                error!(task_id = %attempt.id, queue = %attempt.routing_key, reason = why.as_str(), "result could not be stored anywhere");
                return Ok(false);
            }
        }
    }
}

/// One result on its way: what is published where, and how far along it is.
struct Attempt {
    /// The task id, as message and correlation id.
    id: ShortString,
    payload: Vec<u8>,
    routing_key: ShortString,
    /// The unroutable-results headers, once rerouted.
    headers: Option<FieldTable>,
    stage: Stage,
    /// What the broker already said, for a result that came back on another's confirm.
    first_answer: Option<Answer>,
}

impl Attempt {
    /// Another publish's result the broker returned.
    fn returned(returned: BasicReturnMessage) -> Self {
        let properties = &returned.delivery.properties;
        let id = properties
            .message_id()
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let headers = properties.headers().clone();
        let rerouted = headers
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(UNROUTABLE_REPLY_TO_HEADER));
        Attempt {
            id,
            routing_key: returned.delivery.routing_key.clone(),
            headers,
            stage: Stage {
                rerouted,
                ..Stage::default()
            },
            first_answer: Some(Answer::Returned {
                code: returned.reply_code,
                reason: returned.reply_text.to_string(),
            }),
            payload: returned.delivery.data,
        }
    }

    /// Persistent, message id and correlation id = task id, the codec's content type.
    fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_message_id(self.id.clone())
            .with_correlation_id(self.id.clone())
            .with_content_type(CONTENT_TYPE.into())
            .with_timestamp(unix_now_ns() / 1_000_000_000)
            .with_delivery_mode(2);
        match &self.headers {
            Some(headers) => properties.with_headers(headers.clone()),
            None => properties,
        }
    }
}

/// Waits before publishing a nacked result again, one per retry; then a stand-in replaces it.
pub const REFUSAL_RETRY_DELAYS: [Duration; 6] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// How far a result got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stage {
    /// Sent to the unroutable-results queue after a return.
    rerouted: bool,
    /// A stand-in result (too large, or refused after every retry).
    replaced: bool,
    /// Nacks of what is published now (the result, or its stand-in), each retried.
    refusals: usize,
}

/// What the broker said about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Confirmed and routed: stored.
    Stored,
    /// Returned as unroutable (then confirmed).
    Returned { code: u16, reason: String },
    /// Nacked.
    Refused,
}

/// What to do next with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Stored,
    Reroute { code: u16, reason: String },
    Retry(Duration),
    Replace,
    GiveUp(GiveUp),
}

/// Why nothing is left to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveUp {
    UnroutableQueueMissing,
    StandInRefused,
}

impl GiveUp {
    fn as_str(self) -> &'static str {
        match self {
            GiveUp::UnroutableQueueMissing => "the unroutable-results queue does not exist",
            GiveUp::StandInRefused => "the broker refused the result_refused stand-in too",
        }
    }
}

/// The rules: a return is rerouted once, a refusal replaced once.
fn next(stage: Stage, answer: Answer) -> Step {
    match answer {
        Answer::Stored => Step::Stored,
        Answer::Returned { .. } if stage.rerouted => Step::GiveUp(GiveUp::UnroutableQueueMissing),
        Answer::Returned { code, reason } => Step::Reroute { code, reason },
        Answer::Refused if stage.refusals < REFUSAL_RETRY_DELAYS.len() => {
            Step::Retry(REFUSAL_RETRY_DELAYS[stage.refusals])
        }
        Answer::Refused if stage.replaced => Step::GiveUp(GiveUp::StandInRefused),
        Answer::Refused => Step::Replace,
    }
}

/// Splits a confirmation into the answer for the publish of `id` to `routing_key` and a
/// returned message that belongs to another publish, if it carried one.
fn sort(
    confirmation: Confirmation,
    id: &ShortString,
    routing_key: &ShortString,
) -> (Answer, Option<BasicReturnMessage>) {
    let (acked, returned) = match confirmation {
        Confirmation::Ack(returned) => (true, returned),
        Confirmation::Nack(returned) => (false, returned),
        // The publish channel is in confirm mode; treat a missing confirm as a refusal.
        Confirmation::NotRequested => (false, None),
    };
    match returned {
        Some(returned)
            if is_own(
                id,
                routing_key,
                returned.delivery.properties.message_id().as_ref(),
                &returned.delivery.routing_key,
            ) =>
        {
            let answer = Answer::Returned {
                code: returned.reply_code,
                reason: returned.reply_text.to_string(),
            };
            (answer, None)
        }
        other => (
            if acked {
                Answer::Stored
            } else {
                Answer::Refused
            },
            other,
        ),
    }
}

/// A returned message is this publish's when both its message id and routing key match.
fn is_own(
    id: &ShortString,
    routing_key: &ShortString,
    returned_id: Option<&ShortString>,
    returned_key: &ShortString,
) -> bool {
    returned_id == Some(id) && returned_key == routing_key
}

/// The headers of a result in the unroutable-results queue: where it was meant to go
/// (`reply_to`) and the broker's reply code and text for the return.
pub fn unroutable_headers(reply_to: &str, code: u16, reason: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        UNROUTABLE_REPLY_TO_HEADER.into(),
        AMQPValue::LongString(LongString::from(reply_to)),
    );
    // RabbitMQ reads a long int (`I`) in headers everywhere; short unsigned ones it does not.
    headers.insert(
        UNROUTABLE_CODE_HEADER.into(),
        AMQPValue::LongInt(i32::from(code)),
    );
    headers.insert(
        UNROUTABLE_REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers
}

/// What a stand-in result keeps of the real one: only `Copy` fields, so keeping it costs the
/// hot path nothing.
#[derive(Debug, Clone, Copy)]
struct Stub {
    task_id: warren_schemas::TaskId,
    batch: Option<BatchRef>,
    outcome: &'static str,
    exit_code: Option<i32>,
    timings: Timings,
    attempt: u32,
}

impl Stub {
    fn of(result: &TaskResult) -> Self {
        Stub {
            task_id: result.task_id,
            batch: result.batch,
            outcome: result.outcome.label(),
            exit_code: result.exit_code,
            timings: result.timings,
            attempt: result.attempt,
        }
    }

    /// The small result published in place of the real one.
    fn refused(
        &self,
        module: Option<ResolvedModule>,
        worker_id: &str,
        reason: String,
    ) -> TaskResult {
        TaskResult {
            task_id: self.task_id,
            batch: self.batch,
            module,
            outcome: Outcome::ResultRefused { reason },
            stdout: Vec::new(),
            stderr: Vec::new(),
            stderr_truncated: false,
            exit_code: self.exit_code,
            timings: self.timings,
            worker_id: worker_id.to_owned(),
            attempt: self.attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Stage = Stage {
        rerouted: false,
        replaced: false,
        refusals: 0,
    };

    /// `stage` after every retry of a refusal.
    fn retried(stage: Stage) -> Stage {
        Stage {
            refusals: REFUSAL_RETRY_DELAYS.len(),
            ..stage
        }
    }

    fn returned() -> Answer {
        Answer::Returned {
            code: 312,
            reason: "NO_ROUTE".into(),
        }
    }

    #[test]
    fn a_stored_result_is_done_at_any_stage() {
        for rerouted in [false, true] {
            for replaced in [false, true] {
                let stage = Stage {
                    rerouted,
                    replaced,
                    refusals: 0,
                };
                assert_eq!(next(stage, Answer::Stored), Step::Stored);
            }
        }
    }

    #[test]
    fn a_returned_result_is_rerouted_once() {
        assert_eq!(
            next(FRESH, returned()),
            Step::Reroute {
                code: 312,
                reason: "NO_ROUTE".into()
            }
        );
        // A stand-in is rerouted like any result.
        let replaced = Stage {
            replaced: true,
            ..FRESH
        };
        assert!(matches!(next(replaced, returned()), Step::Reroute { .. }));
        let rerouted = Stage {
            rerouted: true,
            ..FRESH
        };
        assert_eq!(
            next(rerouted, returned()),
            Step::GiveUp(GiveUp::UnroutableQueueMissing)
        );
    }

    #[test]
    fn a_refused_result_is_retried_with_growing_delays_then_replaced_once() {
        let mut stage = FRESH;
        for delay in REFUSAL_RETRY_DELAYS {
            assert_eq!(next(stage, Answer::Refused), Step::Retry(delay));
            stage.refusals += 1;
        }
        assert_eq!(next(stage, Answer::Refused), Step::Replace);
        let rerouted = Stage {
            rerouted: true,
            ..FRESH
        };
        assert_eq!(next(retried(rerouted), Answer::Refused), Step::Replace);
        // The stand-in is retried as well, then given up on.
        let replaced = Stage {
            replaced: true,
            ..FRESH
        };
        assert!(matches!(next(replaced, Answer::Refused), Step::Retry(_)));
        assert_eq!(
            next(retried(replaced), Answer::Refused),
            Step::GiveUp(GiveUp::StandInRefused)
        );
    }

    #[test]
    fn a_return_belongs_to_the_publish_with_its_id_and_routing_key() {
        let (id, key): (ShortString, ShortString) = ("t-1".into(), "replies".into());
        assert!(is_own(&id, &key, Some(&id), &key));
        let other_id: ShortString = "t-2".into();
        assert!(!is_own(&id, &key, Some(&other_id), &key));
        // The same task's earlier publish to another queue is not this one.
        let other_key: ShortString = "warren.results".into();
        assert!(!is_own(&id, &key, Some(&id), &other_key));
        assert!(!is_own(&id, &key, None, &key));
    }

    #[test]
    fn sort_without_a_return_reads_ack_and_nack() {
        let (id, key): (ShortString, ShortString) = ("t-1".into(), "replies".into());
        let (answer, other) = sort(Confirmation::Ack(None), &id, &key);
        assert_eq!(answer, Answer::Stored);
        assert!(other.is_none());
        let (answer, _) = sort(Confirmation::Nack(None), &id, &key);
        assert_eq!(answer, Answer::Refused);
        let (answer, _) = sort(Confirmation::NotRequested, &id, &key);
        assert_eq!(answer, Answer::Refused);
    }

    #[test]
    fn unroutable_headers_name_the_reply_to_and_the_return() {
        let headers = unroutable_headers("warren.results.batch.x", 312, "NO_ROUTE");
        let get = |name: &str| headers.inner().get(name).cloned();
        assert_eq!(
            get(UNROUTABLE_REPLY_TO_HEADER),
            Some(AMQPValue::LongString("warren.results.batch.x".into()))
        );
        assert_eq!(get(UNROUTABLE_CODE_HEADER), Some(AMQPValue::LongInt(312)));
        assert_eq!(
            get(UNROUTABLE_REASON_HEADER),
            Some(AMQPValue::LongString("NO_ROUTE".into()))
        );
    }

    #[test]
    fn a_stand_in_keeps_the_task_and_batch_and_drops_the_output() {
        let result = TaskResult {
            task_id: uuid::Uuid::new_v4(),
            batch: Some(BatchRef {
                batch_id: uuid::Uuid::new_v4(),
                index: 7,
            }),
            module: None,
            outcome: Outcome::Success,
            stdout: vec![b'x'; 1 << 20],
            stderr: b"noise".to_vec(),
            stderr_truncated: false,
            exit_code: Some(0),
            timings: Timings::default(),
            worker_id: "w".into(),
            attempt: 2,
        };
        let stand_in = Stub::of(&result).refused(None, "w", "too large".into());
        assert_eq!(stand_in.task_id, result.task_id);
        assert_eq!(stand_in.batch, result.batch);
        assert_eq!(stand_in.attempt, 2);
        assert!(stand_in.stdout.is_empty() && stand_in.stderr.is_empty());
        assert_eq!(
            stand_in.outcome,
            Outcome::ResultRefused {
                reason: "too large".into()
            }
        );
        assert!(encode(&stand_in).len() < 256);
    }
}

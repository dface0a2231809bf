//! What a quorum results queue costs next to a classic one: the broker's CPU per message and
//! the rate for the traffic a batch's results queue sees (workers publish results with
//! confirms, the producer consumes them and acks in bursts), on the broker `AMQP_URL` names.
//!
//! warren declares every queue quorum so a cluster loses no result; on one node the
//! replication is to itself, so this measures the log's overhead alone.

use std::time::{Duration, Instant};

use clap::Args;
use futures_util::stream::{FuturesOrdered, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use warren_schemas::args::BrokerArgs;
use warren_schemas::topology::{declare_queue, results_queue_arguments};

use crate::broker::local_broker_cpu;

/// `warren-bench queue-types`.
#[derive(Debug, Args)]
pub struct QueueTypesBenchArgs {
    /// Where the broker is (the broker's CPU is read only when it runs on this machine).
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Messages per round and queue type.
    #[arg(long, default_value_t = 50_000)]
    pub messages: usize,

    /// Bytes per message (a small result is a few hundred).
    #[arg(long, default_value_t = 512)]
    pub size: usize,

    /// Rounds; each queue type reports its median round (they alternate within a round).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One round on one queue type.
#[derive(Debug, Clone, Copy)]
struct Round {
    publish: Duration,
    consume: Duration,
    broker_cpu: Option<Duration>,
}

/// Runs the comparison and prints a table.
pub fn run_queue_types_bench(args: &QueueTypesBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: &QueueTypesBenchArgs) -> anyhow::Result<()> {
    let url = args.broker.nodes()?.first().url();
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (kind, quorum) in [(0, true), (1, false)] {
            let queue = format!(
                "warren.bench.queue-types.{}-{}",
                if quorum { "quorum" } else { "classic" },
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let arguments = if quorum {
                results_queue_arguments(None)
            } else {
                FieldTable::default()
            };
            declare_queue(&channel, &queue, arguments).await?;
            let measured = one_round(&connection, &channel, &queue, args).await;
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let measured = measured?;
            eprintln!(
                "round {} {}: publish {:.2} s, consume {:.2} s",
                round + 1,
                if quorum { "quorum" } else { "classic" },
                measured.publish.as_secs_f64(),
                measured.consume.as_secs_f64()
            );
            rounds[kind].push(measured);
        }
    }
    let _ = connection.close(200, "bench done".into()).await;
    println!(
        "{} messages of {} bytes per round, median of {} rounds",
        args.messages, args.size, args.rounds
    );
    println!(
        "{:<8} {:>14} {:>14} {:>22}",
        "queue", "publish msg/s", "consume msg/s", "broker CPU µs/message"
    );
    for (kind, label) in [(0, "quorum"), (1, "classic")] {
        let median = median_round(&mut rounds[kind]);
        let per_message = |d: Duration| d.as_secs_f64() * 1e6 / args.messages as f64;
        println!(
            "{label:<8} {:>14.0} {:>14.0} {:>22}",
            args.messages as f64 / median.publish.as_secs_f64(),
            args.messages as f64 / median.consume.as_secs_f64(),
            median
                .broker_cpu
                .map_or("-".to_owned(), |cpu| format!("{:.1}", per_message(cpu)))
        );
    }
    Ok(())
}

/// Publishes `messages` with confirms (256 outstanding, as the worker's settler keeps many
/// in flight), then consumes them with prefetch 256 and one `multiple` ack per 64.
async fn one_round(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    args: &QueueTypesBenchArgs,
) -> anyhow::Result<Round> {
    let body = vec![b'r'; args.size];
    let cpu_before = local_broker_cpu();
    let started = Instant::now();
    let mut confirms = FuturesOrdered::new();
    for _ in 0..args.messages {
        if confirms.len() >= 256 {
            let confirm: lapin::Result<lapin::Confirmation> =
                confirms.next().await.expect("a confirm is pending");
            anyhow::ensure!(confirm?.is_ack(), "the broker nacked a publish");
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        confirms.push_back(confirm);
    }
    while let Some(confirm) = confirms.next().await {
        anyhow::ensure!(confirm?.is_ack(), "the broker nacked a publish");
    }
    let publish = started.elapsed();

    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(256, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0;
    while received < args.messages {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the consumer ended"))??;
        received += 1;
        if received % 64 == 0 || received == args.messages {
            consumer_channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let consume = started.elapsed();
    let _ = consumer_channel.close(200, "consumed".into()).await;
    let broker_cpu = match (cpu_before, local_broker_cpu()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    Ok(Round {
        publish,
        consume,
        broker_cpu,
    })
}

fn median_round(rounds: &mut [Round]) -> Round {
    rounds.sort_by_key(|r| r.publish + r.consume);
    rounds[rounds.len() / 2]
}

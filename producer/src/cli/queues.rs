//! `warren status` and `warren dead list|requeue`: looking at the queues.

use clap::{Args, Subcommand};

use super::args::QueueArgs;
use crate::dead::{self, DeadBody};
use crate::producer::Producer;
use warren_schemas::args::parse_positive;
use warren_schemas::BrokerNodes;

/// Arguments of `warren status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Queue names.
    #[command(flatten)]
    pub queues: QueueArgs,
}

/// Arguments of `warren dead`.
#[derive(Debug, Args)]
pub struct DeadArgs {
    /// What to do with the dead letters.
    #[command(subcommand)]
    pub command: DeadCommand,
}

/// `warren dead` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Show dead-lettered messages and why they died, leaving them in place.
    List(DeadListArgs),
    /// Put dead-lettered tasks back on the task queue (confirmed, then removed). Messages that
    /// do not decode as a task stay where they are.
    Requeue(DeadRequeueArgs),
}

/// Arguments of `warren dead list`.
#[derive(Debug, Args)]
pub struct DeadListArgs {
    /// Show at most this many, from the front of the queue.
    #[arg(long, default_value_t = 20, value_parser = parse_positive)]
    pub limit: usize,

    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,

    /// Queue names.
    #[command(flatten)]
    pub queues: QueueArgs,
}

/// Arguments of `warren dead requeue`.
#[derive(Debug, Args)]
pub struct DeadRequeueArgs {
    /// Requeue at most this many. Default: all.
    #[arg(long, value_parser = parse_positive)]
    pub limit: Option<usize>,

    /// Queue names.
    #[command(flatten)]
    pub queues: QueueArgs,
}

/// Runs `warren status`.
pub async fn status(nodes: &BrokerNodes, args: StatusArgs) -> anyhow::Result<i32> {
    let producer = Producer::connect_to(nodes, args.queues.topology, None).await?;
    let status = crate::status::status(&producer).await?;
    producer.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    let width = [&status.tasks, &status.dead, &status.results]
        .iter()
        .map(|q| q.queue.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<8} {:<width$} {:>9} {:>9}",
        "", "queue", "messages", "consumers"
    );
    for (role, q) in [
        ("tasks", &status.tasks),
        ("dead", &status.dead),
        ("results", &status.results),
    ] {
        println!(
            "{role:<8} {:<width$} {:>9} {:>9}",
            q.queue, q.messages, q.consumers
        );
    }
    if status.tasks.consumers == 0 {
        eprintln!(
            "warren: no worker consumes {}; start one with `warren-worker run`",
            status.tasks.queue
        );
    }
    Ok(0)
}

/// Runs `warren dead list|requeue`.
pub async fn dead(nodes: &BrokerNodes, args: DeadArgs) -> anyhow::Result<i32> {
    let topology = match &args.command {
        DeadCommand::List(list) => list.queues.topology.clone(),
        DeadCommand::Requeue(requeue) => requeue.queues.topology.clone(),
    };
    let producer = Producer::connect_to(nodes, topology, None).await?;
    let dead_queue = producer.topology().dead.clone();
    let tasks_queue = producer.topology().tasks.clone();
    match args.command {
        DeadCommand::List(DeadListArgs { limit, json, .. }) => {
            let letters = dead::list(&producer, limit).await?;
            producer.close().await;
            if json {
                for letter in &letters {
                    println!("{}", serde_json::to_string(letter)?);
                }
                return Ok(0);
            }
            if letters.is_empty() {
                eprintln!("warren: {dead_queue} is empty");
            }
            for letter in &letters {
                let why = match (&letter.reason, &letter.queue, letter.count) {
                    (Some(reason), Some(queue), Some(count)) => {
                        format!("{reason} ×{count} in {queue}")
                    }
                    (Some(reason), _, _) => reason.clone(),
                    _ => "no x-death header".into(),
                };
                let what = match &letter.body {
                    DeadBody::Task {
                        task_id,
                        module,
                        batch,
                    } => format!(
                        "task {task_id} module {module}{}",
                        batch
                            .as_ref()
                            .map(|b| format!(" batch {b}"))
                            .unwrap_or_default()
                    ),
                    DeadBody::Undecodable { label, error } => {
                        format!("not a task ({label}): {error}")
                    }
                };
                println!(
                    "#{:<4} {why} | {} bytes | {what}",
                    letter.position, letter.bytes
                );
            }
        }
        DeadCommand::Requeue(DeadRequeueArgs { limit, .. }) => {
            let report = dead::requeue(&producer, limit.unwrap_or(usize::MAX)).await?;
            producer.close().await;
            println!("requeued {} tasks to {tasks_queue}", report.requeued);
            if report.skipped_undecodable > 0 {
                eprintln!(
                    "warren: left {} messages that are not tasks in {dead_queue} (`warren dead list` shows why)",
                    report.skipped_undecodable
                );
            }
        }
    }
    Ok(0)
}

//! A benchmark's own queues: a fresh topology and a replies queue, declared through the
//! producer library exactly as users' producers declare them, and deleted when the benchmark
//! ends, whatever happened (the replies queue also expires by itself if the benchmark dies).

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use warren::{Producer, Topology};
use warren_tests::worker_process::process_cpu_time;

/// The replies queue expires this long after its last use, should the benchmark not delete it.
const REPLIES_EXPIRE: Duration = Duration::from_secs(3600);

/// One benchmark run's queues and the producer connection they were declared on.
pub struct BenchQueues {
    /// Connection, topology, publishers and result streams.
    pub producer: Producer,
    /// Where the tasks' results go (each task's `reply_to`).
    pub replies: String,
}

impl BenchQueues {
    /// Connects to `url` and declares fresh queues named `warren.<…>.<kind>-<random>`.
    pub async fn declare(url: &str, kind: &str) -> anyhow::Result<Self> {
        let suffix = format!(
            "{kind}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let producer = Producer::connect(url, Topology::with_suffix(&suffix)).await?;
        let replies = format!("warren.{kind}.replies.{suffix}");
        producer
            .declare_results_queue(&replies, REPLIES_EXPIRE)
            .await?;
        Ok(BenchQueues { producer, replies })
    }

    /// The task, dead-letter and results queues.
    pub fn topology(&self) -> &Topology {
        self.producer.topology()
    }

    /// Deletes every queue and closes the connection.
    pub async fn delete(self) {
        if let Ok(channel) = self.producer.channel().await {
            let topology = self.producer.topology();
            for queue in [
                &topology.tasks,
                &topology.dead,
                &topology.results,
                &self.replies,
            ] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = channel.close(200, "bench done".into()).await;
        }
        self.producer.close().await;
    }
}

/// CPU time used so far by the RabbitMQ nodes running on this machine (every `beam.smp`
/// process), or `None` when there is none: the broker's share of a benchmark, when it is local.
pub fn local_broker_cpu() -> Option<Duration> {
    let nodes: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .collect();
    if nodes.is_empty() {
        return None;
    }
    Some(nodes.into_iter().filter_map(process_cpu_time).sum())
}

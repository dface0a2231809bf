//! The flags of `warren-worker run`, with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use warren_schemas::args::{parse_bytes, parse_duration, BrokerArgs};
use warren_schemas::Topology;

use super::result_route::ResultArgs;
use crate::pull::RegistryArgs;
use crate::{ModuleSource, SandboxConfig};

/// Arguments of `warren-worker run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Queue names and delivery limit.
    #[command(flatten)]
    pub topology: Topology,

    /// How results are published (largest result).
    #[command(flatten)]
    pub results: ResultArgs,

    /// Deliveries the broker may send before acks (per consumer). Default: 128 per lane, for
    /// short tasks: tasks beyond the running ones wait for a lane or for their result's
    /// confirm, which keeps the broker round trip and the confirm latency off the critical
    /// path. They hold no pool slot (instances exist only while a lane runs them), so a large
    /// prefetch cannot exhaust the pool. For tasks of seconds, set a few per lane: a worker
    /// holding many waiting tasks starves idle workers. Memory bound: prefetch × --max-message.
    #[arg(long, env = "WARREN_PREFETCH")]
    pub prefetch: Option<u16>,

    /// Address of the metrics/health HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "WARREN_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// How long shutdown may take to finish in-flight tasks before giving them back.
    #[arg(long, env = "WARREN_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest task message accepted; larger ones are dead-lettered.
    #[arg(long, env = "WARREN_MAX_MESSAGE", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_message: u64,

    /// Name reported in results, in the broker connection's name and the consumer tag.
    /// Default: `<hostname>-<pid>`.
    #[arg(long, env = "WARREN_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Where modules come from.
    #[command(flatten)]
    pub source: ModuleSource,

    /// Where modules the directory lacks are pulled from.
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Sandbox limits and pool size.
    #[command(flatten)]
    pub sandbox: SandboxConfig,
}

/// Default deliveries outstanding per lane. The window must cover a task's whole round trip —
/// delivery, run, publish, the result's confirm, the ack — or the worker idles waiting for the
/// broker (figures: BENCHMARKS.md, "Decisions"). Long tasks want a small `--prefetch` instead.
pub const PREFETCH_PER_LANE: usize = 128;

impl RunArgs {
    /// `--prefetch`, or [`PREFETCH_PER_LANE`] per lane; an error if it is 0.
    pub fn prefetch(&self) -> anyhow::Result<u16> {
        match self.prefetch {
            None => Ok(
                u16::try_from(self.sandbox.concurrency().saturating_mul(PREFETCH_PER_LANE))
                    .unwrap_or(u16::MAX),
            ),
            Some(0) => anyhow::bail!("--prefetch must be at least 1"),
            Some(prefetch) => Ok(prefetch),
        }
    }
}

//! `warren-worker`: parse arguments, set up logging, and hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_worker::daemon::{run, RunArgs};
use warren_worker::exec::{run_exec, ExecArgs};

/// The warren worker: runs tasks in fresh WebAssembly sandboxes.
#[derive(Debug, Parser)]
#[command(name = "warren-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume tasks from RabbitMQ, run them, publish results (the daemon).
    Run(RunArgs),
    /// Run one task locally, without a broker, exactly as the daemon would.
    Exec(ExecArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run_daemon(args),
        Command::Exec(args) => run_exec(args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("warren-worker: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the daemon on a tokio runtime until SIGTERM or SIGINT, then drains.
///
/// One runtime thread: the async side only waits on the broker (confirms, acks, reconnects) and
/// serves `/metrics`; tasks run on the lanes. A second runtime thread only adds wake-ups (a
/// task woken from lapin's I/O thread also wakes an idle worker to look for work): with one,
/// the null worker's CPU per task fell from 22.3 to 19.6 µs, five alternations of
/// `bench queue --cases null,trivial` (BENCHMARKS.md).
fn run_daemon(args: RunArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(args, shutdown_signal()))?;
    Ok(0)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

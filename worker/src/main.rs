//! `warren-worker`: parse arguments, set up logging, and hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_worker::bench::{
    run_executor_bench, run_instantiate_bench, run_queue_bench, run_soak, ExecutorBenchArgs,
    InstantiateBenchArgs, QueueBenchArgs, SoakArgs,
};
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
    /// Benchmarks that print numbers.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Instantiation strategies side by side: naive, CoW + InstancePre, warren's pool.
    Instantiate(InstantiateBenchArgs),
    /// warren's task path without a broker vs a raw wasmtime loop, on all cores.
    Executor(ExecutorBenchArgs),
    /// Tasks/s and end-to-end latency through RabbitMQ, next to a null worker's ceiling.
    Queue(QueueBenchArgs),
    /// Many trivial tasks through one worker process, sampling its RSS, fds and in-flight gauge.
    Soak(SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| "warn".into())
                // lapin warns of every returned message with its whole body; the daemon's
                // result_route logs each one by task id and reply_to instead.
                .add_directive(
                    "lapin::returned_messages=error"
                        .parse()
                        .expect("a valid log directive"),
                ),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run_daemon(args),
        Command::Exec(args) => run_exec(args),
        Command::Bench(BenchCommand::Instantiate(args)) => run_instantiate_bench(&args).map(|_| 0),
        Command::Bench(BenchCommand::Executor(args)) => run_executor_bench(&args).map(|_| 0),
        Command::Bench(BenchCommand::Queue(args)) => run_queue_bench(&args).map(|_| 0),
        Command::Bench(BenchCommand::Soak(args)) => run_soak(&args),
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
/// serves `/metrics`; tasks run on the lanes. A second runtime thread would only add wake-ups
/// (BENCHMARKS.md, "Decisions").
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

//! `warren-bench`: parse arguments, set up logging, and run one benchmark.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_bench::{
    run_batch_bench, run_executor_bench, run_guests_bench, run_instantiate_bench, run_queue_bench,
    run_queue_types_bench, run_soak, BatchBenchArgs, ExecutorBenchArgs, GuestsBenchArgs,
    InstantiateBenchArgs, QueueBenchArgs, QueueTypesBenchArgs, SoakArgs,
};
use warren_worker::process;

/// warren's benchmarks: numbers side by side, each with the command that produced it.
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Instantiation strategies side by side: naive, CoW + InstancePre, warren's pool.
    Instantiate(InstantiateBenchArgs),
    /// The Python and JavaScript runners next to the preview1 CPython command they replace.
    Guests(GuestsBenchArgs),
    /// warren's task path without a broker vs a raw wasmtime loop, on all cores.
    Executor(ExecutorBenchArgs),
    /// Tasks/s and end-to-end latency through RabbitMQ, next to a null worker's ceiling.
    Queue(QueueBenchArgs),
    /// A batch as users type it: the producer's CPU per task, its rate next to `queue`'s.
    Batch(BatchBenchArgs),
    /// Many trivial tasks through one worker process, sampling its RSS, fds and in-flight gauge.
    Soak(SoakArgs),
    /// A quorum results queue next to a classic one: rates and the broker's CPU per message.
    QueueTypes(QueueTypesBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();
    let result = match cli.command {
        Command::Instantiate(args) => run_instantiate_bench(&args).map(|_| 0),
        Command::Executor(args) => run_executor_bench(&args).map(|_| 0),
        Command::Guests(args) => run_guests_bench(&args).map(|_| 0),
        Command::Queue(args) => run_queue_bench(&args).map(|_| 0),
        Command::Batch(args) => run_batch_bench(&args).map(|_| 0),
        Command::Soak(args) => run_soak(&args),
        Command::QueueTypes(args) => run_queue_types_bench(&args).map(|_| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("warren-bench: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

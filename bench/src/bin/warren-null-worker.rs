//! `warren-null-worker`: `warren-worker run` with the null executor — every task answered with
//! its input as a success, without wasm — so `warren-bench queue` can measure the ceiling the
//! broker allows, through the daemon's own AMQP path. Never useful in production.

use std::process::ExitCode;

use clap::Parser;
use warren_bench::null::NullExecutor;
use warren_worker::daemon::{Execute, RunArgs};
use warren_worker::process;

/// The warren daemon with a null executor: the broker-bound ceiling for benchmarks.
#[derive(Debug, Parser)]
#[command(name = "warren-null-worker", version, about)]
struct Cli {
    /// Everything `warren-worker run` takes.
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();
    tracing::warn!("null executor: tasks are answered without running them (benchmark mode)");
    let executor = |runner: warren_worker::TaskRunner| -> Box<dyn Execute> {
        Box::new(NullExecutor {
            worker_id: runner.worker_id().to_owned(),
        })
    };
    match process::serve(cli.run, executor) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warren-null-worker: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

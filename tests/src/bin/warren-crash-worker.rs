//! `warren-crash-worker`: `warren-worker run` that aborts the process — as on a crash the
//! sandbox cannot catch — when it receives a task for `--crash-on-module`. With it,
//! `tests/tests/worker_faults.rs` shows that such a task ends in the dead-letter queue after the
//! delivery limit instead of killing workers forever. Every other task runs as in the daemon.

use std::process::ExitCode;

use clap::Parser;
use warren_schemas::{Task, TaskResult};
use warren_worker::daemon::{Execute, RunArgs};
use warren_worker::{process, TaskRunner};

/// The warren daemon, with a fault injected: tasks for one module abort the process.
#[derive(Debug, Parser)]
#[command(name = "warren-crash-worker")]
struct Cli {
    /// Tasks for this module abort the process.
    #[arg(long)]
    crash_on_module: String,

    /// Everything `warren-worker run` takes.
    #[command(flatten)]
    run: RunArgs,
}

/// The daemon's task runner, except for the poison module.
struct CrashOnModule {
    module: String,
    runner: TaskRunner,
}

impl Execute for CrashOnModule {
    fn execute(&self, task: Task, attempt: u32) -> TaskResult {
        if task.module.name == self.module {
            let task_id = task.id;
            tracing::error!(%task_id, module = %self.module, "--crash-on-module: aborting");
            std::process::abort();
        }
        self.runner.execute(task, attempt)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();
    let module = cli.crash_on_module;
    let executor = move |runner| -> Box<dyn Execute> { Box::new(CrashOnModule { module, runner }) };
    match process::serve(cli.run, executor) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warren-crash-worker: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

//! The `warren` command line: argument definitions (clap derive), and one function per command
//! that calls the library and prints what happened. `main.rs` only parses, sets up logging and
//! signals, and calls [`run`].
//!
//! Exit codes: 0 success; 1 a task did not succeed, a batch is incomplete, or an error;
//! 2 bad arguments; 130 interrupted. `submit --wait` exits with the task's own code
//! ([`warren_schemas::Outcome::exit_code`]).

pub mod args;
mod batch;
mod module;
mod progress;
mod queues;
mod resume;
mod submit;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use warren_schemas::args::BrokerArgs;

pub use batch::{BatchArgs, CollectArgs};
pub use module::{LsArgs, ModuleArgs, ModuleCommand, PushArgs};
pub use queues::{DeadArgs, DeadCommand, DeadListArgs, DeadRequeueArgs, StatusArgs};
pub use submit::SubmitArgs;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Enqueue sandboxed WebAssembly tasks for warren workers and collect their results.
///
/// Tasks go to the task queue that `warren-worker run` consumes; each runs one module on one
/// input in a fresh sandbox. `submit` sends one task; `batch` sends one per input file or JSONL
/// line and writes the results to a directory, resumable with `collect`. `module` pushes modules
/// to an OCI registry that workers pull from.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about)]
pub struct Cli {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enqueue one task; print its id, or with --wait its output.
    Submit(SubmitArgs),
    /// Run a module over every file of a directory or line of a JSONL file; write the results.
    Batch(BatchArgs),
    /// Finish collecting the results of an interrupted batch.
    Collect(CollectArgs),
    /// Show the depth of the task, dead-letter and results queues and how many workers consume.
    Status(StatusArgs),
    /// Inspect dead-lettered messages, or put them back on the task queue.
    Dead(DeadArgs),
    /// Modules in an OCI registry: push a `.wasm`, list a repository (workers with
    /// `--registry` pull what a task names).
    Module(ModuleArgs),
}

/// Runs the command; `shutdown` is cancelled on Ctrl-C. Returns the process exit code.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<i32> {
    if let Command::Module(args) = cli.command {
        return module::run(args).await;
    }
    let nodes = cli.broker.nodes()?;
    match cli.command {
        Command::Submit(args) => submit::run(&nodes, args, shutdown).await,
        Command::Batch(args) => batch::run_batch(&nodes, args, shutdown).await,
        Command::Collect(args) => batch::run_collect(&nodes, args, shutdown).await,
        Command::Status(args) => queues::status(&nodes, args).await,
        Command::Dead(args) => queues::dead(&nodes, args).await,
        Command::Module(_) => unreachable!("handled above"),
    }
}

//! `warren-worker`: parse arguments, set up logging, and hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_worker::daemon::RunArgs;
use warren_worker::exec::{run_exec, ExecArgs};
use warren_worker::process;

/// The warren worker: runs tasks in fresh WebAssembly sandboxes.
#[derive(Debug, Parser)]
#[command(name = "warren-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Boxed: both sets of flags are large, and only one is ever parsed.
#[derive(Debug, Subcommand)]
enum Command {
    /// Consume tasks from RabbitMQ, run them, publish results (the daemon).
    Run(Box<RunArgs>),
    /// Run one task locally, without a broker, exactly as the daemon would.
    Exec(Box<ExecArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();
    let result = match cli.command {
        Command::Run(args) => run_daemon(*args),
        Command::Exec(args) => run_exec(*args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("warren-worker: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then drains.
fn run_daemon(args: RunArgs) -> anyhow::Result<i32> {
    process::serve(args, |runner| Box::new(runner))?;
    Ok(0)
}

//! `warren-worker`: parse arguments, set up logging, and hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_worker::bench::{run_instantiate_bench, InstantiateBenchArgs};
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
        Command::Exec(args) => run_exec(args),
        Command::Bench(BenchCommand::Instantiate(args)) => run_instantiate_bench(&args).map(|_| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("warren-worker: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

//! Arguments shared by several commands, and the parsers that turn flag values into typed
//! values — each failing with a message that names the value and shows a valid one.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use warren_schemas::args::{parse_bytes, parse_env, parse_nonzero_duration};
use warren_schemas::{ModuleRef, Topology};

use crate::batch::OkExitCodes;

/// Which queues to use (the worker's flags of the same names).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Queues")]
pub struct QueueArgs {
    /// Queue names and delivery limit, as given to the workers.
    #[command(flatten)]
    pub topology: Topology,
}

/// What a task runs and under which limits.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Task")]
pub struct TaskArgs {
    /// Module to run: `name` (the newest version a worker has) or `name@<digest prefix>`.
    #[arg(value_parser = parse_module)]
    pub module: ModuleRef,

    /// An argument for the guest (after argv[0], which is the module name); repeat for more.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,

    /// An environment variable for the guest; repeat for more. The guest sees only these.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// CPU deadline per task (e.g. 250ms, 10s); can only lower the worker's --timeout.
    #[arg(long, value_parser = parse_nonzero_duration)]
    pub timeout: Option<Duration>,

    /// Memory cap per task (e.g. 64MiB); can only lower the worker's --max-memory.
    #[arg(long, value_parser = parse_bytes)]
    pub max_memory: Option<u64>,

    /// Stdout cap per task (e.g. 1MiB); can only lower the worker's --max-output.
    #[arg(long, value_parser = parse_bytes)]
    pub max_output: Option<u64>,

    /// More guest arguments, after `--` (appended to the --arg ones).
    #[arg(last = true, value_name = "ARGS")]
    pub trailing: Vec<String>,
}

impl TaskArgs {
    /// The guest arguments: `--arg`s then the ones after `--`.
    pub fn guest_args(&self) -> Vec<String> {
        self.args.iter().chain(&self.trailing).cloned().collect()
    }

    /// The per-task limits asked for.
    pub fn limits(&self) -> warren_schemas::TaskLimits {
        warren_schemas::TaskLimits {
            timeout_ms: self
                .timeout
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            max_memory_bytes: self.max_memory,
            max_output_bytes: self.max_output,
        }
    }
}

/// Which exit codes count as success (`batch`, `submit`, `collect` keeps the batch's).
#[derive(Debug, Clone, Args)]
pub struct OkArgs {
    /// Exit codes that count as success besides 0, e.g. `0,10,20` for a solver that answers
    /// through its exit code: for `results.jsonl`'s outcome, the summary and the exit status.
    /// The exit code itself is always recorded.
    #[arg(long, value_name = "CODES", default_value = "0")]
    pub ok_exit_codes: OkExitCodes,
}

/// `--local`: run in this process, on the worker's sandbox, instead of through the broker.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Local (no broker)")]
pub struct LocalArgs {
    /// Run the tasks in this process, with no broker, on the same sandbox, limits and outcomes
    /// as a worker (the worker's default caps; --timeout etc. lower them). Only the module the
    /// tasks name is loaded, from the AOT cache when it is there.
    #[arg(long)]
    pub local: bool,

    /// With --local: tasks run at once. Default: the number of CPUs.
    #[arg(long, requires = "local", value_parser = warren_schemas::args::parse_positive)]
    pub concurrency: Option<usize>,

    /// With --local: where the modules and the AOT cache are.
    #[command(flatten)]
    pub source: warren_worker::ModuleSource,
}

impl LocalArgs {
    /// A runner of `module` with `--concurrency` lanes (`default_lanes` when not given).
    pub fn runner(
        &self,
        module: &str,
        default_lanes: usize,
    ) -> anyhow::Result<crate::batch::local::LocalRunner> {
        crate::batch::local::LocalRunner::open(
            &self.source,
            warren_worker::SandboxConfig::default(),
            self.concurrency.unwrap_or(default_lanes),
            module,
        )
    }
}

/// Where `submit` reads the input from.
#[derive(Debug, Clone)]
pub enum InputArg {
    /// Standard input.
    Stdin,
    /// A file.
    File(PathBuf),
}

/// Parses `FILE` or `-`.
pub fn parse_input(s: &str) -> Result<InputArg, String> {
    if s == "-" {
        Ok(InputArg::Stdin)
    } else {
        Ok(InputArg::File(PathBuf::from(s)))
    }
}

/// Parses a module reference (`name` or `name@digest`).
pub fn parse_module(s: &str) -> Result<ModuleRef, String> {
    s.parse::<ModuleRef>().map_err(|e| e.to_string())
}

/// Parses a rate: `N`, `N/s`, `N/m` or `N/h` (tasks per second, minute or hour), > 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (number, per) = match s.trim().split_once('/') {
        Some((n, unit)) => (n.trim(), unit.trim()),
        None => (s.trim(), "s"),
    };
    let seconds = match per {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {per:?} (try 100/s, 600/m)")),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n / seconds),
        _ => Err(format!("{s:?} is not a positive rate (try 100/s, 600/m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_units() {
        assert_eq!(parse_rate("100").unwrap(), 100.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/d").is_err());
    }
}

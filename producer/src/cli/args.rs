//! Arguments shared by several commands, and the parsers that turn flag values into typed
//! values — each failing with a message that names the value and shows a valid one.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;
use warren_schemas::{ModuleRef, Topology};

use crate::batch::inputs::check_env_key;

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
    #[arg(long, value_parser = parse_duration)]
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

/// Parses `KEY=VALUE` (the value may contain `=`).
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("{s:?} is not KEY=VALUE (try --env LANG=C)"));
    };
    check_env_key(key).map_err(|reason| format!("{s:?}: {reason}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a duration such as `30s`, `250ms` or `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?} is not a duration (try 30s, 250ms): {e}")),
    }
}

/// Parses a byte size such as `65536`, `64KiB` or `256MiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a byte size (try 65536, 64KiB, 256MiB): {e}"))
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

/// Parses a whole number ≥ 1.
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_keep_equals_in_values_and_refuse_bad_keys() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert!(parse_env("A").unwrap_err().contains("not KEY=VALUE"));
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn rates_take_units() {
        assert_eq!(parse_rate("100").unwrap(), 100.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/d").is_err());
    }
}

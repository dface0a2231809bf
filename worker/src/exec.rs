//! `warren-worker exec`: run one task locally, through the same registry and task runner as the
//! daemon, with no broker. This is how a module author tries a module.
//!
//! The guest's stdout goes to stdout and its stderr to stderr; a one-line report (outcome,
//! module version, timings) follows on stderr. The process exits with the guest's exit code, or
//! with a code naming the outcome when the guest did not exit (see [`Outcome::exit_code`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use warren_schemas::args::parse_env;
use warren_schemas::{ModuleRef, Outcome, Task, TaskResult};

use crate::registry::{self, ModuleRegistry};
use crate::runner::{default_worker_id, TaskRunner};
use crate::{ModuleSource, SandboxConfig};

/// Arguments of `warren-worker exec`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Module to run: a name from the modules directory (`wc`, `wc@3fa4c2`) or a path to a
    /// `.wasm` file.
    pub module: String,

    /// File whose bytes go to the guest's stdin; `-` reads this process's stdin. Default: empty.
    #[arg(long, short = 'i')]
    pub input: Option<PathBuf>,

    /// Environment variable for the guest, `KEY=VALUE` (repeatable). Nothing else is inherited.
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Where modules come from.
    #[command(flatten)]
    pub source: ModuleSource,

    /// Sandbox limits (the caps this task runs under).
    #[command(flatten)]
    pub sandbox: SandboxConfig,

    /// Arguments for the guest (after `--`); argv[0] is the module name.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Runs `warren-worker exec` and returns the process exit code.
pub fn run_exec(args: ExecArgs) -> anyhow::Result<i32> {
    let input = read_input(args.input.as_deref())?;
    let registry = args.source.open_registry(args.sandbox)?;
    let module = resolve_target(&registry, &args.module, &args.source)?;
    let modules_dir = args.source.modules_dir;

    let mut task = Task::new(module, input);
    task.args = args.args;
    task.env = args.env;
    let guest_stack = registry.sandbox().config().guest_thread_stack();
    let runner = TaskRunner::new(registry, default_worker_id());
    // On a thread of its own, sized for the guest's stack cap as the daemon's lanes are.
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("warren-exec".into())
            .stack_size(guest_stack)
            .spawn_scoped(scope, || runner.run_here(task, 1))
            .context("cannot start the thread that runs the task")?
            .join()
            .map_err(|_| anyhow::anyhow!("the thread that ran the task panicked"))
    })?;
    report(&result)?;
    if let Outcome::ModuleNotFound { .. } = result.outcome {
        eprintln!(
            "warren: modules available in {}: {}",
            modules_dir.display(),
            registry::module_names(&modules_dir)
                .unwrap_or_default()
                .join(", ")
        );
    }
    Ok(result.outcome.exit_code())
}

/// A path to a `.wasm` file is loaded on its own; anything else is a module reference, and only
/// its file in the modules directory is loaded (from the AOT cache when it is there): the other
/// modules of the directory cost nothing. A name without a file stays unloaded, and the task
/// ends as "module not found".
fn resolve_target(
    registry: &ModuleRegistry,
    target: &str,
    source: &ModuleSource,
) -> anyhow::Result<ModuleRef> {
    let as_path = Path::new(target);
    if target.ends_with(".wasm") || as_path.is_file() {
        let module = registry.load_file(as_path)?;
        return Ok(ModuleRef::latest(module.name.clone()));
    }
    let wanted: ModuleRef = target.parse()?;
    source.load_named(registry, &wanted.name)?;
    Ok(wanted)
}

fn read_input(input: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    match input {
        None => Ok(Vec::new()),
        Some(path) if path == Path::new("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            Ok(bytes)
        }
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read input file {}", path.display())),
    }
}

fn report(result: &TaskResult) -> anyhow::Result<()> {
    std::io::stdout().write_all(&result.stdout)?;
    std::io::stdout().flush()?;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(&result.stderr)?;
    if result.stderr_truncated {
        writeln!(stderr, "\nwarren: [stderr truncated]")?;
    }
    let module = result
        .module
        .as_ref()
        .map(|m| format!("{}@{}", m.name, &m.digest[..12]))
        .unwrap_or_else(|| "-".into());
    let t = &result.timings;
    writeln!(
        stderr,
        "warren: {} | module {} | instantiate {:.1} µs | run {:.3} ms | total {:.3} ms",
        result.outcome,
        module,
        t.instantiate_ns as f64 / 1e3,
        t.run_ns as f64 / 1e6,
        t.total_ns as f64 / 1e6,
    )?;
    Ok(())
}

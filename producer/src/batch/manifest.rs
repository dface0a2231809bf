//! The batch manifest, `<out>/.warren-batch.json`: everything `warren collect` needs to finish a
//! batch that was interrupted, written **before** the first task is published.
//!
//! It names the batch, its results queue (and that queue's expiry, so it can be recognised),
//! the task template (module, args, env, limits), where the inputs came from, and for every
//! input its index, name and task id. Task ids are fixed here, so a task republished on resume
//! has the same id as the original and its results deduplicate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warren_schemas::{ModuleRef, TaskId, TaskLimits};

use super::inputs::BatchInput;
use super::output_format::OutputFormat;
use super::{BatchSpec, OkExitCodes};
use crate::error::{ProducerError, Result};

/// File name of the manifest inside the output directory.
pub const MANIFEST_FILE: &str = ".warren-batch.json";

/// Format version of the manifest file.
pub const MANIFEST_VERSION: u32 = 1;

/// A batch's description, as stored in its output directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The batch's id.
    pub batch_id: Uuid,
    /// The durable per-batch queue the workers reply to.
    pub results_queue: String,
    /// The `x-expires` of the results queue, in milliseconds.
    pub results_ttl_ms: u64,
    /// The task queue the batch was published to.
    pub tasks_queue: String,
    /// When the batch was created, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The module every task runs.
    pub module: ModuleRef,
    /// Arguments common to every task.
    pub args: Vec<String>,
    /// Environment common to every task.
    pub env: Vec<(String, String)>,
    /// Limits of every task.
    pub limits: TaskLimits,
    /// Exit codes that count as success (`--ok-exit-codes`; `0` for batches from before it).
    #[serde(default)]
    pub ok_exit_codes: OkExitCodes,
    /// Where each task's stdout and stderr go (`files` for batches from before the choice).
    #[serde(default)]
    pub output_format: OutputFormat,
    /// The `--inputs` path, absolute.
    pub inputs: PathBuf,
    /// One entry per input, in index order.
    pub tasks: Vec<ManifestTask>,
}

/// One input of the batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestTask {
    /// Position in the batch, from 0 (= the task's `BatchRef::index`).
    pub index: u64,
    /// The input's name (outputs are `<name>.out`).
    pub name: String,
    /// The task's id, fixed for the life of the batch.
    pub task_id: TaskId,
}

impl Manifest {
    /// The manifest of a new batch `batch_id` running `spec` over `inputs` (read from
    /// `inputs_path`), a fresh task id per input; no queues yet (a local batch has none).
    pub fn new(batch_id: Uuid, spec: BatchSpec, inputs: &[BatchInput], inputs_path: &Path) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            batch_id,
            results_queue: String::new(),
            results_ttl_ms: 0,
            tasks_queue: String::new(),
            created_unix_ms: warren_schemas::task::unix_now_ns() / 1_000_000,
            module: spec.module,
            args: spec.args,
            env: spec.env,
            limits: spec.limits,
            ok_exit_codes: spec.ok_exit_codes,
            output_format: OutputFormat::default(),
            inputs: std::path::absolute(inputs_path).unwrap_or_else(|_| inputs_path.to_owned()),
            tasks: inputs
                .iter()
                .zip(0u64..)
                .map(|(input, index)| ManifestTask {
                    index,
                    name: input.name.clone(),
                    task_id: Uuid::new_v4(),
                })
                .collect(),
        }
    }

    /// Path of the manifest in `out`.
    pub fn path(out: &Path) -> PathBuf {
        out.join(MANIFEST_FILE)
    }

    /// Reads the manifest in `out`.
    pub fn load(out: &Path) -> Result<Self> {
        let path = Self::path(out);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProducerError::OutDir(format!(
                    "{} holds no batch ({MANIFEST_FILE} is missing); pass the --out directory the batch wrote to",
                    out.display()
                ))
            } else {
                ProducerError::io(&path, e)
            }
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            ProducerError::OutDir(format!(
                "{}: not a warren batch manifest: {e}",
                path.display()
            ))
        })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ProducerError::OutDir(format!(
                "{}: manifest version {} is not supported (this warren reads version {MANIFEST_VERSION})",
                path.display(),
                manifest.version
            )));
        }
        Ok(manifest)
    }

    /// Writes the manifest into `out` atomically (temporary file, fsync, rename), creating `out`
    /// if needed.
    pub fn store(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(|e| ProducerError::io(out, e))?;
        let path = Self::path(out);
        let tmp = out.join(format!("{MANIFEST_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| ProducerError::Internal(format!("manifest does not serialize: {e}")))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| ProducerError::io(&path, e))
    }

    /// The entry for task `index`, if the batch has one.
    pub fn task(&self, index: u64) -> Option<&ManifestTask> {
        usize::try_from(index).ok().and_then(|i| self.tasks.get(i))
    }
}

/// Name of a batch's results queue.
pub fn results_queue_name(batch_id: Uuid) -> String {
    format!("warren.results.batch.{batch_id}")
}

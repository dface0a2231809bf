//! The `warren` producer binary on a test's queues: run or spawn it with the test's queue
//! flags, read a batch's output directory, remove a batch's results queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tempfile::TempDir;
use warren_schemas::Topology;

use crate::binary;
use crate::broker::amqp_url;

/// The `warren` CLI bound to one topology.
pub struct WarrenCli {
    topology: Topology,
    url: String,
}

impl WarrenCli {
    /// `warren` on `topology`'s queues.
    pub fn new(topology: &Topology) -> Self {
        Self::new_on(&amqp_url(), topology)
    }

    /// `warren` on `topology`'s queues of the broker (and vhost) at `url`.
    pub fn new_on(url: &str, topology: &Topology) -> Self {
        WarrenCli {
            topology: topology.clone(),
            url: url.to_owned(),
        }
    }

    /// A `warren` command: `args`, with the queue flags inserted before a `--` (or at the end).
    pub fn command(&self, args: &[&str]) -> Command {
        let flags = [
            "--tasks-queue",
            &self.topology.tasks,
            "--dead-queue",
            &self.topology.dead,
            "--results-queue",
            &self.topology.results,
        ];
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let mut command = Command::new(binary("warren"));
        command
            .args(&args[..split])
            .args(flags)
            .args(&args[split..])
            .env("AMQP_URL", &self.url)
            .env("WARREN_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    /// Runs `warren args...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("warren runs")
    }

    /// Starts `warren args...` with stdout and stderr captured.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warren starts")
    }
}

/// A `warren batch upper` under way (see [`WarrenCli::start_paced_upper_batch`]).
pub struct PacedBatch {
    /// Holds `inputs` and `out`; removed on drop.
    pub dir: TempDir,
    /// The input files.
    pub inputs: PathBuf,
    /// The batch's output directory.
    pub out: PathBuf,
    /// The running `warren`, stdout and stderr captured.
    pub child: Child,
}

impl WarrenCli {
    /// Starts `warren batch upper` on `count` fresh inputs, published at `rate` (e.g. `"400/s"`)
    /// so that whatever the test does next lands mid-batch, and returns once `first` results are
    /// on disk. Call from a multi-threaded tokio test (it blocks in place while waiting).
    pub fn start_paced_upper_batch(&self, count: usize, rate: &str, first: usize) -> PacedBatch {
        self.start_paced_upper_batch_with(count, rate, first, &[])
    }

    /// [`WarrenCli::start_paced_upper_batch`] with more `batch` flags.
    pub fn start_paced_upper_batch_with(
        &self,
        count: usize,
        rate: &str,
        first: usize,
        flags: &[&str],
    ) -> PacedBatch {
        let dir = tempfile::tempdir().unwrap();
        let (inputs, out) = (dir.path().join("in"), dir.path().join("out"));
        write_inputs(&inputs, count);
        let mut args = vec![
            "batch",
            "upper",
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--rate",
            rate,
        ];
        args.extend_from_slice(flags);
        let mut child = self.spawn(&args);
        tokio::task::block_in_place(|| wait_for_results(&out, first, &mut child));
        PacedBatch {
            dir,
            inputs,
            out,
            child,
        }
    }
}

/// Process output as text, for assertions and failure messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The batch manifest in `out`.
pub fn manifest(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(".warren-batch.json")).expect("manifest written");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// The records of `out/results.jsonl` (every line must parse).
pub fn results(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Complete lines in `out/results.jsonl` so far.
pub fn result_lines(out: &Path) -> usize {
    std::fs::read(out.join("results.jsonl"))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// `count` input files `in-NNNN.txt` in `dir`, each with its own text.
pub fn write_inputs(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        std::fs::write(
            dir.join(format!("in-{i:04}.txt")),
            format!("input number {i}\n"),
        )
        .unwrap();
    }
}

/// What `upper` makes of input `name` of `dir`.
pub fn upper_of(dir: &Path) -> impl Fn(&str) -> Vec<u8> + '_ {
    move |name| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .to_uppercase()
            .into_bytes()
    }
}

/// The batch's results queue, from the manifest in `out`.
pub fn results_queue(out: &Path) -> String {
    manifest(out)["results_queue"].as_str().unwrap().to_owned()
}

/// Waits (polling the file) until `out/results.jsonl` has at least `lines` lines; panics if
/// `child` exits first or a minute passes.
pub fn wait_for_results(out: &Path, lines: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while result_lines(out) < lines {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("warren exited ({status}) before {lines} results were on disk");
        }
        assert!(Instant::now() < deadline, "no {lines} results within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `out` holds exactly one record per input of its manifest, each once, with the
/// output file `expected(name)` gives. Returns the records by input name.
pub fn assert_each_result_once(
    out: &Path,
    expected: impl Fn(&str) -> Vec<u8>,
) -> HashMap<String, serde_json::Value> {
    let manifest = manifest(out);
    let tasks = manifest["tasks"].as_array().expect("tasks");
    let records = results(out);
    let mut by_name = HashMap::new();
    for record in records {
        let name = record["name"].as_str().expect("name").to_owned();
        assert!(
            by_name.insert(name.clone(), record).is_none(),
            "{name} appears twice in results.jsonl"
        );
    }
    assert_eq!(by_name.len(), tasks.len(), "one record per input");
    for task in tasks {
        let name = task["name"].as_str().expect("name");
        let record = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no record for {name}"));
        assert_eq!(record["task_id"], task["task_id"], "{name}: task id");
        assert_eq!(record["index"], task["index"], "{name}: index");
        assert_eq!(output_of(out, record), expected(name), "{name}: stdout");
    }
    let leftovers: Vec<_> = std::fs::read_dir(out)
        .expect("out dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    by_name
}

/// The stdout of `record`'s task: its `<name>.out` file, or with `--output-format inline` (the
/// manifest says which) its line's `stdout` / `stdout_base64` — and then no `.out` file may
/// exist.
pub fn output_of(out: &Path, record: &serde_json::Value) -> Vec<u8> {
    let name = record["name"].as_str().expect("name");
    let file = out.join(format!("{name}.out"));
    if manifest(out)["output_format"] != "inline" {
        return std::fs::read(&file).unwrap_or_else(|e| panic!("{name}.out: {e}"));
    }
    assert!(!file.exists(), "{name}.out written for an inline batch");
    inline_stream(record, "stdout")
}

/// Stream `stream` (`stdout` or `stderr`) of an inline `results.jsonl` record: the text field,
/// or the base64 one decoded, or nothing.
pub fn inline_stream(record: &serde_json::Value, stream: &str) -> Vec<u8> {
    use base64::Engine;
    match (
        record[stream].as_str(),
        record[format!("{stream}_base64")].as_str(),
    ) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => panic!("{stream} both as text and base64: {record}"),
    }
}

/// Deletes `queue` (e.g. a batch's results queue), whatever it holds.
pub async fn delete_queue(queue: &str) {
    delete_queue_at(&amqp_url(), queue).await;
}

/// Deletes `queue` of the broker (and vhost) at `url`.
pub async fn delete_queue_at(url: &str, queue: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "cleaned".into()).await;
}

/// Publishes `body` straight to `queue` (confirmed), with `properties`.
pub async fn publish_to(queue: &str, body: &[u8], properties: BasicProperties) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
    let _ = connection.close(200, "published".into()).await;
}

//! Where a batch's results land: one line per task in `<out>/results.jsonl`, and the guest's
//! stdout and stderr either in `<out>/<name>.out` and `<out>/<name>.err` (stderr only when there
//! was any) or inline in the line ([`OutputFormat`]).
//!
//! Order per burst of results: output files are written to a temporary name and renamed into
//! place (never half-written), then the burst's `results.jsonl` lines are appended with one
//! `write` — and only after that does the caller ack the result messages. A crash before the line leaves the message
//! unacked, so it is redelivered and the files are simply rewritten with the same content; a
//! crash after the line means the task is done, and its redelivered copy is recognised by task
//! id and dropped. So every task appears in `results.jsonl` exactly once. An exclusive lock on
//! `results.jsonl` keeps a second process from writing the same directory at the same time.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warren_schemas::{Outcome, TaskId, TaskResult};

use super::output_format::{Inline, InlineLine, OutputFormat};
use super::OkExitCodes;
use crate::error::{ProducerError, Result};

/// File name of the results log inside the output directory.
pub const RESULTS_FILE: &str = "results.jsonl";

/// One line of `results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The task's id.
    pub task_id: TaskId,
    /// Its position in the batch, from 0.
    pub index: u64,
    /// The input's name.
    pub name: String,
    /// Outcome label: `success` (exit code 0 or one among `--ok-exit-codes`), `nonzero_exit`,
    /// `trap`, `timeout`, `memory_limit`, `output_limit`, `module_not_found`, `invalid_task`,
    /// `result_refused`.
    pub outcome: String,
    /// The outcome in words (exit code, trap message, limit, ...).
    pub detail: String,
    /// Exit code in the CLI's convention: the guest's own when it exited, else 124 timeout,
    /// 125 memory, 126 output, 127 module not found, 128 trap, 2 invalid task, 74 result refused.
    pub exit_code: i32,
    /// The module version that ran (`name@digest`), when one was found.
    pub module: Option<String>,
    /// Which worker ran it.
    pub worker: String,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// Submitted → started on a worker, in microseconds.
    pub queue_wait_us: f64,
    /// Instantiation, in microseconds.
    pub instantiate_us: f64,
    /// Running the guest, in microseconds.
    pub run_us: f64,
    /// The worker's whole handling of the task, in microseconds.
    pub total_us: f64,
    /// Bytes of stdout (in `<name>.out`, or inline).
    pub stdout_bytes: u64,
    /// Bytes of stderr (in `<name>.err`, written only when non-empty, or inline).
    pub stderr_bytes: u64,
    /// True when the worker cut stderr at its cap.
    pub stderr_truncated: bool,
}

impl Record {
    /// The record for `result` of input `name` at `index`; `ok` says which exit codes count as
    /// success.
    pub fn new(result: &TaskResult, index: u64, name: &str, ok: &OkExitCodes) -> Self {
        let us = |ns: u64| ns as f64 / 1_000.0;
        let outcome = if ok.accepts(&result.outcome) {
            Outcome::Success.label()
        } else {
            result.outcome.label()
        };
        Record {
            task_id: result.task_id,
            index,
            name: name.to_owned(),
            outcome: outcome.to_owned(),
            detail: result.outcome.to_string(),
            exit_code: result.outcome.exit_code(),
            module: result
                .module
                .as_ref()
                .map(|m| format!("{}@{}", m.name, m.digest)),
            worker: result.worker_id.clone(),
            attempt: result.attempt,
            queue_wait_us: us(result.timings.queue_wait_ns),
            instantiate_us: us(result.timings.instantiate_ns),
            run_us: us(result.timings.run_ns),
            total_us: us(result.timings.total_ns),
            stdout_bytes: result.stdout.len() as u64,
            stderr_bytes: result.stderr.len() as u64,
            stderr_truncated: result.stderr_truncated,
        }
    }

    /// True when the task succeeded.
    pub fn is_success(&self) -> bool {
        self.outcome == "success"
    }
}

/// The output directory of a batch, open for writing results.
pub struct Sink {
    /// The directory.
    out: PathBuf,
    /// `results.jsonl`, appending, unbuffered: one `write` per burst.
    log: File,
    /// Where stdout and stderr go.
    format: OutputFormat,
    /// The burst's lines, reused.
    lines: Vec<u8>,
    /// Bytes of complete lines in `results.jsonl`.
    log_len: u64,
    /// Every record written so far (read back on open).
    records: Vec<Record>,
    /// Task ids in `records`.
    done: HashSet<TaskId>,
    /// Exit codes that count as success.
    ok: OkExitCodes,
}

impl Sink {
    /// Opens `out` (which must exist) for results in `format`, reading back the results already
    /// written. A torn last line (crash mid-write) is cut off: its result was never acked and
    /// will come again.
    pub fn open(out: &Path, ok: OkExitCodes, format: OutputFormat) -> Result<Self> {
        let path = out.join(RESULTS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ProducerError::io(&path, e)),
        };
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(last) => &bytes[..=last],
            None => &[][..],
        };
        let mut records = Vec::new();
        let mut done = HashSet::new();
        for (i, line) in String::from_utf8_lossy(complete).lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(line).map_err(|e| {
                ProducerError::OutDir(format!(
                    "{}:{}: not a result record: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            if done.insert(record.task_id) {
                records.push(record);
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ProducerError::io(&path, e))?;
        // One writer per directory: a second `warren collect` on the same batch would race.
        match log.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ProducerError::OutDir(format!(
                    "{} is in use by another warren process (batch or collect) on this batch",
                    out.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ProducerError::io(&path, e)),
        }
        log.set_len(complete.len() as u64)
            .map_err(|e| ProducerError::io(&path, e))?;
        Ok(Sink {
            out: out.to_owned(),
            log,
            format,
            lines: Vec::new(),
            log_len: complete.len() as u64,
            ok,
            records,
            done,
        })
    }

    /// True when the result of `task_id` is already on disk.
    pub fn is_done(&self, task_id: &TaskId) -> bool {
        self.done.contains(task_id)
    }

    /// Task ids already on disk.
    pub fn done_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.done.iter().copied()
    }

    /// Every record on disk, in the order written.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Writes `result` for input `name` at `index`: output files, then the log line. When this
    /// returns, the result is persisted and its message may be acked.
    pub fn write(&mut self, result: &TaskResult, index: u64, name: &str) -> Result<&Record> {
        let written = self.write_all([(result, index, name)])?;
        Ok(&written[0])
    }

    /// Writes a burst of results (each with its input's index and name): every output file,
    /// then all their log lines in one `write`. When this returns, the results are persisted and
    /// their messages may be acked. Returns their records.
    pub fn write_all<'r>(
        &mut self,
        results: impl IntoIterator<Item = (&'r TaskResult, u64, &'r str)>,
    ) -> Result<&[Record]> {
        let first = self.records.len();
        let written = self.stage(results).and_then(|()| {
            self.log
                .write_all(&self.lines)
                .map_err(|e| ProducerError::io(self.out.join(RESULTS_FILE), e))
        });
        if let Err(error) = written {
            // Not persisted: forget them, as the next open would (their messages stay unacked),
            // and cut off any part of their lines that reached the file so the next burst starts
            // on a line of its own.
            self.records.truncate(first);
            let _ = self.log.set_len(self.log_len);
            return Err(error);
        }
        self.log_len += self.lines.len() as u64;
        for record in &self.records[first..] {
            self.done.insert(record.task_id);
        }
        Ok(&self.records[first..])
    }

    /// Writes the burst's output files (files format) and its lines into `self.lines`, and adds
    /// its records.
    fn stage<'r>(
        &mut self,
        results: impl IntoIterator<Item = (&'r TaskResult, u64, &'r str)>,
    ) -> Result<()> {
        self.lines.clear();
        for (result, index, name) in results {
            let record = Record::new(result, index, name, &self.ok);
            let line = match self.format {
                OutputFormat::Files => {
                    write_atomically(&self.out, &format!("{name}.out"), &result.stdout)?;
                    if !result.stderr.is_empty() {
                        write_atomically(&self.out, &format!("{name}.err"), &result.stderr)?;
                    }
                    serde_json::to_writer(&mut self.lines, &record)
                }
                OutputFormat::Inline => serde_json::to_writer(
                    &mut self.lines,
                    &InlineLine {
                        record: &record,
                        stdout: Inline {
                            stream: "stdout",
                            bytes: &result.stdout,
                            always: true,
                        },
                        stderr: Inline {
                            stream: "stderr",
                            bytes: &result.stderr,
                            always: false,
                        },
                    },
                ),
            };
            line.map_err(|e| ProducerError::Internal(format!("record does not serialize: {e}")))?;
            self.lines.push(b'\n');
            self.records.push(record);
        }
        Ok(())
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ProducerError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_schemas::Timings;

    fn result(stdout: &[u8]) -> TaskResult {
        TaskResult {
            task_id: uuid::Uuid::new_v4(),
            batch: None,
            module: None,
            outcome: Outcome::Success,
            stdout: stdout.to_vec(),
            stderr: b"warn".to_vec(),
            stderr_truncated: false,
            exit_code: Some(0),
            timings: Timings::default(),
            worker_id: "w".into(),
            attempt: 1,
        }
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files).unwrap();
        let second = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files)
            .err()
            .expect("locked");
        assert!(second.to_string().contains("in use"), "{second}");
    }

    #[test]
    fn results_are_read_back_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = result(b"one");
        {
            let mut sink =
                Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files).unwrap();
            sink.write(&first, 0, "a").unwrap();
        }
        assert_eq!(std::fs::read(dir.path().join("a.out")).unwrap(), b"one");
        assert_eq!(std::fs::read(dir.path().join("a.err")).unwrap(), b"warn");
        let log = dir.path().join(RESULTS_FILE);
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("{\"task_id\":");
        std::fs::write(&log, text).unwrap();
        let mut sink = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files).unwrap();
        assert!(sink.is_done(&first.task_id));
        sink.write(&result(b"two"), 1, "b").unwrap();
        drop(sink);
        let sink = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files).unwrap();
        let names: Vec<_> = sink.records().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn an_accepted_exit_code_is_recorded_as_success_with_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let ok: OkExitCodes = "0,10".parse().unwrap();
        let mut sink = Sink::open(dir.path(), ok, OutputFormat::Files).unwrap();
        let mut sat = result(b"sat");
        sat.outcome = Outcome::NonZeroExit { code: 10 };
        let mut error = result(b"");
        error.outcome = Outcome::NonZeroExit { code: 1 };
        let sat = sink.write(&sat, 0, "sat").unwrap().clone();
        assert_eq!((sat.outcome.as_str(), sat.exit_code), ("success", 10));
        assert!(sat.is_success());
        let error = sink.write(&error, 1, "error").unwrap();
        assert_eq!(
            (error.outcome.as_str(), error.exit_code),
            ("nonzero_exit", 1)
        );
    }

    #[test]
    fn a_burst_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files).unwrap();
        let (a, b) = (result(b"a"), result(b"b"));
        // b's output cannot be written: a directory stands where its temporary file goes.
        std::fs::create_dir(dir.path().join(".b.out.tmp")).unwrap();
        assert!(sink.write_all([(&a, 0, "a"), (&b, 1, "b")]).is_err());
        assert!(sink.records().is_empty());
        assert!(!sink.is_done(&a.task_id));
        std::fs::remove_dir(dir.path().join(".b.out.tmp")).unwrap();
        let written = sink.write_all([(&a, 0, "a"), (&b, 1, "b")]).unwrap();
        assert_eq!(written.len(), 2);
        drop(sink);
        let sink = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Files).unwrap();
        let names: Vec<_> = sink.records().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn inline_outputs_are_in_the_lines_and_read_back() {
        use super::super::output_format::InlineOutput;
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Inline).unwrap();
        let text = result(b"text\n");
        let mut binary = result(&[0xff, 0x00]);
        binary.stderr.clear();
        sink.write_all([(&text, 0, "t"), (&binary, 1, "b")])
            .unwrap();
        drop(sink);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [RESULTS_FILE], "no file per task");
        let log = std::fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap();
        let lines: Vec<InlineOutput> = log
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0].stdout().unwrap(), b"text\n");
        assert_eq!(lines[0].stderr().unwrap(), b"warn");
        assert_eq!(lines[1].stdout().unwrap(), [0xff, 0x00]);
        assert!(lines[1].stderr().unwrap().is_empty());
        assert!(log
            .lines()
            .nth(1)
            .unwrap()
            .contains("\"stdout_base64\":\"/wA=\""));
        let sink = Sink::open(dir.path(), OkExitCodes::default(), OutputFormat::Inline).unwrap();
        assert_eq!(sink.records().len(), 2);
        assert_eq!(sink.records()[1].stdout_bytes, 2);
    }
}

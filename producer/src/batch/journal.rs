//! The publish journal, `<out>/.warren-published`: which tasks of a batch were handed to the
//! broker, so a resumed collection knows what to wait for.
//!
//! Two records per task, one line each, written with a plain `write` (in the kernel before the
//! next step, so they survive a crash of warren) — one `write` for a whole burst of tasks:
//! - `s <index>` **before** the task is published: it may be in the queue from now on;
//! - `c <index>` after the broker confirmed it: it certainly is.
//!
//! On resume, a task with `s` but no `c` may or may not have reached the broker; it is published
//! again with the same task id, and whichever result arrives first is kept (the other is a
//! duplicate and dropped). A torn last line (crash mid-write) is ignored.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ProducerError, Result};

/// File name of the journal inside the output directory.
pub const JOURNAL_FILE: &str = ".warren-published";

/// What the journal says so far.
#[derive(Debug, Clone, Default)]
pub struct JournalState {
    /// Indices that may have been published.
    pub sent: BTreeSet<u64>,
    /// Indices the broker confirmed.
    pub confirmed: BTreeSet<u64>,
}

impl JournalState {
    /// Sent but never confirmed: to be published again on resume.
    pub fn unconfirmed(&self) -> BTreeSet<u64> {
        self.sent.difference(&self.confirmed).copied().collect()
    }
}

/// An open journal, appending.
pub struct Journal {
    /// Append-only, unbuffered: every record is one `write`.
    file: File,
    /// For error messages.
    path: PathBuf,
    /// Everything recorded, including what was read back on open.
    state: JournalState,
}

impl Journal {
    /// Reads the journal in `out` (empty when there is none) and opens it for appending.
    pub fn open(out: &Path) -> Result<(Self, JournalState)> {
        let path = out.join(JOURNAL_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ProducerError::io(&path, e)),
        };
        let mut state = JournalState::default();
        let complete = match text.iter().rposition(|&b| b == b'\n') {
            Some(last) => &text[..=last],
            None => &[][..],
        };
        for line in String::from_utf8_lossy(complete).lines() {
            let Some((kind, index)) = line.split_once(' ') else {
                continue;
            };
            let Ok(index) = index.parse::<u64>() else {
                continue;
            };
            match kind {
                "s" => {
                    state.sent.insert(index);
                }
                "c" => {
                    state.confirmed.insert(index);
                }
                _ => {}
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ProducerError::io(&path, e))?;
        // Drop a torn last line so the next record starts on a line of its own.
        file.set_len(complete.len() as u64)
            .map_err(|e| ProducerError::io(&path, e))?;
        let journal = Journal {
            file,
            path,
            state: state.clone(),
        };
        Ok((journal, state))
    }

    /// Records that the tasks at `indices` are about to be published.
    pub fn sent(&mut self, indices: &[u64]) -> Result<()> {
        self.record('s', indices)
    }

    /// Records that the broker confirmed the tasks at `indices`.
    pub fn confirmed(&mut self, indices: &[u64]) -> Result<()> {
        self.record('c', indices)
    }

    /// Everything recorded so far.
    pub fn state(&self) -> &JournalState {
        &self.state
    }

    /// One line per index, in one `write`.
    fn record(&mut self, kind: char, indices: &[u64]) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        let mut lines = String::with_capacity(indices.len() * 10);
        for index in indices {
            // Writing to a String cannot fail.
            let _ = writeln!(lines, "{kind} {index}");
        }
        self.file
            .write_all(lines.as_bytes())
            .map_err(|e| ProducerError::io(&self.path, e))?;
        let set = match kind {
            's' => &mut self.state.sent,
            _ => &mut self.state.confirmed,
        };
        set.extend(indices.iter().copied());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_survives_reopen_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, state) = Journal::open(dir.path()).unwrap();
            assert!(state.sent.is_empty());
            journal.sent(&[0, 1]).unwrap();
            journal.confirmed(&[0]).unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("c 1"); // torn: no newline
        std::fs::write(&path, text).unwrap();
        let (mut journal, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(state.unconfirmed().into_iter().collect::<Vec<_>>(), [1]);
        journal.confirmed(&[1]).unwrap();
        let (_, state) = Journal::open(dir.path()).unwrap();
        assert!(state.unconfirmed().is_empty());
    }
}

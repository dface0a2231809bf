//! `--output-format`: where a batch puts each task's stdout and stderr.
//!
//! - `files` (the default): `<name>.out` and `<name>.err` beside `results.jsonl` — handy to open
//!   one output, costly for millions of tiny ones (a file, an inode and a rename each).
//! - `inline`: inside the task's `results.jsonl` line, as `stdout`/`stderr` (text, when it is
//!   UTF-8) or `stdout_base64`/`stderr_base64` (anything else), the way JSONL inputs carry
//!   `input`/`input_base64`. One append per burst of results, no file per task.
//!
//! The format is fixed when the batch starts and kept in its manifest, so `warren collect`
//! resumes it the same way.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::sink::Record;

/// Where a batch writes each task's stdout and stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `<name>.out` and `<name>.err` files.
    #[default]
    Files,
    /// In the task's `results.jsonl` line.
    Inline,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "files" => Ok(OutputFormat::Files),
            "inline" => Ok(OutputFormat::Inline),
            other => Err(format!(
                "{other:?} is not an output format (files or inline)"
            )),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Files => "files",
            OutputFormat::Inline => "inline",
        })
    }
}

/// A `results.jsonl` line of the inline format: the record and the task's output.
#[derive(Serialize)]
pub(super) struct InlineLine<'a> {
    #[serde(flatten)]
    pub record: &'a Record,
    #[serde(flatten)]
    pub stdout: Inline<'a>,
    #[serde(flatten)]
    pub stderr: Inline<'a>,
}

/// One output stream as JSON fields: text when it is UTF-8, base64 otherwise, nothing when
/// empty (stderr only: stdout is always there, so a reader need not guess).
pub(super) struct Inline<'a> {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub bytes: &'a [u8],
    /// Write the field even when the stream is empty.
    pub always: bool,
}

impl Serialize for Inline<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if self.always || !self.bytes.is_empty() {
            match std::str::from_utf8(self.bytes) {
                Ok(text) => map.serialize_entry(self.stream, text)?,
                Err(_) => map.serialize_entry(
                    &format!("{}_base64", self.stream),
                    &base64::engine::general_purpose::STANDARD.encode(self.bytes),
                )?,
            }
        }
        map.end()
    }
}

/// A task's output read back from an inline `results.jsonl` line.
#[derive(Debug, Default, Deserialize)]
pub struct InlineOutput {
    /// Stdout as text.
    stdout: Option<String>,
    /// Stdout that is not UTF-8.
    stdout_base64: Option<String>,
    /// Stderr as text.
    stderr: Option<String>,
    /// Stderr that is not UTF-8.
    stderr_base64: Option<String>,
}

impl InlineOutput {
    /// The task's stdout bytes.
    pub fn stdout(&self) -> Result<Vec<u8>, base64::DecodeError> {
        bytes(&self.stdout, &self.stdout_base64)
    }

    /// The task's stderr bytes (empty when it wrote none).
    pub fn stderr(&self) -> Result<Vec<u8>, base64::DecodeError> {
        bytes(&self.stderr, &self.stderr_base64)
    }
}

fn bytes(text: &Option<String>, b64: &Option<String>) -> Result<Vec<u8>, base64::DecodeError> {
    match (text, b64) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64),
        (None, None) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        for format in [OutputFormat::Files, OutputFormat::Inline] {
            assert_eq!(format.to_string().parse::<OutputFormat>(), Ok(format));
        }
        let error = "json".parse::<OutputFormat>().unwrap_err();
        assert!(error.contains("files or inline"), "{error}");
    }

    #[test]
    fn text_stays_text_and_binary_becomes_base64() {
        let text = Inline {
            stream: "stdout",
            bytes: "héllo\n".as_bytes(),
            always: true,
        };
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            r#"{"stdout":"héllo\n"}"#
        );
        let binary = Inline {
            stream: "stderr",
            bytes: &[0xff, 0x00],
            always: false,
        };
        assert_eq!(
            serde_json::to_string(&binary).unwrap(),
            r#"{"stderr_base64":"/wA="}"#
        );
        let empty = Inline {
            stream: "stderr",
            bytes: b"",
            always: false,
        };
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        let read: InlineOutput =
            serde_json::from_str(r#"{"stdout":"a","stderr_base64":"/wA="}"#).unwrap();
        assert_eq!(read.stdout().unwrap(), b"a");
        assert_eq!(read.stderr().unwrap(), [0xff, 0x00]);
    }
}

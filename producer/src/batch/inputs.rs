//! A batch's inputs: every file of a directory, or every line of a JSONL file — all read and
//! checked **before** anything is published, so a typo on line 9,000 fails the command instead
//! of leaving 8,999 tasks in the queue.
//!
//! # Directory
//! One task per regular file directly inside the directory (not recursive), in name order;
//! hidden files (`.name`) are skipped. The input name is the file name. File contents are read
//! when the task is published, so a large batch is not held in memory.
//!
//! # JSONL
//! One task per non-blank line. A line is either a JSON string (the input text) or an object:
//!
//! ```json
//! {"name": "greeting", "input": "hello\n", "args": ["-n"], "env": {"LANG": "C"}}
//! {"name": "blob", "input_base64": "AAEC"}
//! "just some text"
//! ```
//!
//! `name` defaults to `line-<N>` (N = the line number, from 1); `input` is UTF-8 text and
//! `input_base64` binary (at most one of the two; neither = empty input); `args` are appended to
//! the command line's `--arg`s; `env` entries override `--env` entries of the same name. Unknown
//! fields are an error, so a misspelt field does not silently do nothing.
//!
//! Names become output file names, so they must be unique, non-empty, without `/`, `\` or NUL,
//! and not start with `.`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use warren_schemas::args::check_env_key;
use warren_schemas::DEFAULT_MAX_MESSAGE_BYTES;

/// Largest input one task may carry: the message limit minus room for the rest of the task.
pub const MAX_INPUT_BYTES: u64 = (DEFAULT_MAX_MESSAGE_BYTES as u64) - (64 << 10);

/// Why the inputs are unusable.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The `--inputs` path does not exist.
    #[error("--inputs {0}: no such file or directory")]
    NotFound(PathBuf),
    /// The `--inputs` path is neither a directory nor a JSONL file.
    #[error("--inputs {0}: expected a directory or a .jsonl/.ndjson file")]
    NotDirOrJsonl(PathBuf),
    /// Reading failed.
    #[error("--inputs {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// There is nothing to run.
    #[error("--inputs {0}: no inputs (an empty directory or a JSONL file without lines)")]
    Empty(PathBuf),
    /// A JSONL line is malformed.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        /// The JSONL file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An input name cannot be used as an output file name.
    #[error("{origin}: input name {name:?} {reason}")]
    BadName {
        /// Where the name came from (file or file:line).
        origin: String,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two inputs have the same name (their outputs would overwrite each other).
    #[error("{second}: input name {name:?} is already used by {first}")]
    DuplicateName {
        /// The name.
        name: String,
        /// Where it first appeared.
        first: String,
        /// Where it appeared again.
        second: String,
    },
    /// An input is larger than one message may be.
    #[error("{origin}: input of {bytes} bytes exceeds the {limit}-byte limit of one task")]
    TooLarge {
        /// Which input.
        origin: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}

/// Where an input's bytes come from.
#[derive(Debug, Clone)]
pub enum InputData {
    /// A file, read when the task is published.
    File(PathBuf),
    /// Bytes given inline (JSONL).
    Inline(Vec<u8>),
}

/// One input of a batch.
#[derive(Debug, Clone)]
pub struct BatchInput {
    /// Unique name; outputs are named after it.
    pub name: String,
    /// The bytes for the guest's stdin.
    pub data: InputData,
    /// Extra arguments for this input (appended to the batch's).
    pub args: Vec<String>,
    /// Environment for this input (overrides the batch's entries of the same name).
    pub env: Vec<(String, String)>,
}

impl BatchInput {
    /// The input's bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match &self.data {
            InputData::File(path) => {
                // Not `fs::read`: its size probe is one more syscall per input, and inputs are
                // mostly small.
                let mut bytes = Vec::new();
                std::fs::File::open(path)?.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            InputData::Inline(bytes) => Ok(bytes.clone()),
        }
    }
}

/// Reads and checks every input under `path` (a directory or a JSONL file).
pub fn load(path: &Path) -> Result<Vec<BatchInput>, InputError> {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InputError::NotFound(path.to_owned()))
        }
        Err(source) => {
            return Err(InputError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let inputs = if metadata.is_dir() {
        load_dir(path)?
    } else if is_jsonl(path) {
        load_jsonl(path)?
    } else {
        return Err(InputError::NotDirOrJsonl(path.to_owned()));
    };
    if inputs.is_empty() {
        return Err(InputError::Empty(path.to_owned()));
    }
    Ok(inputs)
}

fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson")
    )
}

fn load_dir(dir: &Path) -> Result<Vec<BatchInput>, InputError> {
    let read_err = |source| InputError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        let origin = path.display().to_string();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(InputError::BadName {
                origin,
                name: entry.file_name().to_string_lossy().into_owned(),
                reason: "is not valid UTF-8",
            });
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symlinks: a link to a file is an input, a subdirectory is not.
        let metadata = std::fs::metadata(&path).map_err(|source| InputError::Read {
            path: path.clone(),
            source,
        })?;
        if !metadata.is_file() {
            continue;
        }
        if metadata.len() > MAX_INPUT_BYTES {
            return Err(InputError::TooLarge {
                origin,
                bytes: metadata.len(),
                limit: MAX_INPUT_BYTES,
            });
        }
        files.push((name, path));
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|(name, path)| BatchInput {
            name,
            data: InputData::File(path),
            args: Vec::new(),
            env: Vec::new(),
        })
        .collect())
}

/// One JSONL line in object form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    name: Option<String>,
    input: Option<String>,
    input_base64: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn load_jsonl(path: &Path) -> Result<Vec<BatchInput>, InputError> {
    let file = std::fs::File::open(path).map_err(|source| InputError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut inputs = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let bad = |reason: String| InputError::BadLine {
            path: path.to_owned(),
            line: number,
            reason,
        };
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let origin = format!("{}:{number}", path.display());
        let input = match value {
            serde_json::Value::String(text) => BatchInput {
                name: format!("line-{number}"),
                data: InputData::Inline(text.into_bytes()),
                args: Vec::new(),
                env: Vec::new(),
            },
            value @ serde_json::Value::Object(_) => {
                let line: Line = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
                let data = match (line.input, line.input_base64) {
                    (Some(_), Some(_)) => {
                        return Err(bad(
                            "give either \"input\" or \"input_base64\", not both".into()
                        ))
                    }
                    (Some(text), None) => text.into_bytes(),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|e| bad(format!("\"input_base64\" is not base64: {e}")))?,
                    (None, None) => Vec::new(),
                };
                let mut env = Vec::with_capacity(line.env.len());
                for (key, value) in line.env {
                    check_env_key(&key).map_err(|reason| bad(format!("env {key:?}: {reason}")))?;
                    env.push((key, value));
                }
                BatchInput {
                    name: line.name.unwrap_or_else(|| format!("line-{number}")),
                    data: InputData::Inline(data),
                    args: line.args,
                    env,
                }
            }
            _ => return Err(bad("expected a JSON object or string".into())),
        };
        if let InputData::Inline(bytes) = &input.data {
            let bytes = bytes.len() as u64;
            if bytes > MAX_INPUT_BYTES {
                return Err(InputError::TooLarge {
                    origin,
                    bytes,
                    limit: MAX_INPUT_BYTES,
                });
            }
        }
        check_name(&input.name).map_err(|reason| InputError::BadName {
            origin: origin.clone(),
            name: input.name.clone(),
            reason,
        })?;
        if let Some(first) = names.insert(input.name.clone(), origin.clone()) {
            return Err(InputError::DuplicateName {
                name: input.name,
                first,
                second: origin,
            });
        }
        inputs.push(input);
    }
    Ok(inputs)
}

/// Checks that `name` is usable as an output file name.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.starts_with('.') {
        Err("starts with '.'")
    } else if name.contains(['/', '\\', '\0']) {
        Err("contains '/', '\\' or NUL")
    } else if name.len() > 200 {
        Err("is longer than 200 bytes")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn jsonl_lines_objects_strings_and_blank_lines() {
        let (_d, path) = jsonl(
            "{\"name\":\"a\",\"input\":\"hi\",\"args\":[\"x\"],\"env\":{\"K\":\"V\"}}\n\n\"bare\"\n{\"input_base64\":\"AAE=\"}\n",
        );
        let inputs = load(&path).unwrap();
        let names: Vec<_> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "line-3", "line-4"]);
        assert_eq!(inputs[0].read().unwrap(), b"hi");
        assert_eq!(inputs[0].args, ["x"]);
        assert_eq!(inputs[0].env, [("K".to_owned(), "V".to_owned())]);
        assert_eq!(inputs[2].read().unwrap(), [0, 1]);
    }

    #[test]
    fn malformed_line_is_named_with_its_number() {
        let (_d, path) = jsonl("\"ok\"\n{\"input\": \"x\"\n");
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("in.jsonl:2: not valid JSON"), "{err}");
        let (_d, path) = jsonl("{\"inptu\": \"x\"}\n");
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains(":1: unknown field `inptu`"), "{err}");
    }

    #[test]
    fn bad_and_duplicate_names_are_refused() {
        let (_d, path) = jsonl("{\"name\":\"../x\"}\n");
        assert!(matches!(load(&path), Err(InputError::BadName { .. })));
        let (_d, path) = jsonl("{\"name\":\"a\"}\n{\"name\":\"a\"}\n");
        assert!(matches!(load(&path), Err(InputError::DuplicateName { .. })));
    }

    #[test]
    fn empty_and_missing_inputs_are_refused() {
        let (_d, path) = jsonl("\n\n");
        assert!(matches!(load(&path), Err(InputError::Empty(_))));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(InputError::Empty(_))));
        assert!(matches!(
            load(&dir.path().join("nope")),
            Err(InputError::NotFound(_))
        ));
    }

    #[test]
    fn directory_inputs_are_sorted_files_without_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.txt", "a.txt", ".hidden"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let names: Vec<_> = load(dir.path())
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
    }
}

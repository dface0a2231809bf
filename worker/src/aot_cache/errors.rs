//! Why the AOT cache refuses a directory or a file, in words an operator can act on: who owns
//! what, which bits to clear, the command that fixes it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::{fs, io};

/// Why a cache directory is refused: a start-up error for `run` and `exec`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `XDG_CACHE_HOME` nor `HOME` names an absolute directory.
    #[error(
        "no default AOT cache directory: neither XDG_CACHE_HOME nor HOME is set to an absolute \
         path; pass --cache DIR (or set WARREN_CACHE) to a directory only this worker's user can \
         write"
    )]
    NoDefault,
    /// The directory (or a parent) cannot be created or inspected.
    #[error("cannot use the AOT cache directory {path}: {source}")]
    Io {
        /// The directory that failed.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The directory, or one of its parents, lets another user replace its files.
    #[error("{0}")]
    Untrusted(Box<Untrusted>),
}

/// A directory on the cache's path that another user could use to replace compiled code.
#[derive(Debug)]
pub struct Untrusted {
    /// The cache directory as given.
    pub cache: PathBuf,
    /// The directory that fails: the cache itself or one of its ancestors.
    pub dir: PathBuf,
    /// Whether `dir` is the cache itself (the stricter rule) or an ancestor.
    pub role: Role,
    /// What is wrong with it.
    pub fault: Fault,
    /// Its owner.
    pub owner: Owner,
    /// Its mode bits (permissions, setuid/setgid/sticky).
    pub mode: u32,
    /// The worker's user.
    pub me: Owner,
}

/// Which rule a directory is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The cache directory: owned by the worker's user, not writable by group or others.
    Cache,
    /// A parent: owned by root or the worker's user, not writable by group or others unless
    /// sticky.
    Ancestor,
    /// A file in the cache: a regular file, owned by the worker's user, not writable by group
    /// or others.
    Entry,
}

/// What makes a directory or file untrusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Owned by a user other than the ones the rule allows.
    Owner,
    /// Writable by group or others (and, for an ancestor, not sticky).
    Writable,
    /// Not a directory (or, for a cache entry, not a regular file), e.g. a symbolic link.
    Kind,
}

/// A uid, shown with its user name when `/etc/passwd` has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub u32);

/// Why a cache entry was not loaded. The registry logs it, recompiles and replaces the entry.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// The `.cwasm` or its record is owned by another user, writable by group or others, or not
    /// a regular file.
    #[error(
        "{path} is {} (owner {owner}, mode {mode:04o}; this worker runs as {me})",
        fault_text(*.fault, Role::Entry)
    )]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        fault: Fault,
        /// Its owner.
        owner: Owner,
        /// Its mode bits.
        mode: u32,
        /// The worker's user.
        me: Owner,
    },
    /// The `.cwasm` exists but its integrity record does not.
    #[error("{path} has no integrity record ({record} is missing)")]
    NoRecord {
        /// The compiled file.
        path: PathBuf,
        /// The record expected beside it.
        record: PathBuf,
    },
    /// The `.cwasm`'s digest, module or engine differs from its record: not what this worker
    /// wrote for this module (copied from another entry, or modified).
    #[error(
        "{path} does not match its integrity record {record}: it is not the code this worker \
         compiled for this module and engine (copied from another entry, or modified)"
    )]
    Mismatch {
        /// The compiled file.
        path: PathBuf,
        /// Its record.
        record: PathBuf,
    },
    /// The directory is no longer trusted (its owner or mode changed since start).
    #[error(transparent)]
    Directory(#[from] CacheError),
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn fault_text(fault: Fault, role: Role) -> &'static str {
    match (fault, role) {
        (Fault::Owner, Role::Cache | Role::Entry) => "not owned by this worker's user",
        (Fault::Owner, Role::Ancestor) => "owned by a user other than root or this worker's",
        (Fault::Writable, Role::Cache | Role::Entry) => "writable by group or others",
        (Fault::Writable, Role::Ancestor) => "writable by group or others and not sticky",
        (Fault::Kind, Role::Cache | Role::Ancestor) => "not a directory",
        (Fault::Kind, Role::Entry) => "not a regular file (a symbolic link?)",
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Untrusted {
            cache,
            dir,
            role,
            fault,
            owner,
            mode,
            me,
        } = self;
        let quoted = shell_quote(dir);
        write!(f, "refusing the AOT cache {}: ", cache.display())?;
        match role {
            Role::Ancestor => write!(f, "its parent directory {}", dir.display())?,
            Role::Cache | Role::Entry => write!(f, "the directory {}", dir.display())?,
        }
        write!(
            f,
            " is {} (owner {owner}, mode {mode:04o}), so another user could replace the compiled \
             code this worker runs as {me}. ",
            fault_text(*fault, *role)
        )?;
        let rule = "Every parent must be a directory owned by root or";
        match (role, fault) {
            (Role::Cache | Role::Entry, _) => write!(
                f,
                "Fix: `chown {} {quoted} && chmod 0700 {quoted}`, or",
                me.0
            )?,
            (Role::Ancestor, Fault::Writable) => write!(
                f,
                "{rule} {me} and not writable by group or others (unless sticky, like /tmp). \
                 Fix: `chmod go-w {quoted}`, or"
            )?,
            (Role::Ancestor, _) => write!(
                f,
                "{rule} {me} and not writable by group or others (unless sticky, like /tmp). \
                 Fix:"
            )?,
        }
        write!(f, " pass another --cache (WARREN_CACHE)")
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match user_name(self.0) {
            Some(name) => write!(f, "uid {} ({name})", self.0),
            None => write!(f, "uid {}", self.0),
        }
    }
}

/// The name `/etc/passwd` gives `uid` (for messages only; users from other NSS sources show
/// as a bare uid).
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// `path` as one shell word.
fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

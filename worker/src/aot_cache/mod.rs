//! The AOT cache's trust rules: which directory and which files the worker may load compiled
//! code from.
//!
//! A `.cwasm` file is native machine code that runs outside the Wasm sandbox, so whoever can
//! write it controls the worker. Three checks keep other users out:
//!
//! 1. **The directory chain** ([`AotCache::open`], and again before every load or store): the
//!    cache directory is owned by the worker's (effective) user and not writable by group or
//!    others; every ancestor up to `/` is owned by root or that user and not writable by group
//!    or others — except a sticky directory such as `/tmp`, where others may create entries but
//!    never rename or delete one they do not own (and the entry below it is checked in its own
//!    right). The rules of ssh's `StrictModes`. Symlinks are resolved once, at open; every later
//!    path goes through the resolved directory, which no other user can change.
//! 2. **Each file** ([`AotCache::load`]): opened once with `O_NOFOLLOW`, then checked with
//!    `fstat` on that descriptor (owned by the worker's user, a regular file, not writable by
//!    group or others), and the same descriptor is what wasmtime maps: no window between check
//!    and use.
//! 3. **Integrity**: beside each `<module digest>-<engine hash>.cwasm` the worker writes
//!    `<same>.cwasm.sha256`, a record binding the file's SHA-256 to the module digest and the
//!    engine hash. A compiled file renamed or copied under another module's name, or modified, no
//!    longer matches its record.
//!
//! A file that fails 2 or 3 is not loaded: the registry warns, recompiles and stores its own
//! (the rename replaces the bad one). A directory that fails 1 is a start-up error
//! ([`CacheError`]). None of this protects against a process running as the worker's own user,
//! which could rewrite a file and its record alike (or the worker's memory); see
//! `docs/reliability.md`.

mod errors;

pub use errors::{CacheError, Fault, Owner, Rejected, Role, Untrusted};

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

/// Mode bits that let a group or others write.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// The sticky bit: in such a directory only an entry's owner (or root) renames or deletes it.
const STICKY: u32 = 0o1000;
/// Largest integrity record read; a real one is about 200 bytes.
const MAX_RECORD: u64 = 1024;

/// The AOT cache directory, checked, and the rules for reading and writing its files.
#[derive(Debug)]
pub struct AotCache {
    /// The directory as resolved at open (symlinks followed once): every later path is built
    /// from it, so a symlink in the given path cannot be re-pointed afterwards.
    dir: PathBuf,
    /// The directory as given (`--cache`), for messages.
    requested: PathBuf,
    /// The worker's effective uid: the owner every cache file must have.
    uid: u32,
    /// Engine compatibility hash: part of each file name and each integrity record.
    engine: String,
}

/// The default cache directory: `$XDG_CACHE_HOME/warren`, else `$HOME/.cache/warren` (the XDG
/// base directory rule: a relative value is ignored). Private to the user by construction; there
/// is no shared fallback such as `/tmp`, which another user could claim first.
pub fn default_dir() -> Result<PathBuf, CacheError> {
    default_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
        .ok_or(CacheError::NoDefault)
}

fn default_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |value: Option<OsString>| value.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_cache_home)
        .map(|dir| dir.join("warren"))
        .or_else(|| absolute(home).map(|home| home.join(".cache").join("warren")))
}

impl AotCache {
    /// Creates `dir` when missing (parents like `mkdir -p`, mode 0755; the cache itself 0700),
    /// then refuses it unless it and its ancestors pass the directory rules (module docs).
    /// `engine` is the engine's compatibility hash.
    pub fn open(dir: &Path, engine: String) -> Result<Self, CacheError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error(parent))?;
        }
        match DirBuilder::new().mode(0o700).create(dir) {
            // Whoever made it, the checks below decide.
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_error(dir)(error))
            }
            _ => {}
        }
        let cache = AotCache {
            dir: fs::canonicalize(dir).map_err(io_error(dir))?,
            requested: dir.to_owned(),
            uid: rustix::process::geteuid().as_raw(),
            engine,
        };
        cache.check_dir()?;
        Ok(cache)
    }

    /// The directory, symlinks resolved.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry compiled from the module with this digest, opened, checked and verified;
    /// `None` when there is none.
    pub fn load(&self, module_digest: &str) -> Result<Option<File>, Rejected> {
        self.check_dir()?;
        let path = self.entry_path(module_digest);
        let Some(compiled) = self.open_checked(&path)? else {
            return Ok(None);
        };
        let record = record_path(&path);
        let Some(recorded) = self.open_checked(&record)? else {
            return Err(Rejected::NoRecord { path, record });
        };
        let mut recorded_bytes = Vec::new();
        (&recorded)
            .take(MAX_RECORD)
            .read_to_end(&mut recorded_bytes)
            .map_err(|source| Rejected::Io {
                path: record.clone(),
                source,
            })?;
        let mut hasher = Sha256::new();
        io::copy(&mut &compiled, &mut hasher).map_err(|source| Rejected::Io {
            path: path.clone(),
            source,
        })?;
        let expected = self.record(module_digest, &hasher.finalize());
        if recorded_bytes != expected.as_bytes() {
            return Err(Rejected::Mismatch { path, record });
        }
        Ok(Some(compiled))
    }

    /// Stores `compiled` (the module with this digest, compiled by this engine) and its record,
    /// each through a private temporary file and a rename (replacing whatever was there), and
    /// returns the stored file, open: the caller maps exactly what it wrote. The record goes
    /// first, so a worker sharing the cache that looks in between finds no entry (and compiles)
    /// rather than an entry without its record.
    pub fn store(&self, module_digest: &str, compiled: &[u8]) -> anyhow::Result<File> {
        self.check_dir()?;
        let path = self.entry_path(module_digest);
        let record = record_path(&path);
        let text = self.record(module_digest, &Sha256::digest(compiled));
        write_atomically(&self.dir, &record, text.as_bytes())
            .with_context(|| format!("cannot write {}", record.display()))?;
        write_atomically(&self.dir, &path, compiled)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn entry_path(&self, module_digest: &str) -> PathBuf {
        self.dir
            .join(format!("{module_digest}-{}.cwasm", self.engine))
    }

    /// What the record of an entry says: the file's digest bound to the module and engine.
    fn record(&self, module_digest: &str, compiled_digest: &[u8]) -> String {
        format!(
            "warren AOT cache entry v1\nmodule sha256:{module_digest}\nengine {}\ncwasm sha256:{}\n",
            self.engine,
            hex::encode(compiled_digest)
        )
    }

    /// Opens `path` without following a symlink and checks the opened file; `None` if absent.
    fn open_checked(&self, path: &Path) -> Result<Option<File>, Rejected> {
        let untrusted = |fault, owner, mode| Rejected::Untrusted {
            path: path.to_owned(),
            fault,
            owner: Owner(owner),
            mode,
            me: Owner(self.uid),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let file = match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                let meta = fs::symlink_metadata(path).ok();
                let (owner, mode) = meta.map_or((u32::MAX, 0), |m| (m.uid(), m.mode() & 0o7777));
                return Err(untrusted(Fault::Kind, owner, mode));
            }
            Err(errno) => {
                return Err(Rejected::Io {
                    path: path.to_owned(),
                    source: errno.into(),
                })
            }
        };
        let meta = file.metadata().map_err(|source| Rejected::Io {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_file() {
            return Err(untrusted(Fault::Kind, meta.uid(), mode));
        }
        match judge(Role::Entry, meta.uid(), mode, self.uid) {
            Some(fault) => Err(untrusted(fault, meta.uid(), mode)),
            None => Ok(Some(file)),
        }
    }

    /// Applies the directory rules to the cache and every ancestor, with `lstat` (the path is
    /// resolved, so any symlink found now was put there since and fails as not a directory).
    fn check_dir(&self) -> Result<(), CacheError> {
        for (depth, dir) in self.dir.ancestors().enumerate() {
            let role = if depth == 0 {
                Role::Cache
            } else {
                Role::Ancestor
            };
            let meta = fs::symlink_metadata(dir).map_err(|source| CacheError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let mode = meta.mode() & 0o7777;
            let fault = if meta.file_type().is_dir() {
                judge(role, meta.uid(), mode, self.uid)
            } else {
                Some(Fault::Kind)
            };
            if let Some(fault) = fault {
                return Err(CacheError::Untrusted(Box::new(Untrusted {
                    cache: self.requested.clone(),
                    dir: dir.to_owned(),
                    role,
                    fault,
                    owner: Owner(meta.uid()),
                    mode,
                    me: Owner(self.uid),
                })));
            }
        }
        Ok(())
    }
}

/// The rules, on one directory or file owned by `owner` with `mode`, for a worker running as
/// `me`.
fn judge(role: Role, owner: u32, mode: u32, me: u32) -> Option<Fault> {
    let owner_ok = match role {
        Role::Cache | Role::Entry => owner == me,
        Role::Ancestor => owner == me || owner == 0,
    };
    let writable = mode & GROUP_OTHER_WRITE != 0;
    // In a sticky directory others may add entries but not rename or delete ours; the entry
    // below is checked in its own right.
    let writable_ok = !writable || (role == Role::Ancestor && mode & STICKY != 0);
    if !owner_ok {
        Some(Fault::Owner)
    } else if !writable_ok {
        Some(Fault::Writable)
    } else {
        None
    }
}

fn record_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Writes `bytes` to `file` through a new temporary file (mode 0600) in `dir` and a rename, so a
/// reader never sees half a file and two workers sharing a cache never corrupt each other.
/// Returns the written file, still open.
fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> io::Result<File> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut out| {
            out.write_all(bytes)?;
            fs::rename(&tmp, file)?;
            Ok(out)
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;
    const OTHER: u32 = 65534;

    #[test]
    fn the_cache_directory_must_be_ours_and_not_writable_by_others() {
        assert_eq!(judge(Role::Cache, ME, 0o700, ME), None);
        assert_eq!(judge(Role::Cache, ME, 0o755, ME), None, "readable is fine");
        assert_eq!(judge(Role::Cache, ME, 0o770, ME), Some(Fault::Writable));
        assert_eq!(judge(Role::Cache, ME, 0o777, ME), Some(Fault::Writable));
        assert_eq!(
            judge(Role::Cache, ME, 0o1777, ME),
            Some(Fault::Writable),
            "sticky is no excuse for the cache itself"
        );
        assert_eq!(judge(Role::Cache, OTHER, 0o700, ME), Some(Fault::Owner));
        assert_eq!(
            judge(Role::Cache, 0, 0o700, ME),
            Some(Fault::Owner),
            "not even root's, for a worker that is not root"
        );
        assert_eq!(judge(Role::Cache, 0, 0o700, 0), None);
    }

    #[test]
    fn ancestors_must_be_root_or_ours_and_writable_only_if_sticky() {
        assert_eq!(judge(Role::Ancestor, 0, 0o755, ME), None);
        assert_eq!(judge(Role::Ancestor, ME, 0o700, ME), None);
        assert_eq!(judge(Role::Ancestor, 0, 0o1777, ME), None, "/tmp");
        assert_eq!(judge(Role::Ancestor, 0, 0o777, ME), Some(Fault::Writable));
        assert_eq!(judge(Role::Ancestor, 0, 0o775, ME), Some(Fault::Writable));
        assert_eq!(
            judge(Role::Ancestor, OTHER, 0o755, ME),
            Some(Fault::Owner),
            "another user may replace anything in their directory"
        );
        assert_eq!(
            judge(Role::Ancestor, OTHER, 0o1777, ME),
            Some(Fault::Owner),
            "a sticky directory's owner may still delete our entry"
        );
    }

    #[test]
    fn the_default_directory_is_per_user_and_never_shared() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            default_dir_from(some("/x/cache"), some("/home/me")),
            Some(PathBuf::from("/x/cache/warren"))
        );
        assert_eq!(
            default_dir_from(None, some("/home/me")),
            Some(PathBuf::from("/home/me/.cache/warren"))
        );
        assert_eq!(
            default_dir_from(some("relative"), some("/home/me")),
            Some(PathBuf::from("/home/me/.cache/warren")),
            "a relative XDG_CACHE_HOME is ignored"
        );
        assert_eq!(default_dir_from(some(""), some("")), None);
        assert_eq!(default_dir_from(None, None), None);
    }

    #[test]
    fn refusals_name_the_directory_owner_mode_and_fix() {
        let refusal = |role, fault, dir: &str| {
            Untrusted {
                cache: PathBuf::from("/srv/my cache"),
                dir: PathBuf::from(dir),
                role,
                fault,
                owner: Owner(OTHER),
                mode: 0o777,
                me: Owner(ME),
            }
            .to_string()
        };
        let own = refusal(Role::Cache, Fault::Owner, "/srv/my cache");
        assert!(own.contains("/srv/my cache"), "{own}");
        assert!(own.contains("owner uid 65534"), "{own}");
        assert!(own.contains("mode 0777"), "{own}");
        assert!(
            own.contains("`chown 1000 '/srv/my cache' && chmod 0700 '/srv/my cache'`"),
            "{own}"
        );
        assert!(own.contains("--cache"), "{own}");
        let parent = refusal(Role::Ancestor, Fault::Writable, "/srv");
        assert!(parent.contains("parent directory /srv"), "{parent}");
        assert!(parent.contains("`chmod go-w /srv`"), "{parent}");
    }
}

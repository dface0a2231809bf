//! Pulled modules on disk: `<cache>/pulled/<digest>/<name>.wasm`, beside the AOT cache, so a
//! restarted worker loads a module it pulled before without the registry (and, with its
//! compiled code in the AOT cache, without compiling). The file name keeps the module's name;
//! the directory, its digest. Files are written to a temporary name and renamed, so a file
//! under its final name is always whole; what it holds is checked against the digest again
//! when it is loaded.

use std::fs::{self, DirBuilder};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The pulled-modules directory.
#[derive(Debug)]
pub struct PulledStore {
    dir: PathBuf,
}

impl PulledStore {
    /// `<cache_dir>/pulled`, created (mode 0700) when missing.
    pub fn open(cache_dir: &Path) -> io::Result<Self> {
        let dir = cache_dir.join("pulled");
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(PulledStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where module `name` with `digest` is (or would be) stored.
    pub fn path(&self, name: &str, digest: &str) -> PathBuf {
        self.dir.join(digest).join(format!("{name}.wasm"))
    }

    /// The stored file of `name`@`digest`, if there is one.
    pub fn existing(&self, name: &str, digest: &str) -> Option<PathBuf> {
        let path = self.path(name, digest);
        path.is_file().then_some(path)
    }

    /// Digests of the stored versions of `name` that start with `prefix`.
    pub fn digests_with_prefix(&self, name: &str, prefix: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|digest| digest.starts_with(prefix))
            .filter(|digest| self.existing(name, digest).is_some())
            .collect()
    }

    /// Stores `bytes` as `name`@`digest` and returns the file.
    pub fn save(&self, name: &str, digest: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self.path(name, digest);
        let parent = path.parent().unwrap_or(&self.dir);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        let temp = parent.join(format!(".{name}.wasm.{}.tmp", std::process::id()));
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &path)?;
        Ok(path)
    }

    /// Removes a stored file that turned out not to hold its digest.
    pub fn discard(&self, name: &str, digest: &str) {
        let _ = fs::remove_file(self.path(name, digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_module_is_found_by_name_digest_and_prefix() {
        let cache = tempfile::tempdir().unwrap();
        let store = PulledStore::open(cache.path()).unwrap();
        let digest = "ab".repeat(32);
        assert_eq!(store.existing("wc", &digest), None);
        let path = store.save("wc", &digest, b"bytes").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"bytes");
        assert_eq!(store.existing("wc", &digest), Some(path));
        assert_eq!(store.existing("other", &digest), None);
        assert_eq!(
            store.digests_with_prefix("wc", "abab"),
            vec![digest.clone()]
        );
        assert!(store.digests_with_prefix("wc", "cd").is_empty());
        store.discard("wc", &digest);
        assert_eq!(store.existing("wc", &digest), None);
    }
}

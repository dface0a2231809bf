//! The warm module registry: every module and component in the modules directory, compiled
//! ahead of time, linked once into an `InstancePre`, and looked up by name on the hot path.
//!
//! - **Kinds**: core modules (WASI preview 1) and components (WASI 0.2 `wasi:cli/command`) sit
//!   side by side and are told apart by their header ([`GuestKind`]); everything below applies
//!   to both, and "module" means either.
//! - **Identity** is name (the file stem) + sha256 of the bytes. Tasks ask for `name` (the newest
//!   version) or `name@<digest prefix>` (an exact version; the last [`VERSIONS_KEPT`] versions of
//!   a name stay loaded so pinned tasks keep working across an update).
//! - **AOT cache**: `Engine::precompile_module` (or `precompile_component`) output is stored as
//!   `<digest>-<engine hash>.cwasm` by [`AotCache`] and loaded from the checked file
//!   ([`Compiled::load_file`]) into each of the sandbox's shard engines; each maps the file, so copy-on-write memory images come straight from it
//!   (and the page cache holds one copy). A restart with a warm cache compiles nothing. The
//!   cache's files are native code run outside the sandbox: [`crate::aot_cache`] refuses a
//!   directory other users could write, and any file not owned by the worker's user or not
//!   matching the integrity record the worker wrote beside it; such a file is recompiled and
//!   replaced.
//! - **Reload**: [`ModuleRegistry::load_dir`] rescans the directory, (re)loading only files whose
//!   size or mtime changed; `crate::watch` calls it when the directory changes. A task holds an
//!   `Arc` of its version, so tasks running on an old version finish on it. A file that fails to
//!   load is reported and skipped, and a name whose new file is broken keeps serving its previous
//!   good version.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use warren_schemas::{ModuleRef, ResolvedModule};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

mod artifact;

pub use artifact::{Compiled, GuestKind};

use crate::aot_cache::{AotCache, CacheError};
use crate::sandbox::{Sandbox, WarmModule};

/// Versions of one name kept loaded for `name@digest` lookups.
pub const VERSIONS_KEPT: usize = 4;

/// One loaded module version, ready to instantiate.
pub struct LoadedModule {
    /// Module name (file stem).
    pub name: String,
    /// Lowercase hex sha256 of the `.wasm` bytes.
    pub digest: String,
    /// Imports resolved against each shard's linker.
    pub warm: WarmModule,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl LoadedModule {
    /// Name and digest, as results report them.
    pub fn resolved(&self) -> ResolvedModule {
        ResolvedModule {
            name: self.name.clone(),
            digest: self.digest.clone(),
        }
    }

    /// Whether it is a core module or a component.
    pub fn kind(&self) -> GuestKind {
        if self.warm.is_component() {
            GuestKind::Component
        } else {
            GuestKind::Module
        }
    }

    /// `name@<first 12 hex digits>`, for logs.
    pub fn short_ref(&self) -> String {
        format!("{}@{}", self.name, &self.digest[..12])
    }
}

/// Why a module file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file name is not a usable module name.
    #[error("{path}: the file stem is not a valid module name ({reason})")]
    BadName {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The bytes are not a valid module, or it imports something the sandbox lacks, or it is not
    /// a WASI command.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// wasmtime's explanation (naming the import for link errors).
        reason: String,
    },
}

/// Why a task's module reference found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No module by that name, or no version with that digest prefix.
    #[error("module {0} not found")]
    NotFound(String),
    /// The digest prefix matches several loaded versions.
    #[error("module {0} is ambiguous: the digest prefix matches several versions")]
    Ambiguous(String),
}

/// What a directory scan did.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Modules (re)loaded from changed files: `name@digest`.
    pub loaded: Vec<String>,
    /// Of those, how many came from the AOT cache without compiling.
    pub from_cache: usize,
    /// Names removed because their file disappeared.
    pub removed: Vec<String>,
    /// Files that failed to load, with the reason.
    pub failed: Vec<LoadError>,
}

/// A loaded module and whether it came from the AOT cache, or why it failed.
type Loaded = Result<(Arc<LoadedModule>, bool), LoadError>;

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// The warm map from module name to loaded versions.
pub struct ModuleRegistry {
    sandbox: Arc<Sandbox>,
    /// Compiled modules, checked before each is loaded.
    cache: AotCache,
    /// Name → versions, newest last.
    modules: RwLock<HashMap<String, Vec<Arc<LoadedModule>>>>,
    /// Files seen by the last scan, to skip unchanged ones.
    seen: Mutex<HashMap<PathBuf, FileStamp>>,
}

impl ModuleRegistry {
    /// An empty registry whose AOT cache lives in `cache_dir` (created, mode 0700, when
    /// missing). Fails if the directory, or a parent, lets another user replace its files
    /// ([`crate::aot_cache`]).
    pub fn new(sandbox: Arc<Sandbox>, cache_dir: &Path) -> Result<Self, CacheError> {
        let mut hasher = DefaultHasher::new();
        sandbox
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let cache = AotCache::open(cache_dir, format!("{:016x}", hasher.finish()))?;
        Ok(ModuleRegistry {
            sandbox,
            cache,
            modules: RwLock::default(),
            seen: Mutex::default(),
        })
    }

    /// The sandbox modules are prepared for.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Finds the module a task asks for. The hot path: one read lock and a hash lookup.
    pub fn resolve(&self, wanted: &ModuleRef) -> Result<Arc<LoadedModule>, ResolveError> {
        let modules = self.modules.read().unwrap_or_else(|p| p.into_inner());
        let versions = modules
            .get(&wanted.name)
            .ok_or_else(|| ResolveError::NotFound(wanted.to_string()))?;
        let Some(prefix) = &wanted.digest_prefix else {
            return versions
                .last()
                .cloned()
                .ok_or_else(|| ResolveError::NotFound(wanted.to_string()));
        };
        let mut matching = versions
            .iter()
            .filter(|m| m.digest.starts_with(prefix.as_str()));
        match (matching.next(), matching.next()) {
            (Some(found), None) => Ok(found.clone()),
            (Some(_), Some(_)) => Err(ResolveError::Ambiguous(wanted.to_string())),
            (None, _) => Err(ResolveError::NotFound(wanted.to_string())),
        }
    }

    /// Number of module names that have at least one loaded version.
    pub fn len(&self) -> usize {
        self.modules.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no module is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest version of every name, sorted by name.
    pub fn latest(&self) -> Vec<Arc<LoadedModule>> {
        let modules = self.modules.read().unwrap_or_else(|p| p.into_inner());
        let mut latest: Vec<_> = modules.values().filter_map(|v| v.last().cloned()).collect();
        latest.sort_by(|a, b| a.name.cmp(&b.name));
        latest
    }

    /// Loads one `.wasm` file (any path) and makes it the newest version of its name.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedModule>, LoadError> {
        let (module, _) = self.compile_file(path)?;
        self.install(module.clone());
        Ok(module)
    }

    /// Loads one `.wasm` file (any path) without installing it: the caller keeps the module
    /// (the puller's modules stay out of the directory's names). The bool says whether the
    /// AOT cache was hit.
    pub fn load_detached(&self, path: &Path) -> Result<(Arc<LoadedModule>, bool), LoadError> {
        self.compile_file(path)
    }

    /// The AOT cache directory (symlinks resolved).
    pub fn cache_dir(&self) -> &Path {
        self.cache.dir()
    }

    /// Scans `dir` for `*.wasm` files: loads new and changed ones (compiling in parallel),
    /// removes names whose file is gone, and logs what it did.
    pub fn load_dir(&self, dir: &Path) -> std::io::Result<ScanReport> {
        let started = Instant::now();
        let current = scan_wasm_files(dir)?;
        let mut report = ScanReport::default();
        let changed: Vec<(PathBuf, FileStamp)> = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            current
                .iter()
                .filter(|(path, stamp)| seen.get(*path) != Some(*stamp))
                .map(|(path, stamp)| (path.clone(), *stamp))
                .collect()
        };
        let gone: Vec<PathBuf> = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let gone = seen
                .keys()
                .filter(|p| !current.contains_key(*p))
                .cloned()
                .collect::<Vec<_>>();
            for path in &gone {
                seen.remove(path);
            }
            gone
        };
        for path in gone {
            if let Some(name) = module_name(&path) {
                let mut modules = self.modules.write().unwrap_or_else(|p| p.into_inner());
                if modules.remove(&name).is_some() {
                    info!(module = %name, "module file removed; module unloaded");
                    report.removed.push(name);
                }
            }
        }

        let results =
            self.compile_parallel(changed.iter().map(|(path, _)| path.as_path()).collect());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for ((path, stamp), result) in changed.into_iter().zip(results) {
            // Remember failures too: a broken file is reported once, not on every rescan.
            seen.insert(path, stamp);
            match result {
                Ok((module, cached)) => {
                    report.loaded.push(module.short_ref());
                    report.from_cache += usize::from(cached);
                    self.install(module);
                }
                Err(error) => {
                    warn!(%error, "module skipped");
                    report.failed.push(error);
                }
            }
        }
        drop(seen);
        if !report.loaded.is_empty() || !report.removed.is_empty() || !report.failed.is_empty() {
            info!(
                loaded = report.loaded.len(),
                from_cache = report.from_cache,
                compiled = report.loaded.len() - report.from_cache,
                removed = report.removed.len(),
                failed = report.failed.len(),
                total = self.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "modules directory scanned"
            );
        }
        Ok(report)
    }

    fn compile_parallel(&self, paths: Vec<&Path>) -> Vec<Loaded> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Loaded>>> = paths.iter().map(|_| Mutex::new(None)).collect();
        let threads = num_cpus::get().min(paths.len());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let result = self.compile_file(path);
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                });
            }
        });
        slots
            .into_iter()
            .zip(paths)
            .map(|(slot, path)| {
                slot.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| {
                        Err(LoadError::Invalid {
                            path: path.to_owned(),
                            reason: "compilation thread panicked".into(),
                        })
                    })
            })
            .collect()
    }

    /// Reads, hashes, compiles (or loads from cache) and links one file. The bool says whether
    /// the AOT cache was hit.
    fn compile_file(&self, path: &Path) -> Loaded {
        let name = module_name(path).ok_or_else(|| LoadError::BadName {
            path: path.to_owned(),
            reason: "no UTF-8 file stem".into(),
        })?;
        name.parse::<ModuleRef>()
            .ok()
            .filter(|r| r.digest_prefix.is_none())
            .ok_or_else(|| LoadError::BadName {
                path: path.to_owned(),
                reason: "use letters, digits, '-', '_' or '.'".into(),
            })?;
        let bytes = fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let invalid = |reason: String| LoadError::Invalid {
            path: path.to_owned(),
            reason,
        };
        // The WebAssembly text format is accepted too (tests and hand-written guests); its
        // kind shows once it is encoded. The digest stays that of the file's bytes.
        let binary = wat::parse_bytes(&bytes).map_err(|e| invalid(format!("{e:#}")))?;
        let bytes = binary.as_ref();
        let kind = GuestKind::of(bytes);
        let prepared = match kind {
            GuestKind::Module => self
                .cached::<Module>(bytes, &digest)
                .and_then(|(modules, cached)| Ok((self.sandbox.prepare(&modules)?, cached))),
            GuestKind::Component => {
                self.cached::<Component>(bytes, &digest)
                    .and_then(|(components, cached)| {
                        Ok((self.sandbox.prepare_component(&components)?, cached))
                    })
            }
        };
        let (warm, cached) = prepared.map_err(|error| {
            let error = format!("{error:#}");
            match artifact::pool_limit_flag(&error) {
                Some(flag) => invalid(format!(
                    "{}: {error} (the worker's pool limit: raise {flag})",
                    kind.label()
                )),
                None => invalid(format!("{}: {error}", kind.label())),
            }
        })?;
        Ok((
            Arc::new(LoadedModule {
                name,
                digest,
                warm,
                path: path.to_owned(),
            }),
            cached,
        ))
    }

    /// The module or component for `bytes` compiled for every shard, from the AOT cache when
    /// it has a trusted entry for it.
    fn cached<T: Compiled>(&self, bytes: &[u8], digest: &str) -> anyhow::Result<(Vec<T>, bool)> {
        // SAFETY (every `load_file` below): the file is one `AotCache` opened and checked
        // (owned by this user, not writable by others, in a directory only this user or root
        // can change) and whose bytes match the record written when this worker stored
        // `precompile` output for these bytes and engine — or the file `AotCache::store` just
        // wrote. Nothing rewrites a cache file in place (stores rename), so the mapped bytes
        // stay as checked. All shards share one configuration, so shard 0's artifact fits each.
        let from_file =
            |file: &File| self.for_each_shard(|engine| unsafe { T::load_file(engine, file) });
        match self.cache.load(digest) {
            Ok(Some(file)) => match from_file(&file) {
                Ok(modules) => return Ok((modules, true)),
                Err(error) => warn!(
                    dir = %self.cache.dir().display(), module_digest = %digest, %error,
                    "unusable AOT cache entry; recompiling"
                ),
            },
            Ok(None) => {}
            Err(rejected) => warn!(%rejected, "AOT cache entry not loaded; recompiling"),
        }
        let compiled = T::precompile(self.sandbox.engine(), bytes)?;
        match self.cache.store(digest, &compiled) {
            Ok(file) => Ok((from_file(&file)?, false)),
            Err(error) => {
                warn!(dir = %self.cache.dir().display(), error = format!("{error:#}"), "AOT cache not writable; keeping the module in memory only");
                // SAFETY: `compiled` came from `precompile` on shard 0's engine just above, and
                // every shard has its configuration.
                let from_memory = |engine: &Engine| unsafe { T::load_bytes(engine, &compiled) };
                Ok((self.for_each_shard(from_memory)?, false))
            }
        }
    }

    fn for_each_shard<T>(
        &self,
        load: impl Fn(&Engine) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<Vec<T>> {
        self.sandbox.engines().map(load).collect()
    }

    fn install(&self, module: Arc<LoadedModule>) {
        let mut modules = self.modules.write().unwrap_or_else(|p| p.into_inner());
        let versions = modules.entry(module.name.clone()).or_default();
        versions.retain(|v| v.digest != module.digest);
        info!(module = %module.short_ref(), kind = module.kind().label(), path = %module.path.display(), "module ready");
        versions.push(module);
        if versions.len() > VERSIONS_KEPT {
            versions.remove(0);
        }
    }
}

/// The module names of `dir` (its `.wasm` files' stems), sorted, without loading any.
pub fn module_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = scan_wasm_files(dir)?
        .keys()
        .filter_map(|path| module_name(path))
        .collect();
    names.sort();
    Ok(names)
}

fn module_name(path: &Path) -> Option<String> {
    path.file_stem()?.to_str().map(str::to_owned)
}

fn scan_wasm_files(dir: &Path) -> std::io::Result<HashMap<PathBuf, FileStamp>> {
    let mut files = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            let stamp = FileStamp {
                len: meta.len(),
                modified: meta.modified().ok(),
            };
            files.insert(path, stamp);
        }
    }
    Ok(files)
}

//! Modules the modules directory lacks, pulled from an OCI registry (`--registry`).
//!
//! The task runner asks the [`ModuleRegistry`] first (the directory's modules: one read lock,
//! the hot path unchanged); only a miss comes here, on the lane thread that holds the task
//! (never a tokio worker thread: network waits go through the runtime's handle, compiling
//! runs on the lane):
//!
//! 1. **Which digest.** `name@<64 hex>` is that digest. `name@<prefix>` is the one pulled or
//!    stored version with that prefix, else the one the repository's tags point at. `name` is
//!    what the tag `latest` points at, asked again at most once per `--registry-tag-ttl`
//!    ([`tags`]); when the registry does not answer, the last known digest keeps serving, and
//!    a tag that never resolved fails its tasks with the same reason until the TTL has passed.
//! 2. **Have it?** Modules pulled before are kept, [`VERSIONS_KEPT`] per name, beside the
//!    registry's (never installed into it: the directory's `name` stays the directory's).
//! 3. **Else fetch it, once.** Concurrent tasks missing the same `name@digest` share one fetch
//!    ([`flights`]): from `<cache>/pulled` when a file is there (a restart), else from the
//!    registry, capped at `--registry-max-module-size` and checked against the digest
//!    ([`crate::oci::OciClient::pull_module`]), stored ([`store`]), then compiled through the
//!    registry's AOT cache and checked again (the loaded bytes' digest is the one asked for).
//!
//! Every failure is a [`PullError`]: the task ends as `module_not_found` with the reason in
//! its stderr, is acked like any result, and `warren_module_pulls_total{outcome}` counts it
//! (once per fetch or tag check, not per waiting task).

mod args;
mod flights;
mod store;
mod tags;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tracing::{info, warn};
use warren_schemas::ModuleRef;

pub use args::{RegistryArgs, DEFAULT_MAX_MODULE_SIZE, DEFAULT_TAG_TTL};
use flights::Flights;
use store::PulledStore;
use tags::{TagCache, TagLookup};

use crate::metrics;
use crate::oci::{Namespace, OciClient, OciError};
use crate::registry::{LoadedModule, ModuleRegistry, VERSIONS_KEPT};

/// The tag a task naming just `name` runs.
pub const MODULE_TAG: &str = "latest";

/// Why a module could not be pulled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    /// The registry said no, sent something else, or could not be reached.
    #[error(transparent)]
    Registry(#[from] OciError),
    /// No version of the module has a digest with that prefix.
    #[error("{module}: no tag of {repository} points at a module with that digest prefix")]
    NoSuchDigest {
        /// The task's module reference.
        module: String,
        /// The repository searched.
        repository: String,
    },
    /// Several versions have a digest with that prefix.
    #[error("{0}: the digest prefix matches several versions in the registry; give more digits")]
    Ambiguous(String),
    /// The pulled bytes are not a module the sandbox runs.
    #[error("pulled module {module} does not load: {reason}")]
    Load {
        /// `name@digest`.
        module: String,
        /// Why.
        reason: String,
    },
    /// The pulled module could not be stored.
    #[error("cannot store the pulled module {module}: {reason}")]
    Store {
        /// `name@digest`.
        module: String,
        /// The I/O error.
        reason: String,
    },
    /// Called where it cannot wait (inside the async runtime): a bug in the caller.
    #[error("module pulls must not run on an async runtime thread")]
    OnRuntime,
}

impl PullError {
    /// A short, bounded label for `warren_module_pulls_total{outcome}`.
    pub fn label(&self) -> &'static str {
        match self {
            PullError::Registry(error) => error.label(),
            PullError::NoSuchDigest { .. } => "not_found",
            PullError::Ambiguous(_) => "ambiguous",
            PullError::Load { .. } => "invalid",
            PullError::Store { .. } => "store_error",
            PullError::OnRuntime => "internal",
        }
    }

    /// Every label [`PullError::label`] can return, besides [`OciError::LABELS`].
    pub const LABELS: [&'static str; 4] = ["ambiguous", "invalid", "store_error", "internal"];
}

/// Pulls missing modules from one registry namespace and keeps what it pulled.
pub struct ModulePuller {
    registry: Arc<ModuleRegistry>,
    client: OciClient,
    namespace: Namespace,
    /// The runtime network requests run on; lanes wait on it with `block_on`.
    runtime: tokio::runtime::Handle,
    max_module_size: u64,
    store: PulledStore,
    tags: TagCache<PullError>,
    /// Name → pulled versions, newest last.
    pulled: RwLock<HashMap<String, Vec<Arc<LoadedModule>>>>,
    /// Fetches in flight, by `name@digest`.
    fetches: Flights<Result<Arc<LoadedModule>, PullError>>,
    /// Tag checks in flight, by name.
    tag_checks: Flights<Result<String, PullError>>,
}

impl ModulePuller {
    /// A puller for `args.registry` (`None` when it is unset) that installs through `registry`,
    /// stores under the registry's cache directory and waits on `runtime`.
    pub fn new(
        args: &RegistryArgs,
        registry: Arc<ModuleRegistry>,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Self>> {
        let Some(namespace) = args.registry.clone() else {
            return Ok(None);
        };
        let store = PulledStore::open(registry.cache_dir()).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the pulled-modules directory in {}: {e}",
                registry.cache_dir().display()
            )
        })?;
        info!(registry = %namespace, store = %store.dir().display(), "modules missing from the directory are pulled from the registry");
        Ok(Some(ModulePuller {
            client: OciClient::new(&args.oci)?,
            namespace,
            runtime,
            max_module_size: args.max_module_size,
            store,
            tags: TagCache::new(args.tag_ttl),
            pulled: RwLock::default(),
            fetches: Flights::default(),
            tag_checks: Flights::default(),
            registry,
        }))
    }

    /// The pulled-modules directory.
    pub fn store_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The module `wanted` names, pulled if need be (steps 1–3 of the module docs).
    pub fn resolve(&self, wanted: &ModuleRef) -> Result<Arc<LoadedModule>, PullError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(PullError::OnRuntime);
        }
        let name = wanted.name.as_str();
        let digest = match &wanted.digest_prefix {
            Some(prefix) => {
                if let Some(module) = self.pulled_with_prefix(name, prefix) {
                    return Ok(module);
                }
                if prefix.len() == 64 {
                    prefix.clone()
                } else {
                    self.digest_for_prefix(wanted, prefix)?
                }
            }
            None => self.tag_digest(name)?,
        };
        if let Some(module) = self.pulled_with_prefix(name, &digest) {
            return Ok(module);
        }
        self.fetches.run(&format!("{name}@{digest}"), || {
            let started = Instant::now();
            let fetched = self.fetch(name, &digest);
            let outcome = match &fetched {
                Ok((_, from_disk)) if *from_disk => "from_disk",
                Ok(_) => "pulled",
                Err(error) => error.label(),
            };
            metrics::record_module_pull(outcome, started.elapsed());
            match &fetched {
                Ok((module, _)) => {
                    info!(module = %module.short_ref(), outcome, elapsed_ms = started.elapsed().as_millis() as u64, "module pulled");
                }
                Err(error) => warn!(module = %format!("{name}@{digest}"), %error, "module pull failed"),
            }
            fetched.map(|(module, _)| module)
        })
    }

    /// The digest `name`'s tag points at (step 1), from the cache while it is fresh.
    fn tag_digest(&self, name: &str) -> Result<String, PullError> {
        let known = match self.tags.lookup(name, Instant::now()) {
            TagLookup::Fresh(digest) => return Ok(digest),
            TagLookup::Stale(digest) => Some(digest),
            TagLookup::Missing => None,
            TagLookup::Failed(error) => return Err(error),
        };
        self.tag_checks.run(name, || {
            let checked = self.check_tag(name);
            match (&checked, &known) {
                (Ok(digest), _) => self.tags.record(name, digest, Instant::now()),
                (Err(error), Some(old)) => {
                    // Asked again in a TTL; meanwhile the version the tag had keeps serving.
                    warn!(module = %name, %error, serving = %old, "tag check failed; serving the last known version");
                    self.tags.record(name, old, Instant::now());
                    metrics::record_module_pull(error.label(), std::time::Duration::ZERO);
                    return Ok(old.clone());
                }
                (Err(error), None) => {
                    warn!(module = %name, %error, "module not in the directory and its tag cannot be resolved");
                    self.tags.record_failure(name, error.clone(), Instant::now());
                    metrics::record_module_pull(error.label(), std::time::Duration::ZERO);
                }
            }
            checked
        })
    }

    fn check_tag(&self, name: &str) -> Result<String, PullError> {
        let reference = self.namespace.tagged(name, MODULE_TAG)?;
        let (layer, _) = self.runtime.block_on(self.client.manifest(&reference))?;
        if layer.size > self.max_module_size {
            return Err(OciError::TooLarge {
                reference: reference.to_string(),
                limit: self.max_module_size,
            }
            .into());
        }
        Ok(layer.digest)
    }

    /// The one full digest `prefix` names: among the stored versions, else the tags'.
    fn digest_for_prefix(&self, wanted: &ModuleRef, prefix: &str) -> Result<String, PullError> {
        let name = wanted.name.as_str();
        let mut stored = self.store.digests_with_prefix(name, prefix);
        if stored.len() == 1 {
            return Ok(stored.remove(0));
        }
        let repository = self.namespace.tagged(name, MODULE_TAG)?;
        let listed = self.runtime.block_on(self.client.list(&repository))?;
        let mut digests: Vec<String> = listed
            .into_iter()
            .filter_map(|tag| tag.module.ok())
            .map(|layer| layer.digest)
            .filter(|digest| digest.starts_with(prefix))
            .collect();
        digests.sort();
        digests.dedup();
        match digests.len() {
            1 => Ok(digests.remove(0)),
            0 => Err(PullError::NoSuchDigest {
                module: wanted.to_string(),
                repository: format!("{}/{}", self.namespace.registry(), repository.repository()),
            }),
            _ => Err(PullError::Ambiguous(wanted.to_string())),
        }
    }

    /// Step 3: from the store, else the registry; the bool says it came from the store.
    fn fetch(&self, name: &str, digest: &str) -> Result<(Arc<LoadedModule>, bool), PullError> {
        let module_ref = format!("{name}@{digest}");
        if self.store.existing(name, digest).is_some() {
            match self.load(name, digest) {
                Ok(module) => return Ok((module, true)),
                Err(error) => {
                    warn!(module = %module_ref, %error, "stored pulled module unusable; pulling it again");
                    self.store.discard(name, digest);
                }
            }
        }
        let blob = self.namespace.blob(name, digest)?;
        let bytes = self
            .runtime
            .block_on(self.client.pull_module(&blob, self.max_module_size))?;
        self.store
            .save(name, digest, &bytes)
            .map_err(|e| PullError::Store {
                module: module_ref.clone(),
                reason: e.to_string(),
            })?;
        drop(bytes);
        Ok((self.load(name, digest)?, false))
    }

    /// Compiles (or loads from the AOT cache) the stored `name`@`digest` and keeps it.
    fn load(&self, name: &str, digest: &str) -> Result<Arc<LoadedModule>, PullError> {
        let module_ref = format!("{name}@{digest}");
        let path = self.store.path(name, digest);
        let (module, _) = self
            .registry
            .load_detached(&path)
            .map_err(|e| PullError::Load {
                module: module_ref.clone(),
                reason: e.to_string(),
            })?;
        if module.digest != digest {
            return Err(PullError::Load {
                module: module_ref,
                reason: format!("the stored file's digest is {}", module.digest),
            });
        }
        let mut pulled = self.pulled.write().unwrap_or_else(|p| p.into_inner());
        let versions = pulled.entry(name.to_owned()).or_default();
        versions.retain(|v| v.digest != module.digest);
        versions.push(module.clone());
        if versions.len() > VERSIONS_KEPT {
            versions.remove(0);
        }
        Ok(module)
    }

    /// The one kept version of `name` whose digest starts with `prefix`.
    fn pulled_with_prefix(&self, name: &str, prefix: &str) -> Option<Arc<LoadedModule>> {
        let pulled = self.pulled.read().unwrap_or_else(|p| p.into_inner());
        let mut matching = pulled
            .get(name)?
            .iter()
            .filter(|m| m.digest.starts_with(prefix));
        match (matching.next(), matching.next()) {
            (Some(found), None) => Some(found.clone()),
            _ => None,
        }
    }
}

//! The worker's registry flags (`warren-worker run`).

use std::time::Duration;

use warren_schemas::args::{parse_bytes, parse_duration};

use crate::oci::{Namespace, OciArgs};

/// Default largest module pulled: 128 MiB (the Python runner is about 21 MiB).
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 128 << 20;
/// Default time a tag's digest is used before the registry is asked again: 30 s.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(30);

/// Where modules missing from the modules directory are pulled from.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// OCI registry and namespace modules are pulled from, `REGISTRY/NAMESPACE`
    /// (`ghcr.io/acme/warren`, `127.0.0.1:5000/warren`). A task naming a module the modules
    /// directory lacks pulls `NAMESPACE/<name>` (`name`: by the tag `latest`; `name@<digest>`:
    /// the layer with that digest), checks its sha256, compiles it into the AOT cache and
    /// keeps the `.wasm` under `<cache>/pulled`. Off when unset: only the directory serves.
    #[arg(long = "registry", env = "WARREN_REGISTRY")]
    pub registry: Option<Namespace>,

    /// Largest module pulled; a larger one ends its tasks as module not found (with the
    /// reason). Checked against the manifest and the blob's size before the download, and
    /// while downloading. The whole module is held in memory once while it is checked.
    #[arg(long = "registry-max-module-size", env = "WARREN_REGISTRY_MAX_MODULE_SIZE", default_value = "128MiB", value_parser = parse_bytes)]
    pub max_module_size: u64,

    /// How long a tag's digest is used before the registry is asked again: a tag moved to a
    /// new version is picked up within this time. Shorter: faster roll-outs, one manifest
    /// request per module per TTL; 0 asks for every task. If the registry does not answer,
    /// the last known digest keeps serving.
    #[arg(long = "registry-tag-ttl", env = "WARREN_REGISTRY_TAG_TTL", default_value = "30s", value_parser = parse_duration)]
    pub tag_ttl: Duration,

    /// How registries are reached.
    #[command(flatten)]
    pub oci: OciArgs,
}

impl Default for RegistryArgs {
    fn default() -> Self {
        RegistryArgs {
            registry: None,
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            tag_ttl: DEFAULT_TAG_TTL,
            oci: OciArgs::default(),
        }
    }
}

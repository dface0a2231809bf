//! Modules in an OCI registry, from the producer's side: push a `.wasm` as a Wasm OCI artifact
//! (the layout `wkg` and other Wasm tools pull), list a repository's tags with the module
//! digest each points at. Workers started with `--registry` pull what is pushed here when a
//! task names it; the registry code itself is the worker's [`warren_worker::oci`], shared.
//!
//! ```no_run
//! # async fn demo() -> warren::Result<()> {
//! use warren_worker::oci::OciArgs;
//!
//! let oci = OciArgs { insecure_registries: vec!["127.0.0.1:5000".into()] };
//! let pushed = warren::module::push("modules/dist/upper.wasm".as_ref(), "127.0.0.1:5000/warren/upper:v1", &oci).await?;
//! println!("tasks pin it as upper@{}", &pushed.module_digest[..12]);
//! # Ok(()) }
//! ```

use std::path::Path;

use warren_worker::oci::parse_repository;
pub use warren_worker::oci::{ListedTag, ModuleLayer, OciArgs, OciClient, Pushed};

use crate::{ProducerError, Result};

/// Pushes the module `file` to `reference` (`REGISTRY/REPO[:TAG]`, tag `latest` by default).
pub async fn push(file: &Path, reference: &str, oci: &OciArgs) -> Result<Pushed> {
    let reference = parse_repository(reference)?;
    let path = file.to_owned();
    let wasm = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| ProducerError::Internal(e.to_string()))?
        .map_err(|e| ProducerError::io(file, e))?;
    let file_name = file
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("module.wasm");
    Ok(OciClient::new(oci)?
        .push(&reference, wasm, file_name)
        .await?)
}

/// The tags of `repository` (`REGISTRY/REPO`; a tag given is ignored), sorted, each with the
/// module it points at.
pub async fn list(repository: &str, oci: &OciArgs) -> Result<Vec<ListedTag>> {
    let reference = parse_repository(repository)?;
    Ok(OciClient::new(oci)?.list(&reference).await?)
}

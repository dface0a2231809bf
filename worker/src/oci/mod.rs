//! Modules in an OCI registry: the one place that speaks to registries, shared by the worker's
//! `--registry` (pull on a miss) and the producer's `warren module push` / `warren module ls`.
//!
//! Any registry that implements the OCI Distribution spec serves warren (Harbor, GHCR, ECR,
//! `registry:2`). A module is stored as the CNCF TAG Runtime's *Wasm OCI artifact*, the layout
//! `wkg`, wasmCloud and Spin use, so other tools can pull what warren pushes and the other way
//! round: an OCI image manifest whose config is `application/vnd.wasm.config.v0+json` and whose
//! one layer is the `.wasm` itself (`application/wasm`). A module's warren digest (sha256 of its
//! bytes, what `name@<digest>` pins) is therefore its layer's digest: a pinned task is pulled as
//! that blob, and the bytes are checked against it.
//!
//! The HTTP side is the ORAS project's `oci-client` (the maintained successor of
//! `oci-distribution`, used across the Wasm ecosystem): token and basic auth, chunked uploads,
//! digest-verified blob streams. It runs on rustls with the ring provider lapin already brings.
//!
//! # Layout
//! - `args`: the flags shared by every command that talks to a registry (`--insecure-registry`).
//! - `reference`: `REGISTRY/REPO[:TAG]` and `REGISTRY/NAMESPACE` + module name → OCI reference.
//! - `credentials`: who the client is to a registry (environment, Docker config, anonymous).
//! - `artifact`: the Wasm artifact layout: config, layer, and the checks on a pulled manifest.
//! - `client`: [`OciClient`]: push, list, resolve a tag, pull a module's bytes (size-capped,
//!   digest-checked).
//! - `errors`: [`OciError`], each with a bounded label for metrics.

mod args;
mod artifact;
mod client;
mod credentials;
mod errors;
mod reference;

pub use args::OciArgs;
pub use artifact::{
    ModuleLayer, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_MEDIA_TYPE,
};
pub use client::{ListedTag, OciClient, Pushed};
pub use credentials::Credentials;
pub use errors::OciError;
pub use reference::{parse_repository, Namespace};

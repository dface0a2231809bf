//! The Wasm OCI artifact layout (CNCF TAG Runtime, "Wasm OCI Artifact"): what a pushed module
//! looks like, and what a pulled manifest must look like.
//!
//! - manifest: `application/vnd.oci.image.manifest.v1+json`;
//! - config: `application/vnd.wasm.config.v0+json`, a JSON object with `created`,
//!   `architecture: "wasm"`, `os` (`wasip1` for a core module, `wasip2` for a component),
//!   `layerDigests` and, for a component, its top-level `imports` and `exports`;
//! - one layer, `application/wasm`: the module's bytes as they are.
//!
//! Pulling also accepts the older `wasm-to-oci` media types (`application/vnd.wasm.config.v1+json`,
//! `application/vnd.wasm.content.layer.v1+wasm`) that some registries still hold.

use std::collections::BTreeMap;
use std::time::SystemTime;

use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use serde::Serialize;

use super::OciError;

/// Media type of the manifest.
pub const WASM_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the config blob.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the one layer: the `.wasm` itself.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Layer media types accepted when pulling: the standard one and `wasm-to-oci`'s.
const PULLABLE_LAYER_TYPES: [&str; 2] = [
    WASM_LAYER_MEDIA_TYPE,
    oci_client::manifest::WASM_LAYER_MEDIA_TYPE,
];
/// The layer's title annotation (the file name a puller may save it as).
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// The config blob's content.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig {
    created: String,
    architecture: &'static str,
    os: &'static str,
    layer_digests: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<ComponentWorld>,
}

/// What a component imports and exports, by name (`wasi:cli/run@0.2.0`).
#[derive(Serialize, Default)]
struct ComponentWorld {
    imports: Vec<String>,
    exports: Vec<String>,
}

/// A module's one layer, as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLayer {
    /// Lowercase hex sha256 of the module's bytes: its warren digest.
    pub digest: String,
    /// Size in bytes, as the manifest declares it.
    pub size: u64,
}

/// The config, layer and manifest that push `wasm` (saved as `file_name`).
pub(crate) fn build(wasm: Vec<u8>, file_name: &str) -> (Config, ImageLayer, OciImageManifest) {
    let layer = ImageLayer::new(
        wasm,
        WASM_LAYER_MEDIA_TYPE.to_owned(),
        Some(BTreeMap::from([(
            TITLE_ANNOTATION.to_owned(),
            file_name.to_owned(),
        )])),
    );
    let component = component_world(&layer.data);
    let config = WasmConfig {
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        architecture: "wasm",
        os: if component.is_some() {
            "wasip2"
        } else {
            "wasip1"
        },
        layer_digests: vec![layer.sha256_digest()],
        component,
    };
    let config = Config::new(
        serde_json::to_vec(&config).unwrap_or_else(|_| b"{}".to_vec()),
        WASM_CONFIG_MEDIA_TYPE.to_owned(),
        None,
    );
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    manifest.media_type = Some(WASM_MANIFEST_MEDIA_TYPE.to_owned());
    (config, layer, manifest)
}

/// The module layer of a pulled manifest: exactly one Wasm layer with a sha256 digest.
pub(crate) fn module_layer(
    reference: &str,
    manifest: &OciImageManifest,
) -> Result<ModuleLayer, OciError> {
    let not_wasm = |reason: String| OciError::NotWasm {
        reference: reference.to_owned(),
        reason,
    };
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_wasm(format!(
            "{} layers, a module artifact has exactly one",
            manifest.layers.len()
        )));
    };
    if !PULLABLE_LAYER_TYPES.contains(&layer.media_type.as_str()) {
        return Err(not_wasm(format!(
            "layer media type {}, expected {WASM_LAYER_MEDIA_TYPE}",
            layer.media_type
        )));
    }
    let digest = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| not_wasm(format!("layer digest {} is not sha256", layer.digest)))?;
    Ok(ModuleLayer {
        digest: digest.to_ascii_lowercase(),
        size: u64::try_from(layer.size).unwrap_or(0),
    })
}

/// A component's top-level import and export names; `None` for a core module (or bytes
/// wasmparser cannot read, which the worker will refuse anyway).
fn component_world(bytes: &[u8]) -> Option<ComponentWorld> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut world = ComponentWorld::default();
    // Nested modules and components have their own headers and ends; only depth 1 counts.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return None;
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    world.imports.push(import.ok()?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    world.exports.push(export.ok()?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Some(world)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn a_core_module_is_pushed_as_a_wasip1_artifact_with_one_wasm_layer() {
        let bytes = wasm("(module)");
        let (config, layer, manifest) = build(bytes.clone(), "m.wasm");
        assert_eq!(config.media_type, WASM_CONFIG_MEDIA_TYPE);
        let json: serde_json::Value = serde_json::from_slice(&config.data).unwrap();
        assert_eq!(json["architecture"], "wasm");
        assert_eq!(json["os"], "wasip1");
        assert!(json.get("component").is_none());
        assert_eq!(json["layerDigests"][0], layer.sha256_digest());
        assert_eq!(
            manifest.media_type.as_deref(),
            Some(WASM_MANIFEST_MEDIA_TYPE)
        );
        let found = module_layer("r", &manifest).unwrap();
        assert_eq!(found.size, bytes.len() as u64);
        assert_eq!(
            format!("sha256:{}", found.digest),
            manifest.layers[0].digest
        );
    }

    #[test]
    fn a_component_is_pushed_as_wasip2_with_its_imports_and_exports() {
        let bytes = wasm(
            r#"(component
                 (import "wasi:cli/stdout@0.2.0" (instance))
                 (core module $m)
                 (component $inner (import "nested" (instance)))
                 (export "probe" (core module $m)))"#,
        );
        let (config, _, _) = build(bytes, "c.wasm");
        let json: serde_json::Value = serde_json::from_slice(&config.data).unwrap();
        assert_eq!(json["os"], "wasip2");
        assert_eq!(
            json["component"]["imports"],
            serde_json::json!(["wasi:cli/stdout@0.2.0"])
        );
        assert_eq!(json["component"]["exports"], serde_json::json!(["probe"]));
    }

    #[test]
    fn a_manifest_that_is_not_one_wasm_layer_is_refused() {
        let (_, _, mut manifest) = build(wasm("(module)"), "m.wasm");
        manifest.layers[0].media_type = "application/vnd.oci.image.layer.v1.tar".into();
        assert!(matches!(
            module_layer("r", &manifest),
            Err(OciError::NotWasm { .. })
        ));
        manifest.layers.clear();
        assert!(matches!(
            module_layer("r", &manifest),
            Err(OciError::NotWasm { .. })
        ));
    }
}

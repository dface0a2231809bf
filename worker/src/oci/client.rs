//! [`OciClient`]: the registry operations warren needs, on `oci-client`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::DigestError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::artifact::{self, ModuleLayer, WASM_LAYER_MEDIA_TYPE};
use super::errors::chain;
use super::{Credentials, OciArgs, OciError};

/// Time to open a connection to a registry: a registry that is down fails a pull this fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the next bytes of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A module pushed: where, and its digests.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The reference pushed to (`REGISTRY/REPO:TAG`).
    pub reference: String,
    /// The module's digest: lowercase hex sha256 of its bytes (`name@<digest>` in tasks).
    pub module_digest: String,
    /// The manifest's digest (`sha256:…`), what container tooling pins.
    pub manifest_digest: String,
    /// The module's size in bytes.
    pub size: u64,
}

/// One tag of a repository, resolved.
#[derive(Debug, Clone)]
pub struct ListedTag {
    /// The tag.
    pub tag: String,
    /// Its module layer, or why the tag is not a module.
    pub module: Result<ModuleLayer, String>,
    /// The manifest's digest (`sha256:…`), when it could be read.
    pub manifest_digest: Option<String>,
}

/// A client for OCI registries: HTTPS except for the registries named insecure, credentials
/// looked up once per registry.
#[derive(Clone)]
pub struct OciClient {
    client: Client,
    /// Registry → its auth, from [`Credentials::for_registry`] on first use.
    auth: Arc<Mutex<HashMap<String, RegistryAuth>>>,
}

impl OciClient {
    /// A client for `args` (which registries are plain HTTP).
    pub fn new(args: &OciArgs) -> Result<Self, OciError> {
        install_crypto_provider();
        let protocol = if args.insecure_registries.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(args.insecure_registries.clone())
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|error| OciError::Registry {
            reference: "(client)".into(),
            detail: chain(&error),
        })?;
        Ok(OciClient {
            client,
            auth: Arc::default(),
        })
    }

    /// Pushes `wasm` to `reference` (`REGISTRY/REPO:TAG`) as a Wasm OCI artifact whose layer
    /// is titled `file_name`.
    pub async fn push(
        &self,
        reference: &Reference,
        wasm: Vec<u8>,
        file_name: &str,
    ) -> Result<Pushed, OciError> {
        let size = wasm.len() as u64;
        let (config, layer, manifest) = artifact::build(wasm, file_name);
        let module_digest = artifact::module_layer(&reference.to_string(), &manifest)?.digest;
        let auth = self.auth(reference);
        self.client
            .push(reference, &[layer], config, &auth, Some(manifest))
            .await
            .map_err(|e| OciError::from_client(reference, e))?;
        let manifest_digest = self
            .client
            .fetch_manifest_digest(reference, &auth)
            .await
            .map_err(|e| OciError::from_client(reference, e))?;
        Ok(Pushed {
            reference: reference.to_string(),
            module_digest,
            manifest_digest,
            size,
        })
    }

    /// The tags of `repository`'s repository, each resolved to its module layer.
    pub async fn list(&self, repository: &Reference) -> Result<Vec<ListedTag>, OciError> {
        let auth = self.auth(repository);
        let mut tags = self
            .client
            .list_tags(repository, &auth, None, None)
            .await
            .map_err(|e| OciError::from_client(repository.repository(), e))?
            .tags;
        tags.sort();
        let mut listed = Vec::with_capacity(tags.len());
        for tag in tags {
            let tagged = Reference::with_tag(
                repository.registry().to_owned(),
                repository.repository().to_owned(),
                tag.clone(),
            );
            let (module, manifest_digest) = match self.manifest(&tagged).await {
                Ok((layer, digest)) => (Ok(layer), Some(digest)),
                Err(error) => (Err(error.to_string()), None),
            };
            listed.push(ListedTag {
                tag,
                module,
                manifest_digest,
            });
        }
        Ok(listed)
    }

    /// The module layer `reference` (a tag or a manifest digest) points at, and the manifest's
    /// digest.
    pub async fn manifest(&self, reference: &Reference) -> Result<(ModuleLayer, String), OciError> {
        let auth = self.auth(reference);
        let (manifest, digest) = self
            .client
            .pull_image_manifest(reference, &auth)
            .await
            .map_err(|e| OciError::from_client(reference, e))?;
        Ok((
            artifact::module_layer(&reference.to_string(), &manifest)?,
            digest,
        ))
    }

    /// The bytes of the module blob `blob` (a reference with a sha256 digest), refused past
    /// `limit` bytes (before the download when the registry says the size) and checked against
    /// the digest.
    pub async fn pull_module(&self, blob: &Reference, limit: u64) -> Result<Vec<u8>, OciError> {
        let reference = blob.to_string();
        let expected = blob
            .digest()
            .and_then(|d| d.strip_prefix("sha256:"))
            .ok_or_else(|| OciError::BadReference {
                reference: reference.clone(),
                reason: "a module blob is named by its sha256 digest".into(),
            })?
            .to_owned();
        let too_large = || OciError::TooLarge {
            reference: reference.clone(),
            limit,
        };
        let descriptor = OciDescriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.to_owned(),
            digest: format!("sha256:{expected}"),
            ..OciDescriptor::default()
        };
        // `pull_blob_stream` takes the registry's auth from the client's store.
        self.client
            .store_auth_if_needed(blob.resolve_registry(), &self.auth(blob))
            .await;
        let sized = self
            .client
            .pull_blob_stream(blob, &descriptor)
            .await
            .map_err(|e| OciError::from_client(blob, e))?;
        if sized.content_length.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(
            usize::try_from(sized.content_length.unwrap_or(0).min(limit)).unwrap_or(0),
        );
        let mut hasher = Sha256::new();
        let mut stream = sized.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| stream_error(blob, &expected, error))?;
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        // oci-client verifies the digest as the stream ends; checked here too, so the bytes
        // installed are the ones the task named whatever the client does.
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(OciError::DigestMismatch {
                reference,
                expected,
                actual,
            });
        }
        Ok(bytes)
    }

    fn auth(&self, reference: &Reference) -> RegistryAuth {
        let registry = reference.resolve_registry();
        let mut known = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        known
            .entry(registry.to_owned())
            .or_insert_with(|| Credentials::for_registry(registry).to_auth())
            .clone()
    }
}

/// A failed read of a blob: a digest mismatch when the client's verification says so.
fn stream_error(blob: &Reference, expected: &str, error: std::io::Error) -> OciError {
    if let Some(DigestError::VerificationError { actual, .. }) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestError>())
    {
        return OciError::DigestMismatch {
            reference: blob.to_string(),
            expected: expected.to_owned(),
            actual: actual.trim_start_matches("sha256:").to_owned(),
        };
    }
    OciError::Registry {
        reference: blob.to_string(),
        detail: chain(&error),
    }
}

/// rustls' process-wide crypto provider: ring, as lapin's TLS uses. Installed once; if
/// something else installed one first, that one stays.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

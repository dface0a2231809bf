//! Why a registry operation failed, in words a task's result can carry.

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// A registry operation that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OciError {
    /// What was typed (or derived from a module name) is not an OCI reference.
    #[error("invalid registry reference {reference}: {reason}")]
    BadReference {
        /// The reference as text.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The repository, tag or blob does not exist (or the credentials may not see it).
    #[error("{reference}: not found in the registry ({detail})")]
    NotFound {
        /// What was asked for.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// The manifest is not a Wasm module artifact.
    #[error("{reference}: not a Wasm module artifact: {reason}")]
    NotWasm {
        /// The manifest's reference.
        reference: String,
        /// What did not fit the layout.
        reason: String,
    },
    /// The module is larger than the worker pulls.
    #[error("{reference}: the module is larger than the limit of {limit} bytes (--registry-max-module-size)")]
    TooLarge {
        /// The module's reference.
        reference: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The bytes served are not the ones the digest names (a tampered or corrupt blob).
    #[error("{reference}: digest mismatch: expected sha256:{expected}, the registry sent bytes with sha256:{actual}")]
    DigestMismatch {
        /// The blob's reference.
        reference: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The registry could not be reached, refused the credentials, or failed.
    #[error("{reference}: registry request failed: {detail}")]
    Registry {
        /// What was asked for.
        reference: String,
        /// The client's error, with its causes.
        detail: String,
    },
}

impl OciError {
    /// A short, bounded label for metrics (`warren_module_pulls_total{outcome}`).
    pub fn label(&self) -> &'static str {
        match self {
            OciError::BadReference { .. } => "bad_reference",
            OciError::NotFound { .. } => "not_found",
            OciError::NotWasm { .. } => "not_wasm",
            OciError::TooLarge { .. } => "too_large",
            OciError::DigestMismatch { .. } => "digest_mismatch",
            OciError::Registry { .. } => "registry_error",
        }
    }

    /// Every label [`OciError::label`] can return.
    pub const LABELS: [&'static str; 6] = [
        "bad_reference",
        "not_found",
        "not_wasm",
        "too_large",
        "digest_mismatch",
        "registry_error",
    ];

    /// The client's error for `reference`: "not found" when the registry said so, else a
    /// registry failure with the whole cause chain.
    pub(crate) fn from_client(reference: impl ToString, error: OciDistributionError) -> Self {
        let reference = reference.to_string();
        let not_found = match &error {
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::ServerError { code, .. } => *code == 404,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                })
            }
            _ => false,
        };
        let detail = chain(&error);
        if not_found {
            OciError::NotFound { reference, detail }
        } else {
            OciError::Registry { reference, detail }
        }
    }
}

/// An error and its sources, joined by ": ".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

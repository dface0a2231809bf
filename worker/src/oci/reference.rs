//! From what users type to OCI references: `REGISTRY/REPO[:TAG]` for the producer's commands,
//! `REGISTRY/NAMESPACE` plus a module name for the worker.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;

use super::OciError;

/// The tag a task naming just `name` is resolved by.
pub const DEFAULT_TAG: &str = "latest";

/// `REGISTRY/REPO[:TAG]` (`127.0.0.1:5000/warren/upper:v2`, `ghcr.io/acme/wc`) as an OCI
/// reference; the tag defaults to `latest`. A digest (`@sha256:…`) is accepted too.
pub fn parse_repository(text: &str) -> Result<Reference, OciError> {
    let bad = |reason: &str| OciError::BadReference {
        reference: text.to_owned(),
        reason: reason.to_owned(),
    };
    if !text.contains('/') {
        return Err(bad("expected REGISTRY/REPOSITORY[:TAG]"));
    }
    text.parse::<Reference>().map_err(|e| bad(&e.to_string()))
}

/// Where a worker's modules live: `REGISTRY/NAMESPACE` (`--registry`). Module `name` is the
/// repository `NAMESPACE/name`; `name` resolves by the tag `latest`, `name@<digest>` by the
/// layer digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Host (and port) of the registry, as references name it.
    registry: String,
    /// Repository path prefix, without slashes at either end; may be empty.
    path: String,
}

impl Namespace {
    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository of module `name`.
    pub fn repository(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.path)
        }
    }

    /// Module `name` at `tag`; an error when `name` is not a valid repository name (OCI
    /// repositories are lowercase).
    pub fn tagged(&self, name: &str, tag: &str) -> Result<Reference, OciError> {
        self.checked(name, format!(":{tag}"))
    }

    /// Module `name`'s blob with sha256 `digest` (64 hex digits).
    pub fn blob(&self, name: &str, digest: &str) -> Result<Reference, OciError> {
        self.checked(name, format!("@sha256:{digest}"))
    }

    fn checked(&self, name: &str, suffix: String) -> Result<Reference, OciError> {
        let text = format!("{}/{}{suffix}", self.registry, self.repository(name));
        match text.parse::<Reference>() {
            Ok(reference)
                if reference.registry() == self.registry
                    && reference.repository() == self.repository(name) =>
            {
                Ok(reference)
            }
            Ok(_) => Err(OciError::BadReference {
                reference: text,
                reason: "the module name is not a repository name".into(),
            }),
            Err(error) => Err(OciError::BadReference {
                reference: text,
                reason: format!("{error} (repository names are lowercase)"),
            }),
        }
    }
}

impl FromStr for Namespace {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim_end_matches('/');
        let (registry, path) = text.split_once('/').unwrap_or((text, ""));
        let looks_like_host =
            registry.contains('.') || registry.contains(':') || registry == "localhost";
        if registry.is_empty() || !looks_like_host {
            return Err(format!(
                "{text:?}: expected REGISTRY/NAMESPACE with a registry host first (e.g. ghcr.io/acme, 127.0.0.1:5000/warren)"
            ));
        }
        let namespace = Namespace {
            registry: registry.to_owned(),
            path: path.to_owned(),
        };
        // A probe name shows whether the namespace part is a valid repository path.
        namespace
            .tagged("probe", DEFAULT_TAG)
            .map_err(|e| format!("{text:?}: {e}"))?;
        Ok(namespace)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.registry)
        } else {
            write!(f, "{}/{}", self.registry, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_names_one_repository_per_module() {
        let ns: Namespace = "127.0.0.1:5000/warren/".parse().unwrap();
        assert_eq!(ns.to_string(), "127.0.0.1:5000/warren");
        let tagged = ns.tagged("upper", DEFAULT_TAG).unwrap();
        assert_eq!(tagged.registry(), "127.0.0.1:5000");
        assert_eq!(tagged.repository(), "warren/upper");
        assert_eq!(tagged.tag(), Some("latest"));
        let digest = "ab".repeat(32);
        let blob = ns.blob("upper", &digest).unwrap();
        assert_eq!(blob.digest(), Some(format!("sha256:{digest}").as_str()));
        let bare: Namespace = "registry.example:443".parse().unwrap();
        assert_eq!(bare.repository("wc"), "wc");
    }

    #[test]
    fn a_namespace_without_a_registry_host_or_a_module_name_with_capitals_is_refused() {
        assert!("warren/modules".parse::<Namespace>().is_err());
        assert!("".parse::<Namespace>().is_err());
        assert!("localhost:5000/Bad Name".parse::<Namespace>().is_err());
        let ns: Namespace = "localhost:5000/warren".parse().unwrap();
        assert!(ns.tagged("Upper", DEFAULT_TAG).is_err());
    }

    #[test]
    fn a_repository_reference_needs_a_registry_and_defaults_to_latest() {
        let reference = parse_repository("127.0.0.1:5000/warren/upper").unwrap();
        assert_eq!(reference.tag(), Some("latest"));
        assert_eq!(
            parse_repository("ghcr.io/acme/wc:v2").unwrap().tag(),
            Some("v2")
        );
        assert!(parse_repository("upper").is_err());
    }
}

//! Who the client is to a registry, first match wins:
//! 1. `WARREN_REGISTRY_USERNAME` and `WARREN_REGISTRY_PASSWORD` (a token for GHCR, ECR's
//!    `aws ecr get-login-password`, a robot account for Harbor), for every registry;
//! 2. the Docker config file, `$DOCKER_CONFIG/config.json` else `~/.docker/config.json`, as
//!    `docker login` writes it, its credential helpers included;
//! 3. anonymous.

use std::fmt;
use std::io::Read;

use oci_client::secrets::RegistryAuth;
use tracing::warn;

/// Environment variable with the registry user name.
pub const USERNAME_ENV: &str = "WARREN_REGISTRY_USERNAME";
/// Environment variable with the registry password or token.
pub const PASSWORD_ENV: &str = "WARREN_REGISTRY_PASSWORD";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: public repositories, or a registry without auth.
    Anonymous,
    /// User name and password (or token), sent as HTTP basic auth or exchanged for a bearer
    /// token, whichever the registry asks for.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

impl Credentials {
    /// The credentials for `registry` (host and port as references name it), from the
    /// environment, else the Docker config file, else none.
    pub fn for_registry(registry: &str) -> Credentials {
        if let Some(credentials) = from_env(
            std::env::var(USERNAME_ENV).ok(),
            std::env::var(PASSWORD_ENV).ok(),
        ) {
            return credentials;
        }
        match docker_credential::get_credential(&docker_key(registry)) {
            Ok(credential) => from_docker(registry, credential),
            Err(
                docker_credential::CredentialRetrievalError::ConfigNotFound
                | docker_credential::CredentialRetrievalError::ConfigReadError
                | docker_credential::CredentialRetrievalError::NoCredentialConfigured,
            ) => Credentials::Anonymous,
            Err(error) => {
                warn!(%registry, ?error, "cannot use the Docker config's credentials; going anonymous");
                Credentials::Anonymous
            }
        }
    }

    /// [`Credentials::for_registry`]'s Docker config step, from a config file's contents.
    pub fn from_docker_config(config: impl Read, registry: &str) -> Credentials {
        docker_credential::get_credential_from_reader(config, &docker_key(registry))
            .map(|credential| from_docker(registry, credential))
            .unwrap_or(Credentials::Anonymous)
    }

    pub(crate) fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

fn from_env(username: Option<String>, password: Option<String>) -> Option<Credentials> {
    match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Some(Credentials::Basic { username, password })
        }
        _ => None,
    }
}

fn from_docker(registry: &str, credential: docker_credential::DockerCredential) -> Credentials {
    match credential {
        docker_credential::DockerCredential::UsernamePassword(username, password) => {
            Credentials::Basic { username, password }
        }
        docker_credential::DockerCredential::IdentityToken(_) => {
            warn!(%registry, "the Docker config holds an identity token, which warren cannot use; set {USERNAME_ENV} and {PASSWORD_ENV}");
            Credentials::Anonymous
        }
    }
}

/// The key `docker login` files a registry's credentials under.
fn docker_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" => "https://index.docker.io/v1/".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_needs_both_variables() {
        assert_eq!(from_env(Some("u".into()), None), None);
        assert_eq!(from_env(None, Some("p".into())), None);
        assert_eq!(
            from_env(Some("u".into()), Some("p".into())),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
    }

    #[test]
    fn a_docker_config_entry_is_used_for_its_registry_only() {
        // base64("robot:s3cret")
        let config = r#"{"auths": {"registry.example:5000": {"auth": "cm9ib3Q6czNjcmV0"}}}"#;
        assert_eq!(
            Credentials::from_docker_config(config.as_bytes(), "registry.example:5000"),
            Credentials::Basic {
                username: "robot".into(),
                password: "s3cret".into()
            }
        );
        assert_eq!(
            Credentials::from_docker_config(config.as_bytes(), "ghcr.io"),
            Credentials::Anonymous
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let credentials = Credentials::Basic {
            username: "robot".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}

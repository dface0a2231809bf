//! OCI registries for the registry tests: the shared one `scripts/ensure-registry` starts
//! (`WARREN_TEST_REGISTRY`, default `127.0.0.1:5000`), found the way the broker is, and private
//! ones a test starts itself — with Debian's `docker-registry`, the same binary — to tamper
//! with its storage or stop it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::{free_local_addr, http_get_with};

/// The shared test registry's address (`HOST:PORT`).
pub fn shared_registry() -> String {
    let addr = std::env::var("WARREN_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let socket: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("WARREN_TEST_REGISTRY={addr:?} is not HOST:PORT ({e})"));
    assert!(
        answers(socket),
        "no OCI registry answers on {addr} (WARREN_TEST_REGISTRY): run scripts/ensure-registry"
    );
    addr
}

/// A namespace of its own on `registry`, for one test: `<registry>/warren-test-<random>`.
pub fn unique_namespace(registry: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{registry}/warren-test-{}", &suffix[..12])
}

/// A registry process of one test's own, on a free local port, with its own storage; killed
/// when dropped.
pub struct PrivateRegistry {
    child: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Storage and config.
    dir: tempfile::TempDir,
}

impl PrivateRegistry {
    /// Starts `docker-registry serve` and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = free_local_addr().expect("a free port").to_string();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("write the registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start docker-registry ({e}): run scripts/ensure-registry, which installs it")
            });
        let mut registry = PrivateRegistry {
            child: Some(child),
            addr,
            dir,
        };
        let socket: SocketAddr = registry.addr.parse().expect("an address");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(socket) {
            if let Some(status) = registry
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited before answering: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// The file holding blob `sha256:<digest>` in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&digest[..2])
            .join(digest)
            .join("data")
    }

    /// Stops the registry (it stays stopped).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its storage directory.
    pub fn storage(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when `GET /v2/` answers 200 on `addr` (the registry API's version check).
fn answers(addr: SocketAddr) -> bool {
    http_get_with(addr, "/v2/", &[]).is_some_and(|(code, _)| code == 200)
}

/// The manifest `reference` of `repository` on `registry`, as JSON.
pub fn manifest_json(registry: &str, repository: &str, reference: &str) -> serde_json::Value {
    let addr: SocketAddr = registry.parse().expect("HOST:PORT");
    let (code, body) = http_get_with(
        addr,
        &format!("/v2/{repository}/manifests/{reference}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .expect("the registry answers");
    assert_eq!(code, 200, "GET manifest {repository}:{reference}: {body}");
    serde_json::from_str(&body).expect("the manifest is JSON")
}

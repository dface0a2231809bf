//! The observability stack under test: the shipped Prometheus configuration run by a real
//! `prometheus` process with its targets pointed at local programs, and the shipped Grafana
//! dashboard read as data so every query in it can be run against that Prometheus.
//!
//! # Layout
//! - `prometheus`: localizing `deploy/prometheus/prometheus.yml`, starting and querying Prometheus.
//! - `dashboard`: panels, queries and template variables of the Grafana dashboard JSON, and
//!   Grafana-style interpolation of `$variables`.

pub mod dashboard;
pub mod prometheus;

use std::path::PathBuf;

use crate::repo_root;

/// `deploy/prometheus/`: the shipped Prometheus configuration and alert rules.
pub fn prometheus_dir() -> PathBuf {
    repo_root().join("deploy/prometheus")
}

/// The shipped Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    repo_root().join("deploy/grafana/dashboards/warren-overview.json")
}

/// Path of `program` on `PATH`, if it is installed.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Path of `program`, or a panic that says how to install it.
pub fn require(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!("`{program}` is not installed: run scripts/ensure-prometheus (Debian packages prometheus, docker-compose)")
    })
}

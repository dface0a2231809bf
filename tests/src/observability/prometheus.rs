//! A real `prometheus` process for a test, running the shipped configuration with its targets
//! pointed at programs on this machine, and a small client for its HTTP API.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::observability::require;
use crate::worker_process::http_get;

/// Where the shipped configuration's targets live on this machine.
#[derive(Debug, Clone)]
pub struct LocalTargets {
    /// Replace every DNS service discovery block (the worker replicas).
    pub workers: Vec<SocketAddr>,
    /// Replaces the broker's metrics endpoint `rabbitmq:15692`.
    pub rabbitmq: SocketAddr,
    /// Replaces Prometheus's own `localhost:9090`.
    pub prometheus: SocketAddr,
}

/// Rewrites the shipped `prometheus.yml` for a local run, changing only where targets are and how
/// often they are scraped: every `dns_sd_configs` block becomes a `static_configs` block listing
/// `targets.workers`, the compose host names become local addresses, and every scrape and
/// evaluation interval (and scrape timeout) becomes `interval`. Jobs, metrics paths, parameters
/// and rule files stay as shipped. Works on the block-style YAML the file is written in.
pub fn localize_config(shipped: &str, targets: &LocalTargets, interval: &str) -> String {
    let workers = targets
        .workers
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = Vec::new();
    let mut lines = shipped.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("dns_sd_configs:") {
            // Skip the block: deeper lines, blank lines, and list items at the key's own indent.
            while let Some(next) = lines.peek() {
                let next_trimmed = next.trim_start();
                let next_indent = next.len() - next_trimmed.len();
                let inside = next_trimmed.is_empty()
                    || next_indent > indent.len()
                    || (next_indent == indent.len() && next_trimmed.starts_with("- "));
                if !inside {
                    break;
                }
                lines.next();
            }
            out.push(format!("{indent}static_configs:"));
            out.push(format!("{indent}  - targets: [{workers}]"));
            continue;
        }
        let key = trimmed.split(':').next().unwrap_or_default();
        if matches!(
            key,
            "scrape_interval" | "evaluation_interval" | "scrape_timeout"
        ) {
            out.push(format!("{indent}{key}: {interval}"));
            continue;
        }
        out.push(
            line.replace("rabbitmq:15692", &targets.rabbitmq.to_string())
                .replace("localhost:9090", &targets.prometheus.to_string()),
        );
    }
    out.join("\n") + "\n"
}

/// Job names of a Prometheus configuration (`- job_name: x` lines).
pub fn job_names(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- job_name:"))
        .map(|name| name.trim().trim_matches('"').to_owned())
        .collect()
}

/// A loopback address that was free a moment ago, for Prometheus to listen on.
pub fn free_local_addr() -> SocketAddr {
    crate::probe::free_local_addr().expect("a free local port")
}

/// A running Prometheus with its own storage, killed on drop.
pub struct PrometheusProcess {
    child: Child,
    /// Where its web UI and API listen.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PrometheusProcess {
    /// Starts `prometheus` on `addr` with `config` as its configuration file, in a temp dir that
    /// also holds a copy of every other file of `config_dir` (so relative `rule_files` resolve),
    /// and waits until it is ready.
    pub fn start(addr: SocketAddr, config_dir: &Path, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(config_dir).expect("config dir readable") {
            let path = entry.expect("dir entry").path();
            if path.is_file() {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap()))
                    .expect("copy config file");
            }
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let log = File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(require("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = PrometheusProcess { child, addr, dir };
        prometheus.wait_ready(Duration::from_secs(30));
        prometheus
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!(
                    "prometheus exited before it was ready ({status}):\n{}",
                    self.log()
                );
            }
            if http_get(self.addr, "/-/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The configuration file it runs.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    /// `GET path` on the API: the `data` of a successful answer, or the error Prometheus gave.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) =
            http_get(self.addr, path).ok_or_else(|| format!("no answer to GET {path}"))?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: HTTP {code}, not JSON ({e}): {body}"))?;
        if json["status"] == "success" {
            Ok(json["data"].clone())
        } else {
            Err(format!(
                "HTTP {code}, {}: {}",
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or(&body)
            ))
        }
    }

    /// Evaluates `expr` now (`/api/v1/query`): one sample per series (a scalar is one sample
    /// without labels), or the parse/evaluation error.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        let samples = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|series| Sample {
                    labels: series["metric"].clone(),
                    value: sample_value(&series["value"]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: Value::Null,
                value: sample_value(&data["result"]),
            }],
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(samples)
    }

    /// Values of `label` on series matching `selector` (`/api/v1/label/<label>/values`) — what
    /// Grafana's `label_values(selector, label)` asks for.
    pub fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        let data = self.api(&format!(
            "/api/v1/label/{}/values?match%5B%5D={}",
            url_encode(label),
            url_encode(selector)
        ))?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Active scrape targets.
    pub fn targets(&self) -> Vec<Target> {
        let data = self
            .api("/api/v1/targets?state=active")
            .expect("targets API answers");
        data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Target {
                job: t["scrapePool"].as_str().unwrap_or_default().to_owned(),
                url: t["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
                health: t["health"].as_str().unwrap_or_default().to_owned(),
                last_error: t["lastError"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Loaded recording and alerting rules.
    pub fn rules(&self) -> Vec<Rule> {
        let data = self.api("/api/v1/rules").expect("rules API answers");
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| Rule {
                name: r["name"].as_str().unwrap_or_default().to_owned(),
                health: r["health"].as_str().unwrap_or_default().to_owned(),
                last_error: r["lastError"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Polls `check` every 200 ms until it returns `Ok`, or panics after `timeout` with the last
    /// `Err` (what was still missing) and Prometheus's log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match check(self) {
                Ok(value) => return value,
                Err(missing) if Instant::now() >= deadline => panic!(
                    "timed out after {timeout:?} waiting for {what}: {missing}\nprometheus log:\n{}",
                    self.log()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of a query result.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series' labels (a JSON object; null for a scalar).
    pub labels: Value,
    /// Its value; NaN when Prometheus says `NaN` (e.g. a quantile of an empty histogram).
    pub value: f64,
}

/// One scrape target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The job (scrape pool) it belongs to.
    pub job: String,
    /// The URL Prometheus scrapes.
    pub url: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    /// Why the last scrape failed, if it did.
    pub last_error: String,
}

/// One rule as Prometheus evaluates it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Alert or record name.
    pub name: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub health: String,
    /// Why the last evaluation failed, if it did.
    pub last_error: String,
}

/// `[timestamp, "value"]` → value.
fn sample_value(pair: &Value) -> f64 {
    match pair[1].as_str() {
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(text) => text.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query-string value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            url_encode(r#"sum(up{job="w"}[1m]) / 2"#),
            "sum%28up%7Bjob%3D%22w%22%7D%5B1m%5D%29%20%2F%202"
        );
    }

    #[test]
    fn localizing_replaces_discovery_hosts_and_intervals_only() {
        let shipped = "\
global:
  scrape_interval: 15s # comment
scrape_configs:
  - job_name: w
    dns_sd_configs:
    - names: [worker]
      type: A

      port: 9464
    metrics_path: /metrics
  - job_name: r
    static_configs:
      - targets: [\"rabbitmq:15692\"]
";
        let targets = LocalTargets {
            workers: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            rabbitmq: "127.0.0.1:3".parse().unwrap(),
            prometheus: "127.0.0.1:4".parse().unwrap(),
        };
        assert_eq!(
            localize_config(shipped, &targets, "1s"),
            "\
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: w
    static_configs:
      - targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]
    metrics_path: /metrics
  - job_name: r
    static_configs:
      - targets: [\"127.0.0.1:3\"]
"
        );
        assert_eq!(job_names(shipped), ["w", "r"]);
    }
}

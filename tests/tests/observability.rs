//! The deployment and observability stack, checked with the real programs available here:
//! `docker-compose` validates the compose file, `promtool` the Prometheus configuration and the
//! alert rules (with their unit tests), and a real Prometheus running the shipped scrape
//! configuration — targets pointed at a real worker and the local RabbitMQ — answers every query
//! of the Grafana dashboard with data.
//!
//! Needs `prometheus`, `promtool` and `docker-compose` (scripts/ensure-prometheus installs them
//! and enables the local RabbitMQ's Prometheus plugin).

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use warren_schemas::{ModuleRef, Task};
use warren_tests::broker::{amqp_url, TestBroker};
use warren_tests::observability::dashboard::{interpolate, parse_label_values, Dashboard};
use warren_tests::observability::prometheus::{
    free_local_addr, job_names, localize_config, LocalTargets, PrometheusProcess,
};
use warren_tests::observability::{dashboard_path, prometheus_dir, require, which};
use warren_tests::worker_process::{http_get, WorkerProcess};
use warren_tests::{binary, modules_dir, repo_root};
use warren_worker::metrics;

/// Scrape and rule evaluation interval of the test's Prometheus.
const SCRAPE_INTERVAL: &str = "1s";
/// What `$__rate_interval` stands for: wide enough to span both batches of tasks.
const RATE_INTERVAL: &str = "1m";

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn compose_file_is_valid_and_defines_the_stack() {
    let Some(compose) = which("docker-compose") else {
        eprintln!(
            "SKIPPED: docker-compose is not installed, so docker-compose.yml was not validated \
             (scripts/ensure-prometheus installs the Debian package docker-compose)"
        );
        return;
    };
    let compose_config = |args: &[&str]| {
        let output = run(Command::new(&compose)
            .args(["-f", "docker-compose.yml"])
            .args(args)
            .current_dir(repo_root()));
        String::from_utf8(output.stdout).expect("utf-8")
    };
    compose_config(&["config", "-q"]);
    let services: BTreeSet<String> = compose_config(&["--profile", "demo", "config", "--services"])
        .lines()
        .map(str::to_owned)
        .collect();
    for service in ["rabbitmq", "worker", "prometheus", "grafana", "demo"] {
        assert!(
            services.contains(service),
            "service {service} missing: {services:?}"
        );
    }
    // Every file the stack mounts from the repository exists (compose would create a missing
    // bind source as an empty directory and the service would start misconfigured).
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    for word in text.split(|c: char| c.is_whitespace() || c == '"') {
        if let Some(source) = word.strip_prefix("./deploy/") {
            let path = repo_root()
                .join("deploy")
                .join(source.split(':').next().unwrap());
            assert!(
                path.exists(),
                "docker-compose.yml mounts {}, missing",
                path.display()
            );
        }
    }
    let resolved = compose_config(&["config"]);
    assert!(
        !resolved.contains("container_name"),
        "replicated services cannot have a container_name:\n{resolved}"
    );
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let promtool = require("promtool");
    let dir = prometheus_dir();
    run(Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    // Each alert fires on the situation it describes, and not before its `for:`.
    run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
}

#[test]
fn dashboard_has_a_fixed_uid_and_a_panel_for_every_worker_metric() {
    let dashboard = Dashboard::load(&dashboard_path());
    assert_eq!(dashboard.json["uid"], "warren-overview", "links rely on it");
    let panels = dashboard.panels();
    let ids: Vec<_> = panels.iter().map(|p| p["id"].as_u64()).collect();
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids must be unique: {ids:?}");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{title}: no gridPos"
        );
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: must use the datasource variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert!(target["refId"].is_string(), "{title}: target without refId");
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: empty expr"
            );
        }
    }
    let variables = dashboard.variables();
    for name in ["module", "instance"] {
        let variable = variables
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no ${name} variable"));
        assert!(
            parse_label_values(&variable.query).is_some(),
            "${name} is a label_values query: {variable:?}"
        );
    }
    let exprs: Vec<String> = dashboard.queries().into_iter().map(|q| q.expr).collect();
    for metric in [
        metrics::INSTANTIATE_SECONDS,
        metrics::TASK_RUN_SECONDS,
        metrics::TASK_QUEUE_WAIT_SECONDS,
        metrics::TASK_TOTAL_SECONDS,
        metrics::TASKS_TOTAL,
        metrics::DELIVERIES_REJECTED_TOTAL,
        metrics::AMQP_RECONNECTS_TOTAL,
        metrics::AMQP_NODE_CONNECTED,
        metrics::AMQP_NODE_CONNECT_FAILURES_TOTAL,
        metrics::TASKS_IN_FLIGHT,
        metrics::MODULES_LOADED,
        metrics::POOL_INSTANCES_IN_USE,
        metrics::POOL_INSTANCES_CAPACITY,
        metrics::POOL_MEMORIES_IN_USE,
        metrics::POOL_UNUSED_MEMORY_RESIDENT_BYTES,
        metrics::SANDBOX_RESET_INFO,
        metrics::SANDBOX_SWAP_SCRUBBED_PAGES_TOTAL,
        metrics::RESULTS_UNROUTABLE_TOTAL,
        metrics::RESULTS_REFUSED_TOTAL,
        metrics::MODULE_PULLS_TOTAL,
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
    for histogram in [metrics::INSTANTIATE_SECONDS, metrics::TASK_RUN_SECONDS] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("histogram_quantile")
                    && e.contains(&format!("{histogram}_bucket"))),
            "{histogram} needs a quantile over its buckets"
        );
    }
    for queue_metric in [
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_messages{queue=\"$dead_queue\"}",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(queue_metric)),
            "no RabbitMQ panel uses {queue_metric}"
        );
    }
}

fn task(module: &str, input: &[u8], args: &[&str]) -> Task {
    let mut task = Task::new(module.parse::<ModuleRef>().unwrap(), input.to_vec());
    task.args = args.iter().map(|a| a.to_string()).collect();
    task
}

/// One batch: two modules that succeed, a non-zero exit, a trap, an unknown module, and one
/// undecodable message.
async fn run_batch(broker: &TestBroker) -> usize {
    let tasks = [
        task("upper", b"hello", &[]),
        task("upper", b"world", &[]),
        task("wc", b"one two three\n", &[]),
        task("exit", b"", &["3"]),
        task("trap", b"", &[]),
        task("nope", b"", &[]),
    ];
    for t in &tasks {
        broker.publish(t).await;
    }
    broker.publish_raw(b"not a task").await;
    let results = broker.collect(tasks.len(), Duration::from_secs(60)).await;
    assert_eq!(results.len(), tasks.len(), "every task has a result");
    tasks.len()
}

/// The broker's Prometheus endpoint: the AMQP_URL host, port 15692.
fn rabbitmq_metrics_addr() -> SocketAddr {
    let url = amqp_url();
    let authority = url.split("://").nth(1).unwrap_or(&url);
    let authority = authority.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = host_port.split(':').next().unwrap_or("127.0.0.1");
    (host, 15692)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the broker host {host:?} of AMQP_URL"))
}

fn first_number(prometheus: &PrometheusProcess, expr: &str) -> Result<f64, String> {
    let samples = prometheus.query(expr)?;
    samples
        .first()
        .map(|s| s.value)
        .ok_or_else(|| format!("{expr}: no data yet"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_answers_with_data_from_a_real_prometheus() {
    // Build the binaries and modules first (once per test process), so the time reported at the
    // end is this test's own.
    binary("warren-worker");
    modules_dir();
    let started = Instant::now();
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let rabbitmq = rabbitmq_metrics_addr();
    let rabbitmq_on = http_get(rabbitmq, "/metrics").is_some_and(|(code, _)| code == 200);
    if !rabbitmq_on {
        eprintln!(
            "NOTE: no RabbitMQ Prometheus endpoint on {rabbitmq} (plugin rabbitmq_prometheus \
             off; scripts/ensure-prometheus enables it): RabbitMQ queries are only checked to parse"
        );
    }

    // The shipped configuration, pointed at this worker and broker, scraped every second.
    let shipped = std::fs::read_to_string(prometheus_dir().join("prometheus.yml")).unwrap();
    let addr = free_local_addr();
    let local = LocalTargets {
        workers: vec![worker.metrics_addr],
        rabbitmq,
        prometheus: addr,
    };
    let config = localize_config(&shipped, &local, SCRAPE_INTERVAL);
    assert!(!config.contains("dns_sd_configs"), "{config}");
    let prometheus = PrometheusProcess::start(addr, &prometheus_dir(), &config);
    run(Command::new(require("promtool"))
        .args(["check", "config"])
        .arg(prometheus.config_file()));

    let is_rabbitmq_job = |job: &str| job.starts_with("rabbitmq");
    let jobs: BTreeSet<String> = job_names(&shipped).into_iter().collect();
    prometheus.wait_for("every target scraped", Duration::from_secs(20), |p| {
        let targets = p.targets();
        let seen: BTreeSet<String> = targets.iter().map(|t| t.job.clone()).collect();
        if seen != jobs {
            return Err(format!("jobs {seen:?}, shipped {jobs:?}"));
        }
        match targets
            .iter()
            .find(|t| t.health != "up" && (rabbitmq_on || !is_rabbitmq_job(&t.job)))
        {
            Some(t) => Err(format!(
                "{} {} {}: {}",
                t.job, t.url, t.health, t.last_error
            )),
            None => Ok(()),
        }
    });

    // Two batches, each seen by a scrape, so counters and histogram buckets have increased
    // inside the rate window (a series' first sample alone gives no rate).
    let mut finished = 0;
    for _ in 0..2 {
        finished += run_batch(&broker).await;
        let want = finished as f64;
        prometheus.wait_for("the batch scraped", Duration::from_secs(20), |p| {
            let scraped = first_number(p, "sum(warren_tasks_total)")?;
            (scraped >= want)
                .then_some(())
                .ok_or(format!("{scraped} of {want} tasks scraped"))
        });
    }

    let values: HashMap<&str, String> = HashMap::from([
        ("datasource", "prometheus".to_owned()),
        ("module", ".*".to_owned()),
        ("instance", ".*".to_owned()),
        ("tasks_queue", broker.topology.tasks.clone()),
        ("dead_queue", broker.topology.dead.clone()),
        ("__rate_interval", RATE_INTERVAL.to_owned()),
        ("__interval", SCRAPE_INTERVAL.to_owned()),
        ("__range", "5m".to_owned()),
    ]);
    let dashboard = Dashboard::load(&dashboard_path());

    // Template variables: label_values(...) lists this worker and the modules that ran.
    for variable in dashboard.variables().iter().filter(|v| v.kind == "query") {
        let (selector, label) = parse_label_values(&variable.query)
            .unwrap_or_else(|| panic!("${} is not label_values(...)", variable.name));
        let selector = interpolate(selector, &values).unwrap();
        let found = prometheus
            .label_values(&selector, label)
            .unwrap_or_else(|e| panic!("${}: {selector}: {e}", variable.name));
        let expected = match variable.name.as_str() {
            "instance" => vec![worker.metrics_addr.to_string()],
            "module" => vec!["upper".to_owned(), "wc".to_owned()],
            _ => vec![],
        };
        for value in expected {
            assert!(
                found.contains(&value),
                "${} = {found:?} lacks {value}",
                variable.name
            );
        }
        assert!(!found.is_empty(), "${}: no values", variable.name);
    }

    // Every panel query: parses, and returns data with a number in it (RabbitMQ ones only parse
    // when the broker has no metrics endpoint). RabbitMQ refreshes queue metrics every 5 s.
    let queries = dashboard.queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let report = prometheus.wait_for(
        "every dashboard query to return data",
        Duration::from_secs(30),
        |p| {
            let mut failures = Vec::new();
            let mut report = Vec::new();
            for query in &queries {
                let expr = interpolate(&query.expr, &values)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", query.panel, query.ref_id));
                let needs_data = rabbitmq_on || !query.expr.contains("rabbitmq_");
                match p.query(&expr) {
                    Err(error) => panic!(
                        "panel {:?} query {} does not evaluate: {error}\n{expr}",
                        query.panel, query.ref_id
                    ),
                    Ok(samples) if needs_data && !samples.iter().any(|s| !s.value.is_nan()) => {
                        failures.push(format!(
                            "panel {:?} query {}: {} series, none with a number\n  {expr}",
                            query.panel,
                            query.ref_id,
                            samples.len()
                        ))
                    }
                    Ok(samples) => report.push(format!(
                        "{:>3} series  {:<32} {}",
                        samples.len(),
                        query.panel,
                        query.ref_id
                    )),
                }
            }
            if failures.is_empty() {
                Ok(report)
            } else {
                Err(format!("\n{}", failures.join("\n")))
            }
        },
    );
    eprintln!("{}", report.join("\n"));

    if rabbitmq_on {
        // Both undecodable messages, seen through RabbitMQ's own metrics.
        let dead = format!(
            "sum(rabbitmq_detailed_queue_messages{{queue=\"{}\"}})",
            broker.topology.dead
        );
        prometheus.wait_for("the dead-letter depth", Duration::from_secs(20), |p| {
            let depth = first_number(p, &dead)?;
            (depth >= 2.0)
                .then_some(())
                .ok_or(format!("{depth} dead letters, want 2"))
        });
    }

    // The alert rules load and evaluate without errors against real series.
    prometheus.wait_for("every alert rule evaluated", Duration::from_secs(10), |p| {
        let rules = p.rules();
        if rules.is_empty() {
            return Err("no rules loaded".into());
        }
        match rules.iter().find(|r| r.health != "ok") {
            Some(r) => Err(format!("{} {}: {}", r.name, r.health, r.last_error)),
            None => Ok(()),
        }
    });

    drop(prometheus);
    drop(worker);
    drop(broker); // deletes its queues
    eprintln!(
        "{} dashboard queries checked in {:.1?}",
        queries.len(),
        started.elapsed()
    );
}

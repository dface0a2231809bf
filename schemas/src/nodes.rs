//! The broker's nodes: one AMQP URL, or several for a cluster, tried in turn.
//!
//! `AMQP_URL` (and `--amqp-url`, which may be repeated) holds comma-separated addresses. The
//! first is a full URL; the others are full URLs too or just `host[:port]`, which borrow the
//! first one's scheme, credentials, virtual host and options. A connect tries the nodes in a
//! fresh random order each time (so workers spread over the cluster), the node used last going
//! last (it is the one that just failed), and stops at the first that answers.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::topology::redact_url;

/// How long a TCP connect to one node may take before the next node is tried, unless the URL
/// sets `connection_timeout` (milliseconds) itself.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the AMQP handshake with one node (TCP, TLS, login, tuning) may take in all.
pub const NODE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// One broker node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    uri: AMQPUri,
    /// `host:port`: how logs and metrics name the node.
    label: String,
    /// The URL with its password replaced by `***`.
    redacted: String,
}

impl Node {
    /// `host:port`, for logs and metric labels.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The node's URL without its password.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The node's URL, password included (for handing to a child process; never log it).
    pub fn url(&self) -> String {
        self.uri.to_string()
    }
}

/// Every node a worker or producer may connect to, in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerNodes {
    nodes: Vec<Node>,
}

/// Why an `AMQP_URL` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodesError {
    /// Nothing was given, or an address between commas is empty.
    #[error("the broker address list has an empty entry (AMQP_URL is comma-separated: amqp://user:pass@host1:5672/%2f,host2,host3:5673)")]
    Empty,
    /// The first address is not a full URL, so later `host[:port]` entries have nothing to
    /// borrow credentials and a virtual host from.
    #[error("the first broker address {0:?} must be a full URL (amqp://user:pass@host:5672/%2f)")]
    FirstNotUrl(String),
    /// An address does not parse.
    #[error("broker address {address:?} is not an AMQP URL: {reason}")]
    Invalid {
        /// The address, password redacted.
        address: String,
        /// What the URL parser said.
        reason: String,
    },
}

/// No node accepted a connection.
#[derive(Debug)]
pub struct ConnectError {
    /// Each node tried and what it answered, in the order tried (never empty).
    pub failures: Vec<NodeFailure>,
}

/// One node that did not accept a connection.
#[derive(Debug)]
pub struct NodeFailure {
    /// Index of the node in [`BrokerNodes::nodes`].
    pub node: usize,
    /// Its `host:port`.
    pub label: String,
    /// What connecting to it gave.
    pub error: lapin::Error,
}

impl ConnectError {
    /// What the last node tried answered: tells a refusal (credentials, vhost) from an
    /// unreachable broker.
    pub fn last(&self) -> &lapin::Error {
        &self.failures[self.failures.len() - 1].error
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tried: Vec<String> = self
            .failures
            .iter()
            .map(|failure| format!("{}: {}", failure.label, failure.error))
            .collect();
        let nodes = if self.failures.len() == 1 {
            "the broker node"
        } else {
            "any broker node"
        };
        write!(f, "cannot connect to {nodes} ({})", tried.join("; "))
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.last())
    }
}

/// A connection, the node it is to, and the nodes tried before it that failed.
pub struct Connected {
    /// The connection.
    pub connection: Connection,
    /// Index of the node in [`BrokerNodes::nodes`].
    pub node: usize,
    /// Nodes tried first that did not answer (for logs and per-node metrics).
    pub skipped: Vec<NodeFailure>,
}

impl BrokerNodes {
    /// Parses addresses as given on the command line or in `AMQP_URL`: each item may itself
    /// hold several comma-separated addresses. Duplicates are dropped.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, NodesError> {
        let addresses: Vec<&str> = items
            .iter()
            .flat_map(|item| item.as_ref().split(','))
            .map(str::trim)
            .collect();
        if addresses.is_empty() || addresses.iter().any(|a| a.is_empty()) {
            return Err(NodesError::Empty);
        }
        let first = addresses[0];
        if !first.contains("://") {
            return Err(NodesError::FirstNotUrl(redact_url(first)));
        }
        let base = parse_uri(first)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(addresses.len());
        for address in addresses {
            let uri = if address.contains("://") {
                parse_uri(address)?
            } else {
                borrow_from(&base, address)?
            };
            let node = node(uri);
            if !nodes.iter().any(|n| n.label == node.label) {
                nodes.push(node);
            }
        }
        Ok(BrokerNodes { nodes })
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The first node given.
    pub fn first(&self) -> &Node {
        &self.nodes[0]
    }

    /// Every node as `AMQP_URL` takes it (passwords included: for a child process).
    pub fn to_env_value(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Node::url).collect();
        urls.join(",")
    }

    /// The order of the next connect: random, with `last` (the node used before) last.
    pub fn order(&self, last: Option<usize>) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        fastrand::shuffle(&mut order);
        if let Some(last) = last {
            if let Some(at) = order.iter().position(|&i| i == last) {
                let node = order.remove(at);
                order.push(node);
            }
        }
        order
    }

    /// Connects to the first node that answers, trying them in [`BrokerNodes::order`].
    pub async fn connect(
        &self,
        properties: &ConnectionProperties,
        last: Option<usize>,
    ) -> Result<Connected, ConnectError> {
        let mut failures = Vec::new();
        for index in self.order(last) {
            let node = &self.nodes[index];
            let attempt = Connection::connect_uri(node.uri.clone(), properties.clone());
            let outcome = match tokio::time::timeout(NODE_HANDSHAKE_TIMEOUT, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no AMQP handshake within {NODE_HANDSHAKE_TIMEOUT:?}"),
                ))),
            };
            match outcome {
                Ok(connection) => {
                    return Ok(Connected {
                        connection,
                        node: index,
                        skipped: failures,
                    })
                }
                Err(error) => failures.push(NodeFailure {
                    node: index,
                    label: node.label.clone(),
                    error,
                }),
            }
        }
        Err(ConnectError { failures })
    }
}

impl fmt::Display for BrokerNodes {
    /// Every node's URL, passwords redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.nodes.iter().map(Node::redacted).collect();
        f.write_str(&urls.join(","))
    }
}

impl FromStr for BrokerNodes {
    type Err = NodesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BrokerNodes::parse(&[s])
    }
}

fn parse_uri(address: &str) -> Result<AMQPUri, NodesError> {
    let mut uri: AMQPUri = address.parse().map_err(|reason| NodesError::Invalid {
        address: redact_url(address),
        reason,
    })?;
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(NODE_CONNECT_TIMEOUT.as_millis() as u64);
    }
    Ok(uri)
}

/// `host[:port]` (or `[ipv6]:port`) with everything else from `base`.
fn borrow_from(base: &AMQPUri, address: &str) -> Result<AMQPUri, NodesError> {
    let invalid = |reason: &str| NodesError::Invalid {
        address: redact_url(address),
        reason: reason.to_owned(),
    };
    let (host, port) = match address.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .map(|(host, rest)| (host, rest.strip_prefix(':')))
            .ok_or_else(|| invalid("an IPv6 address needs its closing ']'"))?,
        None => match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        },
    };
    let port = match port {
        None => base.scheme.default_port(),
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?,
    };
    if host.is_empty() || (host.contains(['/', '@', '?', ':']) && !address.starts_with('[')) {
        return Err(invalid("expected host or host:port after the first URL"));
    }
    let mut uri = base.clone();
    uri.authority.host = host.to_owned();
    uri.authority.port = port;
    Ok(uri)
}

fn node(uri: AMQPUri) -> Node {
    let host = &uri.authority.host;
    let label = if host.contains(':') {
        format!("[{host}]:{}", uri.authority.port)
    } else {
        format!("{host}:{}", uri.authority.port)
    };
    let vhost = match uri.vhost.as_str() {
        "/" => "%2f".to_owned(),
        vhost => vhost.replace('/', "%2f"),
    };
    let redacted = format!(
        "{}://{}:***@{label}/{vhost}",
        uri.scheme, uri.authority.userinfo.username
    );
    Node {
        uri,
        label,
        redacted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(nodes: &BrokerNodes) -> Vec<&str> {
        nodes.nodes().iter().map(Node::label).collect()
    }

    #[test]
    fn one_url_is_one_node() {
        let nodes: BrokerNodes = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(labels(&nodes), ["127.0.0.1:5672"]);
        assert_eq!(
            nodes.first().redacted(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn later_addresses_borrow_credentials_vhost_and_options_from_the_first() {
        let nodes = BrokerNodes::parse(&[
            "amqp://app:s3cret@rabbit-1:5672/jobs?heartbeat=10, rabbit-2,rabbit-3:5673",
        ])
        .unwrap();
        assert_eq!(
            labels(&nodes),
            ["rabbit-1:5672", "rabbit-2:5672", "rabbit-3:5673"]
        );
        let third = &nodes.nodes()[2].uri;
        assert_eq!(third.authority.userinfo.username, "app");
        assert_eq!(third.authority.userinfo.password, "s3cret");
        assert_eq!(third.vhost, "jobs");
        assert_eq!(third.query.heartbeat, Some(10));
    }

    #[test]
    fn repeated_flags_and_full_urls_mix_and_duplicates_go() {
        let nodes =
            BrokerNodes::parse(&["amqp://a:b@h1:5672/%2f", "amqp://c:d@h2:5680/%2f,h1:5672"])
                .unwrap();
        assert_eq!(labels(&nodes), ["h1:5672", "h2:5680"]);
        assert_eq!(nodes.nodes()[1].uri.authority.userinfo.username, "c");
    }

    #[test]
    fn passwords_never_show_in_display_or_errors() {
        let nodes = BrokerNodes::parse(&["amqp://u:topsecret@h1/%2f,h2"]).unwrap();
        assert!(!nodes.to_string().contains("topsecret"), "{nodes}");
        assert!(nodes.to_env_value().contains("topsecret"));
        for bad in [
            "amqp://u:topsecret@h1:notaport/%2f",
            "u:topsecret@h1",
            "amqp://u:p@h1,u:topsecret@h2",
        ] {
            let error = BrokerNodes::parse(&[bad]).unwrap_err();
            assert!(!error.to_string().contains("topsecret"), "{error}");
        }
    }

    #[test]
    fn bad_lists_get_clear_errors() {
        assert_eq!(
            BrokerNodes::parse(&["amqp://h1,,h2"]),
            Err(NodesError::Empty)
        );
        assert_eq!(BrokerNodes::parse::<&str>(&[]), Err(NodesError::Empty));
        assert!(matches!(
            BrokerNodes::parse(&["h1:5672,amqp://h2"]),
            Err(NodesError::FirstNotUrl(_))
        ));
        assert!(matches!(
            BrokerNodes::parse(&["amqp://h1,h2:99999"]),
            Err(NodesError::Invalid { .. })
        ));
        assert!(matches!(
            BrokerNodes::parse(&["amqp://h1,user@h2"]),
            Err(NodesError::Invalid { .. })
        ));
        assert!(matches!(
            BrokerNodes::parse(&["http://h1"]),
            Err(NodesError::Invalid { .. })
        ));
    }

    #[test]
    fn the_order_is_a_shuffle_with_the_last_node_last() {
        let nodes = BrokerNodes::parse(&["amqp://h1,h2,h3,h4"]).unwrap();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = nodes.order(Some(2));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3]);
            assert_eq!(order[3], 2);
            firsts.insert(order[0]);
        }
        assert_eq!(firsts.len(), 3, "every other node comes first sometimes");
    }
}

//! Command-line values shared by the worker's and the producer's flags: sizes, durations,
//! counts and the broker URL, parsed and explained the same way everywhere.

use std::time::Duration;

use bytesize::ByteSize;

/// Broker URL when neither `--amqp-url` nor `AMQP_URL` is set: a local RabbitMQ with its
/// default user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the broker is: one flag for every warren command that talks to it.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker URL; for a cluster, several nodes, comma-separated or with the flag repeated:
    /// `amqp://user:pass@rabbit-1:5672/%2f,rabbit-2,rabbit-3` (later `host[:port]` entries take
    /// the first URL's credentials and virtual host). Connects try the nodes in a random order
    /// and fail over to the next. Passwords are never logged or printed.
    #[arg(
        long = "amqp-url",
        global = true,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub amqp_url: Vec<String>,
}

#[cfg(feature = "amqp")]
impl BrokerArgs {
    /// The broker's nodes, checked.
    pub fn nodes(&self) -> Result<crate::BrokerNodes, crate::nodes::NodesError> {
        crate::BrokerNodes::parse(&self.amqp_url)
    }
}

/// A byte size with an optional unit: `65536`, `64KiB`, `256MiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a byte size (try 65536, 64KiB, 256MiB): {e}"))
}

/// A duration with a unit: `30s`, `250ms`, `1h`. Zero is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (try 30s, 250ms): {e}"))
}

/// A duration longer than zero (a timeout or an interval that must elapse).
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        d => Ok(d),
    }
}

/// A guest environment variable, `KEY=VALUE` (the value may contain `=`).
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("{s:?} is not KEY=VALUE (try --env LANG=C)"));
    };
    check_env_key(key).map_err(|reason| format!("{s:?}: {reason}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Why `key` cannot name an environment variable, if it cannot.
pub fn check_env_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("the name is empty")
    } else if key.contains(['=', '\0']) {
        Err("the name contains '=' or NUL")
    } else {
        Ok(())
    }
}

/// A whole number of at least 1.
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes(" 256MiB "), Ok(256 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_zero_is_refused_where_it_must_be() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_nonzero_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_nonzero_duration("0s").is_err());
    }

    #[test]
    fn env_pairs_keep_equals_in_values_and_refuse_bad_keys() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".to_owned(), "b=c".to_owned())));
        assert!(parse_env("A").unwrap_err().contains("not KEY=VALUE"));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A\0B=x").is_err());
    }

    #[test]
    fn counts_must_be_positive() {
        assert_eq!(parse_positive("3"), Ok(3));
        assert!(parse_positive("0").is_err());
        assert!(parse_positive("-1").is_err());
        assert!(parse_positive("many").is_err());
    }
}

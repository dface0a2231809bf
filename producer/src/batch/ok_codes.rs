//! `--ok-exit-codes`: which guest exit codes count as success. Programs that answer through
//! their exit code (a SAT solver's 10 and 20, `grep`'s 1, `diff`'s 1) would otherwise make every
//! task of a batch a failure. The exit code itself is always recorded as it was.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use warren_schemas::Outcome;

/// The exit codes that count as success besides `0`, which always does; `0` alone by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<i32>", into = "Vec<i32>")]
pub struct OkExitCodes(BTreeSet<i32>);

impl Default for OkExitCodes {
    fn default() -> Self {
        OkExitCodes(BTreeSet::from([0]))
    }
}

impl OkExitCodes {
    /// True when `outcome` counts as a success: exit code 0 or one of these. Every other
    /// outcome (timeout, trap, a limit, ...) is a failure whatever the list says.
    pub fn accepts(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Success => true,
            Outcome::NonZeroExit { code } => self.0.contains(code),
            _ => false,
        }
    }

    /// True when nothing but `0` counts as success.
    pub fn is_default(&self) -> bool {
        self.0.iter().all(|&code| code == 0)
    }
}

impl TryFrom<Vec<i32>> for OkExitCodes {
    type Error = String;

    fn try_from(codes: Vec<i32>) -> Result<Self, String> {
        if codes.is_empty() {
            return Err("no exit codes (give at least one, e.g. 0)".into());
        }
        if let Some(code) = codes.iter().find(|code| !(0..=255).contains(*code)) {
            return Err(format!("{code} is not an exit code (0-255)"));
        }
        Ok(OkExitCodes(codes.into_iter().collect()))
    }
}

impl From<OkExitCodes> for Vec<i32> {
    fn from(codes: OkExitCodes) -> Self {
        codes.0.into_iter().collect()
    }
}

impl FromStr for OkExitCodes {
    type Err = String;

    /// Parses a comma-separated list such as `0,10,20`.
    fn from_str(s: &str) -> Result<Self, String> {
        let codes = s
            .split(',')
            .map(|part| {
                part.trim()
                    .parse::<i32>()
                    .map_err(|_| format!("{:?} is not an exit code (try 0,10,20)", part.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        OkExitCodes::try_from(codes)
    }
}

impl fmt::Display for OkExitCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<String> = self.0.iter().map(i32::to_string).collect();
        f.write_str(&codes.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_exit_codes_succeed_and_nothing_else_does() {
        let ok: OkExitCodes = "0, 10,20".parse().unwrap();
        assert!(ok.accepts(&Outcome::Success));
        assert!(ok.accepts(&Outcome::NonZeroExit { code: 10 }));
        assert!(!ok.accepts(&Outcome::NonZeroExit { code: 1 }));
        assert!(!ok.accepts(&Outcome::Timeout { limit_ms: 5 }));
        assert_eq!(ok.to_string(), "0,10,20");
        let without_zero: OkExitCodes = "1".parse().unwrap();
        assert!(without_zero.accepts(&Outcome::Success), "0 always succeeds");
        assert!(without_zero.accepts(&Outcome::NonZeroExit { code: 1 }));
        assert!(!without_zero.is_default());
        assert!(OkExitCodes::default().is_default());
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        assert!(""
            .parse::<OkExitCodes>()
            .unwrap_err()
            .contains("not an exit code"));
        assert!("0,x".parse::<OkExitCodes>().unwrap_err().contains("\"x\""));
        assert!("256".parse::<OkExitCodes>().unwrap_err().contains("0-255"));
        assert!(serde_json::from_str::<OkExitCodes>("[]").is_err());
        let round: OkExitCodes = serde_json::from_str("[20,0,10]").unwrap();
        assert_eq!(serde_json::to_string(&round).unwrap(), "[0,10,20]");
    }
}

//! What the mock does, per instance and per request.
//!
//! [`MockConfig`] is fixed when the mock starts; [`Behaviour`] is the part a
//! single request may override through the `x-mock-scenario` header, so one
//! running mock can play a slow cloud, a failing cloud and a healthy cloud in
//! the same test without restarts.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Name of the request header that overrides [`Behaviour`] fields for one request.
pub const SCENARIO_HEADER: &str = "x-mock-scenario";

/// Everything a mock instance needs to start.
#[derive(Clone, Debug, clap::Args)]
pub struct MockConfig {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "MOCK_ADDR", default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,

    /// Seed for the random failures of `fail_probability`, so a run can be replayed.
    #[arg(long, env = "MOCK_SEED", default_value_t = 0)]
    pub seed: u64,

    /// Default behaviour of every request.
    #[command(flatten)]
    pub behaviour: Behaviour,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 0,
            behaviour: Behaviour::default(),
        }
    }
}

/// How the mock answers a chat request. Every field can be overridden per
/// request by the JSON object in the `x-mock-scenario` header; fields the
/// header leaves out keep the instance's value.
#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Behaviour {
    /// Bearer key that clients must send; none means any or no key is accepted.
    #[arg(long, env = "MOCK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Model names accepted (comma separated); empty accepts every name.
    #[arg(long, env = "MOCK_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Delay before the first streamed chunk, or before a non-streaming answer starts.
    #[arg(long, env = "MOCK_TTFT_MS", default_value_t = 0)]
    pub ttft_ms: u64,

    /// Decode speed after the first token; 0 sends every token at once.
    #[arg(long, env = "MOCK_TOKENS_PER_SECOND", default_value_t = 0.0)]
    pub tokens_per_second: f64,

    /// Length of the natural answer in tokens; a smaller `max_tokens` cuts it
    /// short with `finish_reason: "length"`.
    #[arg(long, env = "MOCK_COMPLETION_TOKENS", default_value_t = 16)]
    pub completion_tokens: u32,

    /// Answer with this HTTP status and an `OpenAI` error body instead of a completion.
    #[arg(long, env = "MOCK_FAIL_STATUS")]
    pub fail_status: Option<u16>,

    /// The `Retry-After` (seconds) an injected 429 is sent with.
    #[arg(long, env = "MOCK_RETRY_AFTER_S", default_value_t = 1)]
    pub retry_after_s: u32,

    /// Chance that `fail_status` applies to a request (1 = always), drawn from the seeded generator.
    #[arg(long, env = "MOCK_FAIL_PROBABILITY", default_value_t = 1.0)]
    pub fail_probability: f64,

    /// Abort the connection after this many SSE events, without `[DONE]`.
    /// A non-streaming answer is cut after half its body.
    #[arg(long, env = "MOCK_DROP_AFTER_CHUNKS")]
    pub drop_after_chunks: Option<u32>,

    /// Go silent, connection open, after this many SSE events. A
    /// non-streaming answer goes silent after half its body.
    #[arg(long, env = "MOCK_STALL_AFTER_CHUNKS")]
    pub stall_after_chunks: Option<u32>,

    /// Never answer at all (until the mock shuts down), to exercise client timeouts.
    #[arg(long, env = "MOCK_HANG")]
    pub hang: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            api_key: None,
            models: Vec::new(),
            ttft_ms: 0,
            tokens_per_second: 0.0,
            completion_tokens: 16,
            fail_status: None,
            retry_after_s: 1,
            fail_probability: 1.0,
            drop_after_chunks: None,
            stall_after_chunks: None,
            hang: false,
        }
    }
}

/// Why a scenario header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The header was not a JSON object of known fields with the right types.
    #[error("invalid x-mock-scenario header: {0}")]
    Invalid(#[from] serde_json::Error),
    /// The header's bytes were not visible ASCII/UTF-8.
    #[error("x-mock-scenario header is not valid UTF-8")]
    NotUtf8,
    /// A number was out of its range.
    #[error("invalid x-mock-scenario header: {0}")]
    OutOfRange(&'static str),
}

impl Behaviour {
    /// Returns this behaviour with the fields named in `json` replaced.
    ///
    /// The merge goes through `serde_json::Value` so that the header accepts
    /// exactly the field names and types of the struct, with no second
    /// hand-kept list of optional fields to drift out of step. The cost (a few
    /// allocations) is paid only by requests that carry the header.
    pub fn with_overrides(&self, json: &str) -> Result<Self, ScenarioError> {
        let overrides: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)?;
        let mut merged = serde_json::to_value(self)?;
        if let Some(fields) = merged.as_object_mut() {
            fields.extend(overrides);
        }
        let behaviour: Self = serde_json::from_value(merged)?;
        behaviour.validate()?;
        Ok(behaviour)
    }

    /// Checks the ranges clap and serde cannot express.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if !(0.0..=1.0).contains(&self.fail_probability) {
            return Err(ScenarioError::OutOfRange(
                "fail_probability must be within 0..=1",
            ));
        }
        if !self.tokens_per_second.is_finite() || self.tokens_per_second < 0.0 {
            return Err(ScenarioError::OutOfRange("tokens_per_second must be >= 0"));
        }
        if let Some(status) = self.fail_status {
            if !(400..=599).contains(&status) {
                return Err(ScenarioError::OutOfRange(
                    "fail_status must be within 400..=599",
                ));
            }
        }
        Ok(())
    }

    /// Whether `model` is served under this behaviour.
    #[must_use]
    pub fn accepts_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_named_fields() {
        let base = Behaviour {
            ttft_ms: 5,
            models: vec!["a".into()],
            ..Behaviour::default()
        };
        let merged = base
            .with_overrides(r#"{"fail_status":503,"ttft_ms":7}"#)
            .unwrap();
        assert_eq!(merged.fail_status, Some(503));
        assert_eq!(merged.ttft_ms, 7);
        assert_eq!(merged.models, vec!["a".to_string()]);
    }

    #[test]
    fn overrides_can_clear_optional_fields() {
        let base = Behaviour {
            api_key: Some("k".into()),
            ..Behaviour::default()
        };
        let merged = base.with_overrides(r#"{"api_key":null}"#).unwrap();
        assert_eq!(merged.api_key, None);
    }

    #[test]
    fn overrides_reject_bad_input() {
        let base = Behaviour::default();
        for bad in [
            r#"{"no_such_field":1}"#,
            r#"{"ttft_ms":"slow"}"#,
            "[1]",
            "not json",
            r#"{"fail_probability":1.5}"#,
            r#"{"fail_status":200}"#,
            r#"{"tokens_per_second":-1}"#,
        ] {
            assert!(base.with_overrides(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn empty_model_list_accepts_all() {
        let open = Behaviour::default();
        assert!(open.accepts_model("anything"));
        let closed = Behaviour {
            models: vec!["m1".into()],
            ..Behaviour::default()
        };
        assert!(closed.accepts_model("m1"));
        assert!(!closed.accepts_model("m2"));
    }
}

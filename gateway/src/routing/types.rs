//! The routing inputs: backend configuration, tenant policy, live load.

use serde::{Deserialize, Serialize};

use crate::privacy::Class;

/// What runs behind a backend: our own edge worker or an OpenAI-compatible
/// cloud API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Edge,
    Cloud,
}

/// Where a backend runs. Privacy is decided by zone, not kind: an
/// OpenAI-compatible server in the organisation's own rack is `OnPrem` even
/// though the gateway talks to it like a cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    OnPrem,
    Cloud,
}

macro_rules! wire_enum {
    ($ty:ident { $($variant:ident => $s:literal),+ }) => {
        impl $ty {
            /// The `snake_case` wire and database name.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),+ }
            }

            /// Parses the wire name; `None` for anything else.
            #[must_use]
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}
wire_enum!(BackendKind { Edge => "edge", Cloud => "cloud" });
wire_enum!(Zone { OnPrem => "on_prem", Cloud => "cloud" });

/// A public model id served by a backend and the name the upstream knows it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMapping {
    pub public: String,
    pub upstream: String,
}

/// A backend's static configuration, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub id: String,
    /// Unique, human-chosen; also the deterministic tie-breaker in ranking.
    pub name: String,
    pub kind: BackendKind,
    pub base_url: String,
    pub zone: Zone,
    /// Name of the environment variable holding the upstream API key. The
    /// key itself is never stored, so a database dump leaks no credentials.
    pub api_key_env: Option<String>,
    pub models: Vec<ModelMapping>,
    pub price_in_per_1k: f64,
    pub price_out_per_1k: f64,
    pub joules_per_prompt_token: f64,
    pub joules_per_output_token: f64,
    pub rtt_ms: f64,
    /// Nominal prefill rate, used when no live load report is available
    /// (always, for cloud backends).
    pub prefill_tps: f64,
    /// Nominal decode rate, as above.
    pub decode_tps: f64,
    /// In-flight requests the gateway may send; 0 means unlimited.
    pub max_concurrency: u32,
    pub context_length: u32,
    pub enabled: bool,
}

impl Backend {
    /// The upstream name of `public`, if this backend serves it.
    #[must_use]
    pub fn upstream_for(&self, public: &str) -> Option<&str> {
        self.models
            .iter()
            .find(|m| m.public == public)
            .map(|m| m.upstream.as_str())
    }
}

/// A tenant's routing policy: weights and normalisation references of the
/// score, plus the privacy defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub w_latency: f64,
    pub w_energy: f64,
    pub w_cost: f64,
    pub latency_slo_ms: f64,
    pub energy_ref_j: f64,
    pub cost_ref_usd: f64,
    /// Class applied when neither key nor request says more.
    pub default_class: Class,
    /// When false, cloud-zone backends are never candidates for this tenant.
    pub allow_cloud: bool,
    /// Output tokens assumed when a request sets no `max_tokens`.
    pub expected_output_tokens: u32,
}

impl Default for Policy {
    /// Latency-first with a mild energy preference; references sized so a
    /// short chat turn scores around 1 on each axis.
    fn default() -> Self {
        Policy {
            w_latency: 1.0,
            w_energy: 0.2,
            w_cost: 0.5,
            latency_slo_ms: 5_000.0,
            energy_ref_j: 50.0,
            cost_ref_usd: 0.001,
            default_class: Class::Public,
            allow_cloud: true,
            expected_output_tokens: 256,
        }
    }
}

/// Why a policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct InvalidPolicy(pub &'static str);

impl Policy {
    /// Weights must be finite and non-negative, references strictly positive:
    /// a zero reference would divide by zero in every score.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let weights = [self.w_latency, self.w_energy, self.w_cost];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(InvalidPolicy("weights must be finite and >= 0"));
        }
        let refs = [self.latency_slo_ms, self.energy_ref_j, self.cost_ref_usd];
        if refs.iter().any(|r| !r.is_finite() || *r <= 0.0) {
            return Err(InvalidPolicy("SLO and references must be finite and > 0"));
        }
        if self.expected_output_tokens == 0 {
            return Err(InvalidPolicy("expected_output_tokens must be > 0"));
        }
        Ok(())
    }
}

/// The edge worker's `GET /v1/worker/load` report. Unknown fields are
/// ignored so the worker can add fields without breaking gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub model: String,
    #[serde(default)]
    pub quantization: Option<String>,
    pub context_length: u32,
    pub active_sequences: u32,
    pub waiting_sequences: u32,
    pub max_running_sequences: u32,
    pub max_waiting_sequences: u32,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub joules_per_prompt_token: f64,
    pub joules_per_output_token: f64,
    #[serde(default)]
    pub energy_method: Option<String>,
    pub ready: bool,
    pub draining: bool,
}

impl WorkerLoad {
    /// Every running slot and every queue slot is taken: the worker would
    /// reject another request.
    #[must_use]
    pub fn saturated(&self) -> bool {
        self.active_sequences >= self.max_running_sequences
            && self.waiting_sequences >= self.max_waiting_sequences
    }
}

/// What the gateway currently knows about a backend beyond its config.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub backend: &'a Backend,
    /// Health as judged by the caller (probes, circuit breaker).
    pub healthy: bool,
    /// Latest load report; always `None` for cloud backends.
    pub load: Option<&'a WorkerLoad>,
    /// Requests this gateway has in flight to the backend, used against
    /// `max_concurrency` when there is no load report.
    pub in_flight: u32,
}

/// The request as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    /// The model id or alias the client asked for.
    pub model: String,
    pub class: Class,
    pub prompt_tokens: u32,
    /// The request's `max_tokens`, if any; the policy default otherwise.
    pub max_output_tokens: Option<u32>,
}

/// Which public model ids a requested name can resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliasTarget {
    /// Any model any backend serves.
    Any,
    /// One of these ids, in order of preference for display only; the cost
    /// model decides among them.
    Models(Vec<String>),
}

/// A stored alias such as `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub name: String,
    pub target: AliasTarget,
}

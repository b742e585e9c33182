//! The routing inputs: backend configuration, tenant policy, live load.

use serde::{Deserialize, Serialize};

use crate::privacy::Class;

pub use wire::Capabilities;

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
    /// What the backend can honour beyond plain chat, as declared by the
    /// operator. An edge worker's live report replaces it.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Why a backend's zone label cannot be trusted as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ZoneMismatch {
    #[error("a cloud-kind backend cannot be in the on-prem zone")]
    CloudKindOnPrem,
    #[error("an on-prem backend takes no upstream API key")]
    OnPremWithKey,
    #[error("an on-prem backend's host must be loopback, private or a LAN name")]
    OnPremPublicHost,
}

impl Backend {
    /// Checks that the zone label is plausible. Confidential requests go
    /// wherever `OnPrem` says, so a cloud labelled on-prem would leak them:
    /// the admin CLI refuses these unless forced.
    pub fn check_zone(&self) -> Result<(), ZoneMismatch> {
        if self.zone != Zone::OnPrem {
            return Ok(());
        }
        if self.kind == BackendKind::Cloud {
            return Err(ZoneMismatch::CloudKindOnPrem);
        }
        if self.api_key_env.is_some() {
            return Err(ZoneMismatch::OnPremWithKey);
        }
        if !host_is_local(&self.base_url) {
            return Err(ZoneMismatch::OnPremPublicHost);
        }
        Ok(())
    }

    /// The upstream name of `public`, if this backend serves it.
    #[must_use]
    pub fn upstream_for(&self, public: &str) -> Option<&str> {
        self.models
            .iter()
            .find(|m| m.public == public)
            .map(|m| m.upstream.as_str())
    }
}

/// DNS suffixes that only resolve inside a site.
const LOCAL_SUFFIXES: &[&str] = &[".local", ".lan", ".internal", ".home.arpa", ".localhost"];

/// Whether a URL's host is on the premises: a loopback, private, link-local
/// or unique-local address, `localhost`, a single-label name (a LAN or
/// container host such as `edge-1`), or a name under a local-only suffix.
/// A public IP address or a public DNS name is not.
fn host_is_local(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || !client_connects_to(url, &host) {
        return false;
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6
                        .to_ipv4_mapped()
                        .is_some_and(|v4| v4.is_loopback() || v4.is_private())
            }
        };
    }
    // A dotted name that looks numeric is an IP address in another notation
    // (`0x7f.1`, `2130706433`): refuse rather than guess.
    if host
        .split('.')
        .all(|label| label.chars().all(|c| c.is_ascii_hexdigit() || c == 'x'))
    {
        return false;
    }
    host == "localhost" || !host.contains('.') || LOCAL_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// Whether the HTTP client, which parses URLs by the WHATWG rules (the
/// `url` crate's, as reqwest does), finds `host` in `url`. Where the two
/// readings differ (`http://cloud.example\@10.0.0.5/`: a backslash ends an
/// http URL's host, so the client connects to `cloud.example`) the URL is
/// not judged local.
fn client_connects_to(url: &str, host: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.') == host,
        Some(url::Host::Ipv4(a)) => host.parse() == Ok(a),
        Some(url::Host::Ipv6(a)) => host.parse() == Ok(a),
        None => false,
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
    /// Output tokens assumed when a request sets no `max_tokens`, and the
    /// most latency is predicted for when it sets more; energy and money
    /// are predicted for the mean answer so far, within the same bound.
    pub expected_output_tokens: u32,
    /// When false (the default), a request's `store: true` is not forwarded:
    /// the upstream must not keep the exchange.
    #[serde(default)]
    pub allow_store: bool,
    /// Hedging: when an edge worker has not started answering by its
    /// predicted time plus this margin (ms), the same request starts in
    /// the cloud and the first to answer wins. `None`: off.
    #[serde(default)]
    pub hedge_margin_ms: Option<f64>,
    /// Cascade: a non-streaming answer from an edge worker whose mean token
    /// log-probability is below this is asked of the cloud instead.
    /// `None`: off.
    #[serde(default)]
    pub cascade_min_logprob: Option<f64>,
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
            allow_store: false,
            hedge_margin_ms: None,
            cascade_min_logprob: None,
        }
    }
}

/// Why a policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct InvalidPolicy(pub &'static str);

impl Policy {
    /// Weights must be between 0 and 1e6, references strictly positive and
    /// at most 1e12: a zero reference would divide by zero in every score,
    /// and a weight near `f64::MAX` would make every score infinite.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let weights = [self.w_latency, self.w_energy, self.w_cost];
        if weights.iter().any(|w| !(0.0..=1e6).contains(w)) {
            return Err(InvalidPolicy("weights must be between 0 and 1e6"));
        }
        let refs = [self.latency_slo_ms, self.energy_ref_j, self.cost_ref_usd];
        if refs.iter().any(|r| !(*r > 0.0 && *r <= 1e12)) {
            return Err(InvalidPolicy(
                "SLO and references must be > 0 and at most 1e12",
            ));
        }
        if self.expected_output_tokens == 0 {
            return Err(InvalidPolicy("expected_output_tokens must be > 0"));
        }
        if self
            .hedge_margin_ms
            .is_some_and(|m| !m.is_finite() || m < 0.0)
        {
            return Err(InvalidPolicy("hedge_margin_ms must be finite and >= 0"));
        }
        if self
            .cascade_min_logprob
            .is_some_and(|t| !t.is_finite() || t > 0.0)
        {
            return Err(InvalidPolicy(
                "cascade_min_logprob must be finite and <= 0 (a log-probability)",
            ));
        }
        Ok(())
    }
}

/// The edge worker's `GET /v1/worker/load` report: the one wire type both
/// binaries use. Fields the worker has not measured yet are `None`;
/// routing falls back to the backend's nominal figures for them.
pub use wire::LoadReport as WorkerLoad;

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
    /// The worker's queue as the load tracker extrapolates it from its
    /// latest report (edge workers with a report only); without it the
    /// report's counts are taken as they are.
    pub queue: Option<QueueModel>,
    /// The worker recently served a request with the same leading prompt,
    /// so that prefix is probably in its prefix cache.
    pub prefix_cached: bool,
}

/// What the gateway knows about an edge worker's queue beyond its latest
/// load report, to predict the wait of a request sent now (see
/// `live::load`, which keeps these figures per worker, and
/// `routing::queue`, which turns them into a wait).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueModel {
    /// Sequences running plus waiting at the latest report, sent by every
    /// gateway.
    pub in_system: u32,
    /// Running slots.
    pub slots: u32,
    /// Age of that report, in ms.
    pub age_ms: f64,
    /// Requests this gateway sent the worker after that report.
    pub sent_since: u32,
    /// Arrival rate at the worker from every gateway (requests/s), from its
    /// admitted counter over successive reports; `None` until measured.
    pub arrival_rate: Option<f64>,
    /// This gateway's own rate of requests to the worker (requests/s).
    pub local_rate: f64,
    /// Mean time one request holds a running slot (ms), by Little's law
    /// over the reports (running sequences / departure rate); `None` until
    /// measured.
    pub service_ms: Option<f64>,
}

/// The leading part of a prompt (its system prompt, say), as a key of the
/// workers' prefix caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrefixKey {
    /// Hash of the leading text.
    pub hash: u64,
    /// Estimated tokens of that text.
    pub tokens: u32,
}

/// The request as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestView {
    /// The model id or alias the client asked for.
    pub model: String,
    pub class: Class,
    pub prompt_tokens: u32,
    /// The request's `max_tokens`, if any; the policy default otherwise.
    pub max_output_tokens: Option<u32>,
    /// Features the request needs from a backend (tools, a JSON response
    /// format); a backend without them is not a candidate.
    pub needs: Capabilities,
    /// How many choices the request asks for (`n`): an edge worker answers
    /// one, so a request for several is not a candidate for one.
    pub choices: u32,
    /// The request's leading prompt, for prefix affinity; `None` when it is
    /// too short to be worth caching.
    pub prefix: Option<PrefixKey>,
    /// Random bits for the power-of-two choice among near-equal edge
    /// workers, drawn by the caller so ranking stays a pure function;
    /// `None` leaves the ranking by score alone.
    pub seed: Option<u64>,
    /// How long this tenant's answers from this model have run and how
    /// many tokens its prompts had beyond the gateway's estimate, on
    /// average (`live::lengths`). Energy and money are predicted for the
    /// answer, capped by the request's bound, and every prediction for the
    /// prompt with its overhead; the context check keeps the estimate.
    pub expected: Expected,
}

/// What a tenant's requests for a model so far lead to expect
/// (`live::lengths`); each `None` before the first.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Expected {
    /// The mean answer, in completion tokens.
    pub answer_tokens: Option<f64>,
    /// The mean of the prompt tokens a backend reported less the gateway's
    /// estimate of them (a chat template's system prompt, for one).
    pub prompt_overhead: Option<f64>,
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

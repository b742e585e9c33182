//! Administration from the command line: `migrate`, admin tokens, tenants,
//! keys, backends, aliases, policies and privacy rules.
//!
//! The subcommands are clap derive types so the binary can mount them next
//! to `serve`; [`run`] executes one against a [`Store`] and writes JSON lines
//! to any writer, which keeps the output scriptable and lets tests capture
//! it. Nothing printed here contains a key hash or an upstream secret; the
//! plaintext of a new key is printed exactly once, by `key create` (and of
//! an admin token by `admin-token create`).
//!
//! The argument structs are also the admin API's request bodies (they
//! derive `Deserialize`, with the same defaults), and [`ops`] holds the
//! operations both call, so the API checks a backend, a policy or a rule
//! exactly as the CLI does.

mod exec;
pub mod ops;

use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::privacy::Class;
use crate::routing::{BackendKind, Zone};

pub use exec::run;
pub use ops::AdminError;

/// The administration subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Apply pending database migrations.
    Migrate,
    /// Manage admin tokens, the credential of the admin API and dashboard.
    #[command(subcommand)]
    AdminToken(AdminTokenCommand),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage upstream backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Manage model aliases such as `auto`.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Manage per-tenant routing policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage privacy rules.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminTokenCommand {
    /// Create an admin token and print it once.
    Create {
        /// Who or what the token is for, to tell tokens apart.
        #[arg(long)]
        name: String,
    },
    /// List admin tokens (never their secrets or hashes).
    List,
    /// Revoke an admin token by id; its dashboard sessions end too.
    Revoke { id: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it once.
    Create(KeyCreateArgs),
    /// Revoke a key by id.
    Revoke { id: String },
    /// Change a key's limits and budget; limits not given are kept.
    Update(KeyUpdateArgs),
    /// List keys (never their secrets or hashes).
    List {
        /// Only this tenant's keys (name or id).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Clone, Args, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreateArgs {
    /// Tenant name or id.
    #[arg(long)]
    pub tenant: String,
    /// The lowest privacy class of this key's requests.
    #[arg(long, value_enum, default_value_t = ClassArg::Public)]
    #[serde(default)]
    pub class: ClassArg,
    /// Requests per minute; unlimited if absent.
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute; unlimited if absent.
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Budget in USD; unlimited if absent.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Days until the key expires; never if absent.
    #[arg(long)]
    pub expires_days: Option<u32>,
    /// Scopes granted to the key.
    #[arg(long, num_args = 1.., default_values_t = default_scopes())]
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec![String::from("chat"), String::from("models")]
}

/// A key's new limits. In JSON a field that is absent is kept and `null`
/// removes the limit; on the command line `none` removes it.
#[derive(Debug, Clone, Default, Args, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdateArgs {
    /// The key's id.
    #[arg()]
    #[serde(skip)]
    pub id: String,
    /// Requests per minute, or `none`.
    #[arg(long, value_parser = parse_limit::<u32>)]
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub rpm: Option<Limit<u32>>,
    /// Tokens per minute, or `none`.
    #[arg(long, value_parser = parse_limit::<u32>)]
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub tpm: Option<Limit<u32>>,
    /// Budget in USD, or `none`.
    #[arg(long, value_parser = parse_limit::<f64>)]
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub budget: Option<Limit<f64>>,
}

/// A new limit: a value, or none (unlimited).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit<T>(pub Option<T>);

/// A field that is present (even as `null`) is `Some`; serde's `default`
/// makes an absent one `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Limit<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(|v| Some(Limit(v)))
}

/// Like [`present`] for a number that may also be switched off by `null`
/// or the string `"none"` (what the dashboard's form sends).
fn number_or_none<'de, D>(d: D) -> Result<Option<Limit<f64>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrNone {
        Number(f64),
        Word(String),
    }
    match Option::<NumberOrNone>::deserialize(d)? {
        None => Ok(Some(Limit(None))),
        Some(NumberOrNone::Number(v)) => Ok(Some(Limit(Some(v)))),
        Some(NumberOrNone::Word(w)) if w == "none" => Ok(Some(Limit(None))),
        Some(NumberOrNone::Word(w)) => Err(serde::de::Error::custom(format!(
            "expected a number or \"none\", got \"{w}\""
        ))),
    }
}

fn parse_limit<T: std::str::FromStr>(s: &str) -> Result<Limit<T>, String> {
    if s == "none" {
        return Ok(Limit(None));
    }
    s.parse()
        .map(|v| Limit(Some(v)))
        .map_err(|_| format!("expected a number or `none`, got `{s}`"))
}

#[derive(Debug, Clone, Subcommand)]
pub enum BackendCommand {
    /// Register a backend.
    Add(Box<BackendAddArgs>),
    /// Remove a backend by name.
    Remove { name: String },
    /// List backends.
    List,
    /// Let the router use a backend again.
    Enable { name: String },
    /// Stop routing to a backend without removing it.
    Disable { name: String },
}

/// A new backend. In JSON, `models` is a list of `public=upstream`
/// strings and the defaults are the command line's.
#[derive(Debug, Clone, Args, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendAddArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// Base URL of the OpenAI-compatible API, e.g. `http://10.0.0.5:8080`.
    #[arg(long)]
    pub url: String,
    /// Network zone; defaults to `on-prem` for edge and `cloud` for cloud.
    #[arg(long, value_enum)]
    #[serde(default)]
    pub zone: Option<ZoneArg>,
    /// `public=upstream` (or just `public` when the names agree); repeatable.
    #[arg(long = "model", required = true, value_parser = parse_model)]
    #[serde(deserialize_with = "models_from_strings")]
    #[schema(value_type = Vec<String>, example = json!(["smollm2=smollm2-135m-instruct"]))]
    pub models: Vec<(String, String)>,
    /// USD per 1000 prompt tokens.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub price_in: f64,
    /// USD per 1000 output tokens.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub price_out: f64,
    /// Joules per prompt token (nominal; live reports override).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub j_prompt: f64,
    /// Joules per output token (nominal; live reports override).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub j_output: f64,
    /// Network round trip in milliseconds.
    #[arg(long, default_value_t = DEFAULT_RTT_MS)]
    #[serde(default = "default_rtt_ms")]
    pub rtt_ms: f64,
    /// Nominal prefill tokens/s (live reports override for edge workers).
    #[arg(long, default_value_t = DEFAULT_PREFILL_TPS)]
    #[serde(default = "default_prefill_tps")]
    pub prefill_tps: f64,
    /// Nominal decode tokens/s (live reports override for edge workers).
    #[arg(long, default_value_t = DEFAULT_DECODE_TPS)]
    #[serde(default = "default_decode_tps")]
    pub decode_tps: f64,
    /// In-flight requests this gateway may send; 0 for unlimited.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub max_concurrency: u32,
    #[arg(long, default_value_t = DEFAULT_CONTEXT_LENGTH)]
    #[serde(default = "default_context_length")]
    pub context_length: u32,
    /// Name of the environment variable that holds the upstream API key.
    /// It may not name one of the gateway's own variables (`GATEWAY_*`).
    #[arg(long)]
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Whether the backend supports tools (function calling); default: yes
    /// for cloud, no for edge (an edge worker reports its own).
    #[arg(long)]
    #[serde(default)]
    pub tools: Option<bool>,
    /// Whether the backend enforces `response_format` JSON schemas; default
    /// as for `--tools`.
    #[arg(long)]
    #[serde(default)]
    pub json_schema: Option<bool>,
    /// Store the backend even though its zone label looks wrong (a cloud
    /// kind on-prem, an on-prem backend with an upstream key or a public
    /// host). Confidential requests will go to it.
    #[arg(long)]
    #[serde(default)]
    pub force_zone: bool,
}

const DEFAULT_RTT_MS: f64 = 1.0;
const DEFAULT_PREFILL_TPS: f64 = 1000.0;
const DEFAULT_DECODE_TPS: f64 = 50.0;
const DEFAULT_CONTEXT_LENGTH: u32 = 8192;

fn default_rtt_ms() -> f64 {
    DEFAULT_RTT_MS
}

fn default_prefill_tps() -> f64 {
    DEFAULT_PREFILL_TPS
}

fn default_decode_tps() -> f64 {
    DEFAULT_DECODE_TPS
}

fn default_context_length() -> u32 {
    DEFAULT_CONTEXT_LENGTH
}

fn models_from_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|m| parse_model(m).map_err(serde::de::Error::custom))
        .collect()
}

#[derive(Debug, Clone, Subcommand)]
pub enum AliasCommand {
    /// Point an alias at model ids, or at `any` model.
    Set {
        name: String,
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Remove an alias.
    Remove { name: String },
    /// List aliases.
    List,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Set a tenant's policy; fields not given keep their current value (or
    /// the default for a tenant without a policy).
    Set(Box<PolicySetArgs>),
    /// Show a tenant's effective policy.
    Get {
        #[arg(long)]
        tenant: String,
    },
}

/// A policy change; fields absent keep their value. In the admin API the
/// tenant comes from the path.
#[derive(Debug, Clone, Default, Args, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySetArgs {
    #[arg(long)]
    #[serde(skip)]
    pub tenant: String,
    #[arg(long)]
    pub w_latency: Option<f64>,
    #[arg(long)]
    pub w_energy: Option<f64>,
    #[arg(long)]
    pub w_cost: Option<f64>,
    #[arg(long)]
    pub slo_ms: Option<f64>,
    #[arg(long)]
    pub energy_ref_j: Option<f64>,
    #[arg(long)]
    pub cost_ref_usd: Option<f64>,
    #[arg(long, value_enum)]
    pub default_class: Option<ClassArg>,
    #[arg(long)]
    pub allow_cloud: Option<bool>,
    #[arg(long)]
    pub expected_output_tokens: Option<u32>,
    /// Forward a request's `store: true` to the upstream (off by default).
    #[arg(long)]
    pub allow_store: Option<bool>,
    /// Hedging: ms past an edge worker's predicted first byte after which
    /// the request also starts in the cloud; `none` turns it off.
    #[arg(long, value_parser = parse_limit::<f64>)]
    #[serde(default, deserialize_with = "number_or_none")]
    #[schema(value_type = Option<f64>)]
    pub hedge_margin_ms: Option<Limit<f64>>,
    /// Cascade: mean token log-probability (<= 0) below which an edge
    /// answer is asked of the cloud instead; `none` turns it off.
    #[arg(long, value_parser = parse_limit::<f64>, allow_hyphen_values = true)]
    #[serde(default, deserialize_with = "number_or_none")]
    #[schema(value_type = Option<f64>)]
    pub cascade_min_logprob: Option<Limit<f64>>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PrivacyCommand {
    /// Manage privacy rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Classify a request without sending it: the class the detectors and
    /// rules give it, and which detectors fired (never what they matched).
    /// The request is a chat request's JSON body, or plain text taken as one
    /// user message; read from standard input unless `--text` is given.
    Check {
        /// Tenant name or id whose rules apply too; only the global rules
        /// if absent.
        #[arg(long)]
        tenant: Option<String>,
        /// The text to classify, instead of standard input.
        #[arg(long)]
        text: Option<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum RuleCommand {
    /// Add an operator regex (`--pattern`) or configure a builtin detector
    /// (`--builtin`).
    Add(RuleAddArgs),
    /// Remove a rule by id.
    Remove { id: String },
    /// List rules of every scope.
    List,
}

/// A new privacy rule: an operator regex (`pattern`), or the settings of a
/// builtin detector (`builtin: true`).
#[derive(Debug, Clone, Args, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleAddArgs {
    /// Rule name; with `--builtin`, the detector (email, phone, card, iban,
    /// `ip_address`, secret, media).
    #[arg(long)]
    pub name: String,
    /// Regex for an operator rule.
    #[arg(long, conflicts_with = "builtin", required_unless_present = "builtin")]
    #[serde(default)]
    pub pattern: Option<String>,
    /// Configure the builtin detector `--name` instead of adding a regex.
    #[arg(long)]
    #[serde(default)]
    pub builtin: bool,
    /// With `--builtin`: switch the detector off.
    #[arg(long, requires = "builtin")]
    #[serde(default)]
    pub disable: bool,
    /// Class the rule raises a request to (required for regex rules).
    #[arg(long, value_enum)]
    #[serde(default)]
    pub class: Option<ClassArg>,
    /// Tenant name or id; the rule is global if absent.
    #[arg(long)]
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClassArg {
    #[default]
    Public,
    Internal,
    Confidential,
}

impl From<ClassArg> for Class {
    fn from(c: ClassArg) -> Class {
        match c {
            ClassArg::Public => Class::Public,
            ClassArg::Internal => Class::Internal,
            ClassArg::Confidential => Class::Confidential,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KindArg {
    Edge,
    Cloud,
}

impl From<KindArg> for BackendKind {
    fn from(k: KindArg) -> BackendKind {
        match k {
            KindArg::Edge => BackendKind::Edge,
            KindArg::Cloud => BackendKind::Cloud,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ZoneArg {
    /// `on-prem` (also `on_prem`, as backends are listed).
    #[serde(alias = "on_prem")]
    OnPrem,
    Cloud,
}

impl From<ZoneArg> for Zone {
    fn from(z: ZoneArg) -> Zone {
        match z {
            ZoneArg::OnPrem => Zone::OnPrem,
            ZoneArg::Cloud => Zone::Cloud,
        }
    }
}

fn parse_model(s: &str) -> Result<(String, String), String> {
    let (public, upstream) = s.split_once('=').unwrap_or((s, s));
    if public.is_empty() || upstream.is_empty() {
        return Err("expected public=upstream".to_owned());
    }
    Ok((public.to_owned(), upstream.to_owned()))
}

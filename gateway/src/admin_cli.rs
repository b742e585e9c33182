//! Administration from the command line: `migrate`, tenants, keys,
//! backends, aliases, policies and privacy rules.
//!
//! The subcommands are clap derive types so the binary can mount them next
//! to `serve`; [`run`] executes one against a [`Store`] and writes JSON lines
//! to any writer, which keeps the output scriptable and lets tests capture
//! it. Nothing printed here contains a key hash or an upstream secret; the
//! plaintext of a new key is printed exactly once, by `key create`.

mod exec;

use clap::{Args, Subcommand, ValueEnum};

use crate::privacy::Class;
use crate::routing::{BackendKind, Zone};

pub use exec::{run, AdminError};

/// The administration subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Apply pending database migrations.
    Migrate,
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
    /// List keys (never their secrets or hashes).
    List {
        /// Only this tenant's keys (name or id).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct KeyCreateArgs {
    /// Tenant name or id.
    #[arg(long)]
    pub tenant: String,
    /// The lowest privacy class of this key's requests.
    #[arg(long, value_enum, default_value_t = ClassArg::Public)]
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
    #[arg(long, num_args = 1.., default_values_t = [String::from("chat"), String::from("models")])]
    pub scopes: Vec<String>,
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

#[derive(Debug, Clone, Args)]
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
    pub zone: Option<ZoneArg>,
    /// `public=upstream` (or just `public` when the names agree); repeatable.
    #[arg(long = "model", required = true, value_parser = parse_model)]
    pub models: Vec<(String, String)>,
    /// USD per 1000 prompt tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_in: f64,
    /// USD per 1000 output tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_out: f64,
    /// Joules per prompt token (nominal; live reports override).
    #[arg(long, default_value_t = 0.0)]
    pub j_prompt: f64,
    /// Joules per output token (nominal; live reports override).
    #[arg(long, default_value_t = 0.0)]
    pub j_output: f64,
    /// Network round trip in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub rtt_ms: f64,
    /// Nominal prefill tokens/s (live reports override for edge workers).
    #[arg(long, default_value_t = 1000.0)]
    pub prefill_tps: f64,
    /// Nominal decode tokens/s (live reports override for edge workers).
    #[arg(long, default_value_t = 50.0)]
    pub decode_tps: f64,
    /// In-flight requests this gateway may send; 0 for unlimited.
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: u32,
    #[arg(long, default_value_t = 8192)]
    pub context_length: u32,
    /// Name of the environment variable that holds the upstream API key.
    /// It may not name one of the gateway's own variables (`GATEWAY_*`).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Whether the backend supports tools (function calling); default: yes
    /// for cloud, no for edge (an edge worker reports its own).
    #[arg(long)]
    pub tools: Option<bool>,
    /// Whether the backend enforces `response_format` JSON schemas; default
    /// as for `--tools`.
    #[arg(long)]
    pub json_schema: Option<bool>,
    /// Store the backend even though its zone label looks wrong (a cloud
    /// kind on-prem, an on-prem backend with an upstream key or a public
    /// host). Confidential requests will go to it.
    #[arg(long)]
    pub force_zone: bool,
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

#[derive(Debug, Clone, Args)]
pub struct PolicySetArgs {
    #[arg(long)]
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
}

#[derive(Debug, Clone, Subcommand)]
pub enum PrivacyCommand {
    /// Manage privacy rules.
    #[command(subcommand)]
    Rule(RuleCommand),
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

#[derive(Debug, Clone, Args)]
pub struct RuleAddArgs {
    /// Rule name; with `--builtin`, the detector (email, phone, card, iban,
    /// `ip_address`, secret).
    #[arg(long)]
    pub name: String,
    /// Regex for an operator rule.
    #[arg(long, conflicts_with = "builtin", required_unless_present = "builtin")]
    pub pattern: Option<String>,
    /// Configure the builtin detector `--name` instead of adding a regex.
    #[arg(long)]
    pub builtin: bool,
    /// With `--builtin`: switch the detector off.
    #[arg(long, requires = "builtin")]
    pub disable: bool,
    /// Class the rule raises a request to (required for regex rules).
    #[arg(long, value_enum)]
    pub class: Option<ClassArg>,
    /// Tenant name or id; the rule is global if absent.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClassArg {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ZoneArg {
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

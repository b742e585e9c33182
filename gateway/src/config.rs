//! The gateway's configuration: one documented struct, read from an optional
//! TOML file and then overridden field by field from `GATEWAY_<FIELD>`
//! environment variables (`GATEWAY_LISTEN`, `GATEWAY_DATABASE_URL`, ...).
//!
//! Unknown keys in the file are rejected, so a typo fails at start-up rather
//! than silently keeping a default. Environment variables are only read for
//! the known field names: other `GATEWAY_*` variables (a test's
//! `GATEWAY_BIN`, say) are not configuration and are left alone.
//!
//! The database URL may carry a password, so it is a [`SecretString`]: its
//! `Debug` prints a placeholder and the config can be logged whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Everything `gateway serve` needs. Every field has a default, so an empty
/// file (or none) gives a working gateway on embedded SQLite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the OpenAI-compatible API listens on; port 0 picks a free one
    /// (the bound address is printed on stdout).
    pub listen: SocketAddr,
    /// Postgres URL (`postgres://user:pass@host/db`). When absent the
    /// embedded SQLite file at `sqlite_path` is used.
    pub database_url: Option<SecretString>,
    /// SQLite file used when no `database_url` is set; created if missing.
    pub sqlite_path: PathBuf,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Whether the privacy scan's findings for each text of a kilobyte or more
    /// are remembered across requests (by the text's SHA-256, never the
    /// text), so that a system prompt or tool schema sent with every
    /// request is scanned once per rule set.
    pub privacy_memo: bool,
    /// Bodies up to this size, in bytes, are classified on the thread that
    /// serves the connection; larger ones on a pool of one thread per CPU,
    /// so that a long prompt's scan (up to a second for a megabyte of
    /// random characters) does not hold up the other connections of that
    /// thread. 0: every body goes to the pool.
    pub classify_inline_bytes: usize,
    /// How long an API key lookup is cached. Revocation takes effect within
    /// this time; shorter means more database reads.
    pub key_cache_ms: u64,
    /// Credentials neither cached nor known (API keys, admin tokens,
    /// dashboard session cookies, the worker token) that one peer (an IPv4
    /// address, an IPv6 /64) may present per minute; past that, its
    /// credentials not in the caches get 429 without a database query
    /// until its minute is over. 0: not limited.
    pub auth_guesses_per_minute: u32,
    /// Reverse proxies in front of the gateway, as comma-separated
    /// addresses or CIDR ranges (`10.0.0.0/8, ::1`). A request that comes
    /// through one is counted (for credential guesses) as coming from the
    /// last address in its `X-Forwarded-For` that is not a trusted proxy.
    /// Empty: the connection's address, whatever the header says.
    pub trusted_proxies: String,
    /// How long backends, aliases, policies and privacy rules are cached
    /// before being read from the store again.
    pub settings_cache_ms: u64,
    /// Interval between polls of each edge worker's `/v1/worker/load`.
    pub poll_interval_ms: u64,
    /// Timeout of one load poll; a slower answer counts as a failure.
    pub poll_timeout_ms: u64,
    /// Consecutive failures (polls or connection errors) after which a
    /// backend is treated as unhealthy until a poll succeeds again.
    pub unhealthy_after: u32,
    /// Upstream TCP (and TLS) connect timeout.
    pub upstream_connect_timeout_ms: u64,
    /// Upstream time to response headers and, for streams, the first event;
    /// past it the next candidate is tried.
    pub upstream_first_byte_timeout_ms: u64,
    /// Longest silence allowed between two chunks of an upstream stream.
    pub upstream_idle_timeout_ms: u64,
    /// Upper bound on one upstream request from send to last byte.
    pub upstream_total_timeout_ms: u64,
    /// Largest non-streaming upstream answer buffered, in bytes.
    pub max_upstream_body_bytes: usize,
    /// Ledger rows held in memory while the store is slow or down; beyond
    /// it they go to the spill file (or, without `ledger_spill_dir`, new
    /// requests are refused with 503). Rows are never dropped.
    pub ledger_queue: usize,
    /// The same bound in bytes of queued rows.
    pub ledger_queue_bytes: usize,
    /// Most rows the ledger writer stores in one batch.
    pub ledger_batch: usize,
    /// Directory of the ledger spill file (`ledger-spill.jsonl`), where
    /// rows wait on disk while the database is unreachable and at a
    /// shutdown that cannot reach it; replayed at start. One gateway per
    /// directory (the file is locked). Unset: rows wait in memory only and
    /// those still waiting at shutdown are lost.
    pub ledger_spill_dir: Option<PathBuf>,
    /// Size of the spill file beyond which new requests are refused with
    /// 503 and `/readyz` reports unready.
    pub ledger_spill_max_bytes: u64,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_grace_ms: u64,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Longest a client may take to send its request headers; a slower
    /// connection is closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// Longest a client may take to send its request body; past it the
    /// request gets 408.
    pub body_read_timeout_ms: u64,
    /// Open client connections accepted at once; further connections wait
    /// in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Requests handled at once; beyond it a request gets 503
    /// `service_unavailable` at once instead of queueing.
    pub max_in_flight: usize,
    /// Requests of one key handled at once, so that one client cannot take
    /// every slot of `max_in_flight`; beyond it the key's request gets 429
    /// `rate_limit_exceeded` at once.
    pub max_in_flight_per_key: usize,
    /// Threads that serve client connections, each with a single-threaded
    /// runtime of its own (0: one per CPU). A connection stays on the
    /// thread it was given, with its upstream connections, so a request
    /// is handled from its first byte to its last without waking another
    /// thread.
    pub serve_threads: usize,
    /// After `unhealthy_after` failures a backend rests this long, then one
    /// trial request (or poll) may use it again: a success restores it, a
    /// failure doubles the rest, up to 32 times this.
    pub unhealthy_cooldown_ms: u64,
    /// Largest share of a pool, in percent, that failures may eject at
    /// once; at least one backend may always be ejected. A pool is the
    /// backends of one zone serving the requested model. Past the cap the
    /// ejected backends whose rest ends soonest are tried again, so a
    /// fault on the gateway's side (its network, say) cannot empty a pool.
    pub max_ejection_percent: u32,
    /// Failover attempts allowed per request, over the last ten seconds
    /// (0.2: retries add at most 20% to the upstream load).
    pub retry_budget_ratio: f64,
    /// Failover attempts allowed per second whatever the traffic, so a
    /// quiet gateway can still fail over.
    pub retry_budget_min_per_s: f64,
    /// Largest upstream error body read, in bytes; the rest is dropped.
    pub max_upstream_error_bytes: usize,
    /// Largest single SSE event accepted from an upstream, in bytes; a
    /// larger one ends the stream with an error.
    pub max_sse_event_bytes: usize,
    /// Token sent as `Authorization: Bearer` to edge workers (their
    /// `EDGE_WORKER_TOKEN`); prefer the `GATEWAY_WORKER_TOKEN` variable.
    pub worker_token: Option<SecretString>,
    /// A file holding the worker token (trailing whitespace ignored), read
    /// at start-up; for container secrets. Used when `worker_token` is
    /// unset.
    pub worker_token_file: Option<PathBuf>,
    /// Redis URL (`redis://host:6379/0`) for the state gateways share: the
    /// registry of self-registered edge workers, backend health, limits.
    /// Without it a single gateway keeps that state in process.
    pub redis_url: Option<SecretString>,
    /// Prefix of every Redis key this gateway uses, so several fleets (or
    /// tests) can share one Redis.
    pub redis_prefix: String,
    /// Longest any one Redis call may take; past it the call counts as
    /// failed and the gateway keeps its local view.
    pub redis_timeout_ms: u64,
    /// How long a lease of a key's limits lives after each renewal: with
    /// Redis, each gateway holds a small slice of every busy key's rates
    /// and budget, granted ahead of need, and admits from it without a
    /// round trip (`limits` module). 0: no leases, every admission asks
    /// Redis.
    pub redis_lease_ms: u64,
    /// How long a self-registered worker stays listed after its last
    /// heartbeat (workers beat about once a second).
    pub worker_ttl_ms: u64,
    /// Carbon intensity of the electricity the savings are counted in
    /// (gCO2 per kWh), for the CO2 saved against all-cloud: exported as
    /// `gateway_grid_gco2_per_kwh` and the default of `gateway report`.
    pub grid_gco2_per_kwh: f64,
    /// Place requests on predicted load: edge queues extrapolated with
    /// arrival and service rates, the power-of-two choice among near-equal
    /// edge workers, prefix affinity. `false` routes on the latest load
    /// reports as they are (the behaviour before prediction), for
    /// comparison.
    pub predicted_placement: bool,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            sqlite_path: PathBuf::from("gateway.db"),
            max_body_bytes: 1 << 20,
            privacy_memo: true,
            classify_inline_bytes: 16 << 10,
            key_cache_ms: 2_000,
            auth_guesses_per_minute: 60,
            trusted_proxies: String::new(),
            settings_cache_ms: 2_000,
            poll_interval_ms: 500,
            poll_timeout_ms: 400,
            unhealthy_after: 2,
            upstream_connect_timeout_ms: 2_000,
            upstream_first_byte_timeout_ms: 30_000,
            upstream_idle_timeout_ms: 30_000,
            upstream_total_timeout_ms: 600_000,
            max_upstream_body_bytes: 16 << 20,
            ledger_queue: 4_096,
            ledger_queue_bytes: 64 << 20,
            ledger_batch: 256,
            ledger_spill_dir: None,
            ledger_spill_max_bytes: 1 << 30,
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 10_000,
            max_in_flight: 4_096,
            max_in_flight_per_key: 512,
            serve_threads: 0,
            unhealthy_cooldown_ms: 5_000,
            max_ejection_percent: 50,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_s: 5.0,
            max_upstream_error_bytes: 64 << 10,
            max_sse_event_bytes: 1 << 20,
            worker_token: None,
            worker_token_file: None,
            redis_url: None,
            redis_prefix: "gw:".to_owned(),
            redis_timeout_ms: 50,
            redis_lease_ms: 2_000,
            worker_ttl_ms: 3_000,
            grid_gco2_per_kwh: 400.0,
            predicted_placement: true,
        }
    }
}

/// The field names, which are also the environment variable suffixes. A
/// unit test keeps this list equal to the struct's fields.
pub const FIELDS: &[&str] = &[
    "listen",
    "database_url",
    "sqlite_path",
    "max_body_bytes",
    "privacy_memo",
    "classify_inline_bytes",
    "key_cache_ms",
    "auth_guesses_per_minute",
    "trusted_proxies",
    "settings_cache_ms",
    "poll_interval_ms",
    "poll_timeout_ms",
    "unhealthy_after",
    "upstream_connect_timeout_ms",
    "upstream_first_byte_timeout_ms",
    "upstream_idle_timeout_ms",
    "upstream_total_timeout_ms",
    "max_upstream_body_bytes",
    "ledger_queue",
    "ledger_queue_bytes",
    "ledger_batch",
    "ledger_spill_dir",
    "ledger_spill_max_bytes",
    "shutdown_grace_ms",
    "log_format",
    "header_read_timeout_ms",
    "body_read_timeout_ms",
    "max_connections",
    "max_in_flight",
    "max_in_flight_per_key",
    "serve_threads",
    "unhealthy_cooldown_ms",
    "max_ejection_percent",
    "retry_budget_ratio",
    "retry_budget_min_per_s",
    "max_upstream_error_bytes",
    "max_sse_event_bytes",
    "worker_token",
    "worker_token_file",
    "redis_url",
    "redis_prefix",
    "redis_timeout_ms",
    "redis_lease_ms",
    "worker_ttl_ms",
    "grid_gco2_per_kwh",
    "predicted_placement",
];

/// Why the configuration cannot be loaded. Messages name the file or the
/// variable, never a value (which could be a secret).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (if any), then applies `GATEWAY_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {}", path.display(), e)))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(field) = name.strip_prefix("GATEWAY_") else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if !FIELDS.contains(&field.as_str()) {
                continue;
            }
            table.insert(field, env_value(&value));
        }
        let config: Config = table.try_into().map_err(|e: toml::de::Error| {
            // The message names the field and the expected type; TOML's
            // excerpt of the input is dropped because it may hold a secret.
            ConfigError::Invalid(e.message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path` and the process environment.
    pub fn from_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(path, std::env::vars())
    }

    /// Reads the worker token from `worker_token_file` when no token is set
    /// directly. Only serving needs it, so the admin commands never read
    /// the file.
    pub fn load_worker_token(&mut self) -> Result<(), ConfigError> {
        let (None, Some(file)) = (&self.worker_token, &self.worker_token_file) else {
            return Ok(());
        };
        let token = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        let token = token.trim_end();
        if token.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{} holds no worker token",
                file.display()
            )));
        }
        self.worker_token = Some(SecretString::from(token.to_owned()));
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("key_cache_ms", self.key_cache_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("poll_timeout_ms", self.poll_timeout_ms),
            (
                "upstream_connect_timeout_ms",
                self.upstream_connect_timeout_ms,
            ),
            (
                "upstream_first_byte_timeout_ms",
                self.upstream_first_byte_timeout_ms,
            ),
            ("upstream_idle_timeout_ms", self.upstream_idle_timeout_ms),
            ("upstream_total_timeout_ms", self.upstream_total_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("unhealthy_cooldown_ms", self.unhealthy_cooldown_ms),
            ("redis_timeout_ms", self.redis_timeout_ms),
            ("worker_ttl_ms", self.worker_ttl_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be > 0")));
        }
        crate::auth::Proxies::parse(&self.trusted_proxies).map_err(ConfigError::Invalid)?;
        let sizes = [
            ("max_body_bytes", self.max_body_bytes),
            ("ledger_queue", self.ledger_queue),
            ("ledger_queue_bytes", self.ledger_queue_bytes),
            ("ledger_batch", self.ledger_batch),
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_per_key", self.max_in_flight_per_key),
            ("max_upstream_error_bytes", self.max_upstream_error_bytes),
            ("max_sse_event_bytes", self.max_sse_event_bytes),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be > 0")));
        }
        let rates = [
            ("retry_budget_ratio", self.retry_budget_ratio),
            ("retry_budget_min_per_s", self.retry_budget_min_per_s),
            ("grid_gco2_per_kwh", self.grid_gco2_per_kwh),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be a number >= 0"
            )));
        }
        if self.ledger_spill_max_bytes == 0 {
            return Err(ConfigError::Invalid(
                "ledger_spill_max_bytes must be > 0".to_owned(),
            ));
        }
        // A lease's budget hold outlives its last renewal by the longest
        // request plus a minute; a lease used for longer could admit
        // requests on a hold the reconciler already released.
        if self.redis_lease_ms > 30_000 {
            return Err(ConfigError::Invalid(
                "redis_lease_ms must be at most 30000".to_owned(),
            ));
        }
        // Each serving thread holds a runtime and upstream pools of its
        // own; beyond a core each there is nothing to gain.
        if self.serve_threads > 1024 {
            return Err(ConfigError::Invalid(
                "serve_threads must be at most 1024 (0: one per CPU)".to_owned(),
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(ConfigError::Invalid(
                "max_ejection_percent must be at most 100".to_owned(),
            ));
        }
        if self.unhealthy_after == 0 {
            return Err(ConfigError::Invalid(
                "unhealthy_after must be > 0".to_owned(),
            ));
        }
        Ok(())
    }

    #[must_use]
    pub fn body_read_timeout(&self) -> Duration {
        Config::ms(self.body_read_timeout_ms)
    }

    /// `ms` as a [`Duration`], for the `*_ms` fields.
    #[must_use]
    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// An environment value as TOML: numbers and booleans as such, anything
/// else (addresses, paths, URLs) as a string.
fn env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn field_list_matches_the_struct() {
        // Every listed name must be accepted on its own and every struct
        // field must be listed: a table with all names parses, and one with
        // an unlisted name is refused.
        let defaults = Config::default();
        let mut table = toml::Table::new();
        table.insert("listen".into(), defaults.listen.to_string().into());
        for name in FIELDS {
            let t: toml::Table = toml::from_str(&format!("{name} = 1")).unwrap();
            let err = t.try_into::<Config>().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_none_or(|e| !e.contains("unknown field")),
                "{name}: {err:?}"
            );
        }
        let debug = format!("{defaults:?}");
        let fields_in_debug = debug.matches(": ").count();
        assert_eq!(fields_in_debug, FIELDS.len(), "{debug}");
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\nkey_cache_ms = 10\n").unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("GATEWAY_KEY_CACHE_MS", "20"),
                ("GATEWAY_DATABASE_URL", "postgres://u:hunter2@h/db"),
                ("GATEWAY_BIN", "/not/config"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.key_cache_ms, 20);
        assert_eq!(
            c.database_url.as_ref().unwrap().expose_secret(),
            "postgres://u:hunter2@h/db"
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_worker_token_file_is_read_when_no_token_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-token\n").unwrap();
        let mut c = Config {
            worker_token_file: Some(file.clone()),
            ..Config::default()
        };
        c.load_worker_token().unwrap();
        assert_eq!(c.worker_token.unwrap().expose_secret(), "s3cret-token");
        std::fs::write(&file, "\n").unwrap();
        let mut empty = Config {
            worker_token_file: Some(file),
            ..Config::default()
        };
        assert!(empty.load_worker_token().is_err());
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../gateway.example.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let parsed: Config = table.try_into().unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
        for name in FIELDS {
            assert!(
                text.contains(&format!("{name} = ")),
                "{name} missing from the example"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_without_echoing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::load(None, env(&[("GATEWAY_LISTEN", "secret-ish")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret-ish"), "{err}");
        assert!(Config::load(None, env(&[("GATEWAY_POLL_INTERVAL_MS", "0")])).is_err());
        let err = Config::load(None, env(&[("GATEWAY_SERVE_THREADS", "100000")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve_threads"), "{err}");
        let ok = Config::load(None, env(&[("GATEWAY_SERVE_THREADS", "1024")])).unwrap();
        assert_eq!(ok.serve_threads, 1024);
    }
}

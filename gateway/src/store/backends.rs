//! Backends and the models each serves.

use std::collections::HashMap;

use sqlx::any::AnyRow;

use super::rows::{execute_one, flag, get, get_flag, get_u32};
use super::{new_id, now_ms, Store, StoreError};
use crate::routing::{Backend, BackendKind, Capabilities, ModelMapping, Zone};

const BACKEND_COLUMNS: &str = "id, name, kind, base_url, zone, api_key_env, price_in_per_1k, \
     price_out_per_1k, joules_per_prompt_token, joules_per_output_token, rtt_ms, prefill_tps, \
     decode_tps, max_concurrency, context_length, enabled, supports_tools, supports_json_schema";

fn backend_from_row(row: &AnyRow) -> Result<Backend, StoreError> {
    Ok(Backend {
        id: get(row, "id")?,
        name: get(row, "name")?,
        kind: BackendKind::parse(&get::<String>(row, "kind")?)
            .ok_or(StoreError::Corrupt("kind"))?,
        base_url: get(row, "base_url")?,
        zone: Zone::parse(&get::<String>(row, "zone")?).ok_or(StoreError::Corrupt("zone"))?,
        api_key_env: get(row, "api_key_env")?,
        models: Vec::new(),
        price_in_per_1k: get(row, "price_in_per_1k")?,
        price_out_per_1k: get(row, "price_out_per_1k")?,
        joules_per_prompt_token: get(row, "joules_per_prompt_token")?,
        joules_per_output_token: get(row, "joules_per_output_token")?,
        rtt_ms: get(row, "rtt_ms")?,
        prefill_tps: get(row, "prefill_tps")?,
        decode_tps: get(row, "decode_tps")?,
        max_concurrency: get_u32(row, "max_concurrency")?,
        context_length: get_u32(row, "context_length")?,
        enabled: get_flag(row, "enabled")?,
        capabilities: Capabilities {
            tools: get_flag(row, "supports_tools")?,
            json_schema: get_flag(row, "supports_json_schema")?,
        },
    })
}

/// The largest price, energy, rate or round trip a backend may declare:
/// far above any real one, low enough that costs and scores stay finite.
const MAX_FIGURE: f64 = 1e9;

/// The longest backend name, in characters.
const MAX_NAME: usize = 128;

fn validate(b: &Backend) -> Result<(), StoreError> {
    if b.name.trim().is_empty() {
        return Err(StoreError::Invalid("backend name is empty"));
    }
    if !is_plain_name(&b.name) {
        return Err(StoreError::Invalid(
            "backend names are at most 128 characters, without control or invisible characters",
        ));
    }
    if b.models.is_empty() {
        return Err(StoreError::Invalid(
            "a backend must serve at least one model",
        ));
    }
    if b.models
        .iter()
        .any(|m| !is_plain_name(&m.public) || !is_plain_name(&m.upstream) || m.public.is_empty())
    {
        return Err(StoreError::Invalid(
            "model names are at most 128 characters, without control or invisible characters",
        ));
    }
    if !is_upstream_url(&b.base_url) {
        return Err(StoreError::Invalid(
            "a backend URL is http(s)://host[:port][/path], without credentials, query or fragment",
        ));
    }
    let numbers = [
        b.price_in_per_1k,
        b.price_out_per_1k,
        b.joules_per_prompt_token,
        b.joules_per_output_token,
        b.rtt_ms,
        b.prefill_tps,
        b.decode_tps,
    ];
    if numbers.iter().any(|n| !(0.0..=MAX_FIGURE).contains(n)) {
        return Err(StoreError::Invalid(
            "prices, energies, rates and RTT must be between 0 and 1e9",
        ));
    }
    // An env var *name*, never a key, and only one that names a cloud key:
    // whoever holds an admin token must not get the gateway to send any
    // other variable (PATH, a database password, the worker token) to a
    // URL of their choosing as a bearer key.
    if let Some(var) = b.api_key_env.as_deref() {
        let shaped = !var.is_empty()
            && var
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        let named = var.ends_with("_API_KEY") || var.ends_with("_CLOUD_KEY");
        if !shaped || !named || var.starts_with("GATEWAY_") {
            return Err(StoreError::Invalid(
                "api_key_env must name a variable ending in _API_KEY or _CLOUD_KEY, such as \
                 OPENAI_API_KEY, and not one of the gateway's own GATEWAY_* variables",
            ));
        }
    }
    Ok(())
}

/// At most [`MAX_NAME`] characters, none of them control or invisible
/// (format) characters.
pub(super) fn is_plain_name(name: &str) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    name.chars().count() <= MAX_NAME
        && !name
            .chars()
            .any(|c| c.is_control() || c.general_category() == GeneralCategory::Format)
}

/// An http(s) URL with a host and nothing that could carry a credential or
/// change between requests: no user or password, query or fragment.
fn is_upstream_url(url: &str) -> bool {
    // The parser drops tabs and line breaks; the stored text would keep them.
    !url.chars().any(char::is_control)
        && url::Url::parse(url).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none()
        })
}

impl Store {
    /// Stores a backend and its models under a fresh id (`spec.id` is
    /// ignored) and returns it as stored.
    pub async fn add_backend(&self, spec: &Backend) -> Result<Backend, StoreError> {
        validate(spec)?;
        let backend = Backend {
            id: new_id(),
            ..spec.clone()
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StoreError::from_sqlx(e, "backend"))?;
        sqlx::query(
            "INSERT INTO backends (id, name, kind, base_url, zone, api_key_env, price_in_per_1k, \
             price_out_per_1k, joules_per_prompt_token, joules_per_output_token, rtt_ms, prefill_tps, \
             decode_tps, max_concurrency, context_length, enabled, created_at, supports_tools, \
             supports_json_schema) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19)",
        )
        .bind(&backend.id)
        .bind(&backend.name)
        .bind(backend.kind.as_str())
        .bind(&backend.base_url)
        .bind(backend.zone.as_str())
        .bind(backend.api_key_env.as_deref())
        .bind(backend.price_in_per_1k)
        .bind(backend.price_out_per_1k)
        .bind(backend.joules_per_prompt_token)
        .bind(backend.joules_per_output_token)
        .bind(backend.rtt_ms)
        .bind(backend.prefill_tps)
        .bind(backend.decode_tps)
        .bind(i64::from(backend.max_concurrency))
        .bind(i64::from(backend.context_length))
        .bind(flag(backend.enabled))
        .bind(now_ms())
        .bind(flag(backend.capabilities.tools))
        .bind(flag(backend.capabilities.json_schema))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "backend"))?;
        for (position, m) in (0_i64..).zip(&backend.models) {
            sqlx::query(
                "INSERT INTO backend_models (backend_id, public_model, upstream_model, position) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&backend.id)
            .bind(&m.public)
            .bind(&m.upstream)
            .bind(position)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "backend model"))?;
        }
        tx.commit()
            .await
            .map_err(|e| StoreError::from_sqlx(e, "backend"))?;
        Ok(backend)
    }

    /// Removes a backend (and its model rows) by name.
    pub async fn remove_backend(&self, name: &str) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM backends WHERE name = $1").bind(name);
        execute_one(&self.pool, query, "backend").await
    }

    pub async fn set_backend_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let query = sqlx::query("UPDATE backends SET enabled = $1 WHERE name = $2")
            .bind(flag(enabled))
            .bind(name);
        execute_one(&self.pool, query, "backend").await
    }

    /// All backends with their models, ordered by name (the routing
    /// tie-break order), enabled or not.
    pub async fn list_backends(&self) -> Result<Vec<Backend>, StoreError> {
        let sql = format!("SELECT {BACKEND_COLUMNS} FROM backends ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "backend"))?;
        let mut backends: Vec<Backend> = rows
            .iter()
            .map(backend_from_row)
            .collect::<Result<_, _>>()?;
        let model_rows = sqlx::query(
            "SELECT backend_id, public_model, upstream_model FROM backend_models ORDER BY backend_id, position",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "backend model"))?;
        let mut models: HashMap<String, Vec<ModelMapping>> = HashMap::new();
        for row in &model_rows {
            models
                .entry(get(row, "backend_id")?)
                .or_default()
                .push(ModelMapping {
                    public: get(row, "public_model")?,
                    upstream: get(row, "upstream_model")?,
                });
        }
        for b in &mut backends {
            b.models = models.remove(&b.id).unwrap_or_default();
        }
        Ok(backends)
    }
}

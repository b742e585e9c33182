//! Tenants and their API keys.

use secrecy::SecretString;
use serde::Serialize;
use sqlx::any::AnyRow;

use super::rows::{execute_one, get, get_class, get_json, get_opt_u32, to_json, BindExt};
use super::{new_id, now_ms, Store, StoreError};
use crate::keys;
use crate::limits::KeyLimits;
use crate::privacy::Class;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A stored key. Deliberately has no hash field: nothing that lists or
/// shows keys can leak one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    /// `gw-` plus a few characters, to tell keys apart in listings.
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub default_class: Class,
    pub requests_per_min: Option<u32>,
    pub tokens_per_min: Option<u32>,
    pub budget_usd: Option<f64>,
    pub spent_usd: f64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

impl ApiKey {
    /// Usable at `now_ms`: not revoked and not expired.
    #[must_use]
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now_ms < e)
    }

    /// The limits the rate limiter enforces for this key.
    #[must_use]
    pub fn limits(&self) -> KeyLimits {
        KeyLimits {
            key_id: self.id.clone(),
            requests_per_min: self.requests_per_min,
            tokens_per_min: self.tokens_per_min,
        }
    }
}

/// What to create a key with.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKeySpec {
    pub tenant_id: String,
    pub default_class: Class,
    pub scopes: Vec<String>,
    pub requests_per_min: Option<u32>,
    pub tokens_per_min: Option<u32>,
    pub budget_usd: Option<f64>,
    pub expires_at: Option<i64>,
}

/// A newly created key: the plaintext exists only here, to be shown once.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub plaintext: SecretString,
}

pub(super) const KEY_COLUMNS: &str =
    "id, tenant_id, display_prefix, scopes, default_class, requests_per_min, \
     tokens_per_min, budget_usd, spent_usd, expires_at, revoked_at, created_at";

pub(super) fn key_from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        display_prefix: get(row, "display_prefix")?,
        scopes: get_json(row, "scopes")?,
        default_class: get_class(row, "default_class")?,
        requests_per_min: get_opt_u32(row, "requests_per_min")?,
        tokens_per_min: get_opt_u32(row, "tokens_per_min")?,
        budget_usd: get(row, "budget_usd")?,
        spent_usd: get(row, "spent_usd")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
        created_at: get(row, "created_at")?,
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: get(row, "id")?,
        name: get(row, "name")?,
        created_at: get(row, "created_at")?,
    })
}

/// The scopes a key may hold: the endpoints that check one.
const SCOPES: &[&str] = &["chat", "models"];

/// A requests or tokens per minute limit of 0 would read as "none" to the
/// limiter (unlimited), the opposite of what setting it means: refused.
pub(super) fn check_limits(rpm: Option<u32>, tpm: Option<u32>) -> Result<(), StoreError> {
    if rpm == Some(0) || tpm == Some(0) {
        return Err(StoreError::Invalid(
            "rpm and tpm must be at least 1; leave them out for no limit",
        ));
    }
    Ok(())
}

impl Store {
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        if name.trim().is_empty() {
            return Err(StoreError::Invalid("tenant name is empty"));
        }
        if !super::backends::is_plain_name(name) {
            return Err(StoreError::Invalid(
                "tenant names are at most 128 characters, without control or invisible characters",
            ));
        }
        // Tenants are looked up by name or id: a name shaped like an id
        // could stand for another tenant.
        if uuid::Uuid::try_parse(name).is_ok() {
            return Err(StoreError::Invalid(
                "a tenant name cannot be shaped like a tenant id",
            ));
        }
        let tenant = Tenant {
            id: new_id(),
            name: name.to_owned(),
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "tenant"))?;
        Ok(tenant)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "tenant"))?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Looks a tenant up by id, else by name (a name stored before names
    /// shaped like ids were refused cannot shadow an id).
    pub async fn find_tenant(&self, name_or_id: &str) -> Result<Option<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants WHERE id = $1 OR name = $1 \
             ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "tenant"))?;
        rows.as_ref().map(tenant_from_row).transpose()
    }

    /// Creates a key and returns its plaintext once; only the hash is stored.
    pub async fn create_key(&self, spec: &NewKeySpec) -> Result<CreatedKey, StoreError> {
        if spec.budget_usd.is_some_and(|b| !b.is_finite() || b < 0.0) {
            return Err(StoreError::Invalid("budget must be a non-negative number"));
        }
        check_limits(spec.requests_per_min, spec.tokens_per_min)?;
        if spec.scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
            return Err(StoreError::Invalid("a key's scopes are chat and models"));
        }
        let generated = keys::generate();
        let key = ApiKey {
            id: new_id(),
            tenant_id: spec.tenant_id.clone(),
            display_prefix: generated.display_prefix.clone(),
            scopes: spec.scopes.clone(),
            default_class: spec.default_class,
            requests_per_min: spec.requests_per_min,
            tokens_per_min: spec.tokens_per_min,
            budget_usd: spec.budget_usd,
            spent_usd: 0.0,
            expires_at: spec.expires_at,
            revoked_at: None,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, key_hash, display_prefix, scopes, default_class, \
             requests_per_min, tokens_per_min, budget_usd, spent_usd, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&key.id)
        .bind(&key.tenant_id)
        .bind(&generated.hash)
        .bind(&key.display_prefix)
        .bind(to_json(&key.scopes))
        .bind(key.default_class.as_str())
        .bind(key.requests_per_min.map(i64::from))
        .bind(key.tokens_per_min.map(i64::from))
        .bind_opt_f64(key.budget_usd)
        .bind(key.spent_usd)
        .bind(key.expires_at)
        .bind(key.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "key"))?;
        Ok(CreatedKey {
            key,
            plaintext: generated.plaintext,
        })
    }

    /// Marks a key revoked. Revoking twice keeps the first revocation time.
    pub async fn revoke_key(&self, id: &str) -> Result<(), StoreError> {
        let query =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now_ms())
                .bind(id);
        execute_one(&self.pool, query, "key").await
    }

    /// Keys of one tenant, or of all tenants, oldest first.
    pub async fn list_keys(&self, tenant_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE $1 IS NULL OR tenant_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "key"))?;
        rows.iter().map(key_from_row).collect()
    }

    /// The key whose SHA-256 is `hash` (see [`keys::hash`]), revoked or not:
    /// the caller checks [`ApiKey::is_active`].
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Adds `usd` to the key's spend in one statement, so concurrent requests
    /// on other gateways cannot lose an update; returns the new total.
    pub async fn add_spend(&self, key_id: &str, usd: f64) -> Result<f64, StoreError> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(StoreError::Invalid("spend must be a non-negative number"));
        }
        let row = sqlx::query(
            "UPDATE api_keys SET spent_usd = spent_usd + $1 WHERE id = $2 RETURNING spent_usd",
        )
        .bind(usd)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "key"))?;
        let row = row.ok_or(StoreError::NotFound("key"))?;
        get(&row, "spent_usd")
    }
}

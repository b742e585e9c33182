//! The operators' side of the store: admin tokens, dashboard sessions, and
//! key changes that only an operator makes (limits and budgets).

use secrecy::SecretString;
use serde::Serialize;
use sqlx::any::AnyRow;

use super::rows::{execute_one, get, BindExt};
use super::tenants::{key_from_row, KEY_COLUMNS};
use super::{new_id, now_ms, ApiKey, Store, StoreError};
use crate::keys;

/// A stored admin token. Like [`ApiKey`], it has no hash field, so nothing
/// that lists tokens can leak one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    /// `gwadmin-` plus a few characters, to tell tokens apart.
    pub display_prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A new admin token: the plaintext exists only here, to be shown once.
#[derive(Debug)]
pub struct CreatedAdminToken {
    pub token: AdminToken,
    pub plaintext: SecretString,
}

/// A live dashboard session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    /// The admin token the session was opened with.
    pub token_id: String,
    /// The token every state-changing form of this session must carry.
    pub csrf: String,
    pub expires_at: i64,
}

/// A new session: the cookie value exists only here (the store keeps its
/// hash), the CSRF token is stored as it is.
#[derive(Debug)]
pub struct CreatedSession {
    pub cookie: SecretString,
    pub csrf: String,
    pub expires_at: i64,
}

/// A change to a key's limits. `None` keeps a field; `Some(None)` removes
/// the limit (unlimited); `Some(Some(v))` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyLimitsUpdate {
    pub requests_per_min: Option<Option<u32>>,
    pub tokens_per_min: Option<Option<u32>>,
    pub budget_usd: Option<Option<f64>>,
}

fn token_from_row(row: &AnyRow) -> Result<AdminToken, StoreError> {
    Ok(AdminToken {
        id: get(row, "id")?,
        name: get(row, "name")?,
        display_prefix: get(row, "display_prefix")?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

const TOKEN_COLUMNS: &str = "id, name, display_prefix, created_at, revoked_at";

impl Store {
    /// Creates an admin token and returns its plaintext once.
    pub async fn create_admin_token(&self, name: &str) -> Result<CreatedAdminToken, StoreError> {
        if name.trim().is_empty() {
            return Err(StoreError::Invalid("admin token name is empty"));
        }
        let generated = keys::generate_admin_token();
        let token = AdminToken {
            id: new_id(),
            name: name.to_owned(),
            display_prefix: generated.display_prefix.clone(),
            created_at: now_ms(),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, token_hash, display_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&generated.hash)
        .bind(&token.display_prefix)
        .bind(token.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "admin token"))?;
        Ok(CreatedAdminToken {
            token,
            plaintext: generated.plaintext,
        })
    }

    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "admin token"))?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token and ends its dashboard sessions.
    pub async fn revoke_admin_token(&self, id: &str) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
        )
        .bind(now_ms())
        .bind(id);
        execute_one(&self.pool, query, "admin token").await?;
        sqlx::query("DELETE FROM admin_sessions WHERE token_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "admin session"))?;
        Ok(())
    }

    /// The unrevoked admin token whose SHA-256 is `hash`.
    pub async fn active_admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "admin token"))?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Opens a dashboard session for `token_id` lasting `ttl_ms`, and
    /// deletes expired ones on the way.
    pub async fn create_admin_session(
        &self,
        token_id: &str,
        ttl_ms: i64,
    ) -> Result<CreatedSession, StoreError> {
        let now = now_ms();
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "admin session"))?;
        let cookie = keys::generate();
        let csrf = keys::generate();
        let created = CreatedSession {
            // The CSRF token is not a credential on its own; it is stored
            // as it is so every page of the session can embed it.
            csrf: csrf.hash,
            expires_at: now.saturating_add(ttl_ms),
            cookie: cookie.plaintext,
        };
        sqlx::query(
            "INSERT INTO admin_sessions (id_hash, token_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&cookie.hash)
        .bind(token_id)
        .bind(&created.csrf)
        .bind(now)
        .bind(created.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "admin session"))?;
        Ok(created)
    }

    /// The unexpired session whose cookie hashes to `id_hash`, opened with
    /// a token that is still valid.
    pub async fn admin_session(&self, id_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        let row = sqlx::query(
            "SELECT s.token_id, s.csrf, s.expires_at FROM admin_sessions s \
             JOIN admin_tokens t ON t.id = s.token_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "admin session"))?;
        row.map(|row| {
            Ok(AdminSession {
                token_id: get(&row, "token_id")?,
                csrf: get(&row, "csrf")?,
                expires_at: get(&row, "expires_at")?,
            })
        })
        .transpose()
    }

    /// Ends a session (log out); ending one that is gone is not an error.
    pub async fn delete_admin_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "admin session"))?;
        Ok(())
    }

    /// One key by id, revoked or not.
    pub async fn key_by_id(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Changes a key's requests/min, tokens/min and budget; returns the key
    /// as stored afterwards.
    pub async fn update_key_limits(
        &self,
        id: &str,
        update: KeyLimitsUpdate,
    ) -> Result<ApiKey, StoreError> {
        if let Some(Some(b)) = update.budget_usd {
            if !b.is_finite() || b < 0.0 {
                return Err(StoreError::Invalid("budget must be a non-negative number"));
            }
        }
        super::tenants::check_limits(
            update.requests_per_min.flatten(),
            update.tokens_per_min.flatten(),
        )?;
        let mut key = self
            .key_by_id(id)
            .await?
            .ok_or(StoreError::NotFound("key"))?;
        if let Some(v) = update.requests_per_min {
            key.requests_per_min = v;
        }
        if let Some(v) = update.tokens_per_min {
            key.tokens_per_min = v;
        }
        if let Some(v) = update.budget_usd {
            key.budget_usd = v;
        }
        let query = sqlx::query(
            "UPDATE api_keys SET requests_per_min = $1, tokens_per_min = $2, budget_usd = $3 \
             WHERE id = $4",
        )
        .bind(key.requests_per_min.map(i64::from))
        .bind(key.tokens_per_min.map(i64::from))
        .bind_opt_f64(key.budget_usd)
        .bind(id);
        execute_one(&self.pool, query, "key").await?;
        Ok(key)
    }
}

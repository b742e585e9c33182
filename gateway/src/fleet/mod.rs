//! What the gateways of a fleet share beyond the database: the registry of
//! edge workers that registered themselves ([`registry`]), backend health
//! ([`health`]), and admin changes pushed from the database ([`changes`]).
//!
//! With `redis_url` set, the registry and health live in Redis under
//! `redis_prefix`, so every gateway sees the same workers and one gateway's
//! discovery of a failing backend protects the others. Without it a single
//! gateway keeps both in process, as before. Every Redis call goes through
//! [`Redis`], which bounds it by `redis_timeout_ms`: a slow or absent Redis
//! costs each call at most that long, the call counts as failed, and the
//! gateway carries on with its local view. No request waits on Redis.

pub mod changes;
pub mod health;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};
use secrecy::ExposeSecret;

use crate::config::Config;

/// A Redis connection with this fleet's key prefix and a deadline on every
/// call. Cheap to clone; clones share one multiplexed connection.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

/// Why a Redis call produced nothing. Never carries the URL (which may hold
/// a password).
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("redis call timed out")]
    Timeout,
    #[error("redis call failed: {0}")]
    Failed(String),
}

impl From<RedisError> for RedisCallError {
    fn from(e: RedisError) -> Self {
        // The kind and server message only; RedisError's Display can hold
        // the address it tried.
        RedisCallError::Failed(format!("{:?}", e.kind()))
    }
}

impl Redis {
    /// A connection that is made on first use and remade after a failure,
    /// so a gateway starts (and serves) while Redis is down. `None` when no
    /// `redis_url` is configured.
    pub fn from_config(config: &Config) -> Result<Option<Redis>, RedisCallError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let timeout = Config::ms(config.redis_timeout_ms);
        let client = redis::Client::open(url.expose_secret())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)?;
        Ok(Some(Redis {
            conn,
            prefix: Arc::from(config.redis_prefix.as_str()),
            timeout,
        }))
    }

    /// `prefix` + `name`: every key this gateway touches.
    #[must_use]
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one command (or pipeline, or script invocation) within the
    /// deadline. Failures are counted in `gateway_redis_errors_total`.
    pub async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, RedisCallError>
    where
        T: FromRedisValue,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let result = match tokio::time::timeout(self.timeout, call(self.conn.clone())).await {
            Err(_) => Err(RedisCallError::Timeout),
            Ok(r) => r.map_err(RedisCallError::from),
        };
        if let Err(e) = &result {
            metrics::counter!("gateway_redis_errors_total", "op" => op).increment(1);
            tracing::debug!(op, error = %e, "redis call failed");
        }
        result
    }
}

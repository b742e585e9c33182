//! Sums of the ledger's all-cloud counterfactual columns, for the savings
//! report (`gateway report`): per tenant and period, what the requests
//! cost and what the same requests would have cost had every request gone
//! to the cloud.

use serde::Serialize;

use super::rows::get;
use super::{Store, StoreError};

/// One tenant's rows with a counterfactual in one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SavingsBucket {
    pub tenant_id: String,
    /// Start of the period, ms since the Unix epoch (UTC).
    pub start_ms: i64,
    pub requests: u64,
    pub usd: f64,
    pub joules: f64,
    pub latency_ms: f64,
    pub allcloud_usd: f64,
    pub allcloud_joules: f64,
    pub allcloud_latency_ms: f64,
}

impl Store {
    /// Rows created at or after `since_ms` that carry an all-cloud
    /// counterfactual, summed per tenant and per `period_ms` (aligned to the
    /// epoch), oldest period first; optionally one tenant's only.
    pub async fn savings(
        &self,
        tenant_id: Option<&str>,
        since_ms: i64,
        period_ms: i64,
    ) -> Result<Vec<SavingsBucket>, StoreError> {
        // `0.0`, not `0`: SQLite sums integers to an integer.
        let sql = "SELECT tenant_id, (created_at / $1) * $1 AS start_ms, COUNT(*) AS requests, \
             SUM(COALESCE(usd, 0.0)) AS usd, SUM(COALESCE(joules, 0.0)) AS joules, \
             SUM(COALESCE(latency_ms, 0.0)) AS latency_ms, \
             SUM(COALESCE(allcloud_usd, 0.0)) AS allcloud_usd, \
             SUM(COALESCE(allcloud_joules, 0.0)) AS allcloud_joules, \
             SUM(COALESCE(allcloud_latency_ms, 0.0)) AS allcloud_latency_ms \
             FROM request_ledger \
             WHERE allcloud_usd IS NOT NULL AND created_at >= $2 AND ($3 IS NULL OR tenant_id = $3) \
             GROUP BY tenant_id, start_ms ORDER BY start_ms, tenant_id";
        let rows = sqlx::query(sql)
            .bind(period_ms.max(1))
            .bind(since_ms)
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        rows.iter()
            .map(|row| {
                Ok(SavingsBucket {
                    tenant_id: get(row, "tenant_id")?,
                    start_ms: get(row, "start_ms")?,
                    requests: u64::try_from(get::<i64>(row, "requests")?)
                        .map_err(|_| StoreError::Corrupt("requests"))?,
                    usd: get(row, "usd")?,
                    joules: get(row, "joules")?,
                    latency_ms: get(row, "latency_ms")?,
                    allcloud_usd: get(row, "allcloud_usd")?,
                    allcloud_joules: get(row, "allcloud_joules")?,
                    allcloud_latency_ms: get(row, "allcloud_latency_ms")?,
                })
            })
            .collect()
    }
}

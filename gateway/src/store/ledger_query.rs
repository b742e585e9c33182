//! Reading the ledger for operators: filtered rows, totals, and totals
//! over time by zone (the admin API and the dashboard).
//!
//! A row's zone is that of its backend: self-registered workers
//! (`worker:…`) are on-prem, stored backends have theirs, and a row whose
//! backend has since been removed counts as `unknown`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ledger::{entry_from_row, LEDGER_COLUMNS};
use super::rows::get;
use super::{LedgerEntry, Store, StoreError};

/// Most rows one query returns.
pub const MAX_LEDGER_ROWS: u32 = 1000;

/// Which rows to read; every field narrows, `None` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerFilter {
    pub tenant_id: Option<String>,
    pub backend: Option<String>,
    pub class: Option<String>,
    pub status: Option<String>,
    /// Rows created at or after (unix ms).
    pub since: Option<i64>,
    /// Rows created before (unix ms); also the cursor for older pages.
    pub until: Option<i64>,
}

/// Requests, tokens, energy and money of a set of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub joules: f64,
    pub usd: f64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.joules += other.joules;
        self.usd += other.usd;
    }
}

/// Totals of the filtered rows, overall, per zone and per status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerTotals {
    #[serde(flatten)]
    pub all: Totals,
    /// `on_prem`, `cloud`, `none` (never routed) or `unknown` (backend
    /// removed since).
    pub by_zone: BTreeMap<String, Totals>,
    pub by_status: BTreeMap<String, u64>,
}

/// One time bucket of [`Store::ledger_series`], per zone.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Start of the bucket (unix ms).
    pub at: i64,
    pub by_zone: BTreeMap<String, Totals>,
}

const WHERE: &str = "($1 IS NULL OR l.tenant_id = $1) AND ($2 IS NULL OR l.backend = $2) \
     AND ($3 IS NULL OR l.privacy_class = $3) AND ($4 IS NULL OR l.status = $4) \
     AND l.created_at >= $5 AND l.created_at < $6";

const ZONE: &str = "CASE WHEN l.backend IS NULL THEN 'none' \
     WHEN l.backend LIKE 'worker:%' THEN 'on_prem' \
     ELSE COALESCE(b.zone, 'unknown') END";

// SUM over BIGINT is NUMERIC on Postgres, which the `Any` driver cannot
// decode: the casts keep every dialect on BIGINT and DOUBLE.
const SUMS: &str = "COUNT(*) AS n, \
     CAST(COALESCE(SUM(l.prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
     CAST(COALESCE(SUM(l.completion_tokens), 0) AS BIGINT) AS completion_tokens, \
     CAST(COALESCE(SUM(l.joules), 0) AS DOUBLE PRECISION) AS joules, \
     CAST(COALESCE(SUM(l.usd), 0) AS DOUBLE PRECISION) AS usd";

fn totals_from_row(row: &sqlx::any::AnyRow) -> Result<Totals, StoreError> {
    let count = |col| {
        get::<i64>(row, col).and_then(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(col)))
    };
    Ok(Totals {
        requests: count("n")?,
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens")?,
        joules: get(row, "joules")?,
        usd: get(row, "usd")?,
    })
}

/// Binds a filter's six parameters, `$1`…`$6` of [`WHERE`].
macro_rules! bind_filter {
    ($query:expr, $f:expr) => {
        $query
            .bind($f.tenant_id.as_deref())
            .bind($f.backend.as_deref())
            .bind($f.class.as_deref())
            .bind($f.status.as_deref())
            .bind($f.since.unwrap_or(0))
            .bind($f.until.unwrap_or(i64::MAX))
    };
}

impl Store {
    /// The newest `limit` rows (at most [`MAX_LEDGER_ROWS`]) that match,
    /// newest first.
    pub async fn query_ledger(
        &self,
        filter: &LedgerFilter,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.select_rows(filter, limit.min(MAX_LEDGER_ROWS)).await
    }

    async fn select_rows(
        &self,
        filter: &LedgerFilter,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let columns: Vec<String> = LEDGER_COLUMNS
            .split(',')
            .map(|c| format!("l.{}", c.trim()))
            .collect();
        let sql = format!(
            "SELECT {} FROM request_ledger l WHERE {WHERE} \
             ORDER BY l.created_at DESC, l.id DESC LIMIT $7",
            columns.join(", ")
        );
        let rows = bind_filter!(sqlx::query(&sql), filter)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Totals of the rows that match.
    pub async fn ledger_totals(&self, filter: &LedgerFilter) -> Result<LedgerTotals, StoreError> {
        let sql = format!(
            "SELECT {ZONE} AS zone, l.status AS status, {SUMS} \
             FROM request_ledger l LEFT JOIN backends b ON b.name = l.backend \
             WHERE {WHERE} GROUP BY 1, 2"
        );
        let rows = bind_filter!(sqlx::query(&sql), filter)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        let mut totals = LedgerTotals::default();
        for row in &rows {
            let part = totals_from_row(row)?;
            let zone: String = get(row, "zone")?;
            let status: String = get(row, "status")?;
            totals.all.add(&part);
            totals.by_zone.entry(zone).or_default().add(&part);
            *totals.by_status.entry(status).or_default() += part.requests;
        }
        Ok(totals)
    }

    /// Totals per zone in buckets of `bucket_ms`, oldest first; buckets
    /// without rows are left out.
    pub async fn ledger_series(
        &self,
        filter: &LedgerFilter,
        bucket_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        if bucket_ms <= 0 {
            return Err(StoreError::Invalid("bucket must be > 0 ms"));
        }
        let sql = format!(
            "SELECT (l.created_at / $7) * $7 AS at, {ZONE} AS zone, {SUMS} \
             FROM request_ledger l LEFT JOIN backends b ON b.name = l.backend \
             WHERE {WHERE} GROUP BY 1, 2 ORDER BY 1"
        );
        let rows = bind_filter!(sqlx::query(&sql), filter)
            .bind(bucket_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        let mut points: Vec<SeriesPoint> = Vec::new();
        for row in &rows {
            let at: i64 = get(row, "at")?;
            let zone: String = get(row, "zone")?;
            let part = totals_from_row(row)?;
            if points.last().is_none_or(|p| p.at != at) {
                points.push(SeriesPoint {
                    at,
                    by_zone: BTreeMap::new(),
                });
            }
            if let Some(p) = points.last_mut() {
                p.by_zone.entry(zone).or_default().add(&part);
            }
        }
        Ok(points)
    }
}

/// Most rows [`Store::ledger_window`] reads.
pub const MAX_WINDOW_ROWS: u32 = 10_000;

impl Store {
    /// The rows created since `since` (unix ms), newest first, at most
    /// `limit` (capped at [`MAX_WINDOW_ROWS`]): what per-row figures such
    /// as the all-cloud counterfactual are summed from.
    pub async fn ledger_window(
        &self,
        since: i64,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let filter = LedgerFilter {
            tenant_id: tenant_id.map(str::to_owned),
            since: Some(since),
            ..LedgerFilter::default()
        };
        self.select_rows(&filter, limit.min(MAX_WINDOW_ROWS)).await
    }
}

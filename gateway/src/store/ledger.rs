//! The request ledger: one row per admitted request, whatever its outcome.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::any::AnyRow;

use super::rows::{flag, get, get_class, get_flag, get_json, get_opt_u32, AnyQuery, BindExt};
use super::{Store, StoreError};
use crate::privacy::Class;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    Ok,
    /// Failed before any byte reached the client.
    Error,
    /// The client went away; tokens used so far are recorded.
    Cancelled,
    /// The upstream failed mid-stream, after bytes reached the client.
    Partial,
    /// Refused at admission (limits, budget, no route).
    Rejected,
}

impl LedgerStatus {
    pub const ALL: [LedgerStatus; 5] = [
        LedgerStatus::Ok,
        LedgerStatus::Error,
        LedgerStatus::Cancelled,
        LedgerStatus::Partial,
        LedgerStatus::Rejected,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerStatus::Ok => "ok",
            LedgerStatus::Error => "error",
            LedgerStatus::Cancelled => "cancelled",
            LedgerStatus::Partial => "partial",
            LedgerStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A routing decision (or why there was none) as JSON text: serialised
/// once, when the request is routed, and stored as it is. Building a JSON
/// tree for every request and writing it out again at insert cost about 9%
/// of the gateway's CPU under load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DecisionJson(Box<RawValue>);

impl DecisionJson {
    /// `value` as JSON text; `None` if it cannot be serialised (a map with
    /// keys that are not strings).
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Option<DecisionJson> {
        serde_json::value::to_raw_value(value)
            .ok()
            .map(DecisionJson)
    }

    /// Stored text, checked to be JSON.
    pub fn from_text(text: String) -> Result<DecisionJson, serde_json::Error> {
        RawValue::from_string(text).map(DecisionJson)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The decision as a JSON tree, to read fields from.
    #[must_use]
    pub fn value(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.as_str()).ok()
    }

    /// Adds `value` under `key` to the decision's top-level object (where
    /// the key is already there, replaces it).
    pub fn insert(&mut self, key: &str, value: serde_json::Value) {
        if let Some(serde_json::Value::Object(mut map)) = self.value() {
            map.insert(key.to_owned(), value);
            if let Some(d) = DecisionJson::new(&map) {
                *self = d;
            }
        }
    }
}

impl PartialEq for DecisionJson {
    fn eq(&self, other: &DecisionJson) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One ledger row. Optional fields are unknown for requests that ended
/// before the step that produces them (no route, no upstream answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The request id. Must be unique: the HTTP layer should use its own
    /// generated id here, not a client-supplied one verbatim.
    pub id: String,
    pub tenant_id: String,
    pub key_id: String,
    pub requested_model: String,
    pub resolved_model: Option<String>,
    pub backend: Option<String>,
    pub route_reason: Option<String>,
    pub privacy_class: Class,
    /// Names of the privacy detectors that fired, never matched text.
    pub detectors: Vec<String>,
    pub predicted_latency_ms: Option<f64>,
    pub predicted_energy_j: Option<f64>,
    pub predicted_cost_usd: Option<f64>,
    pub latency_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// The token counts (and the cost and energy derived from them) are
    /// the gateway's estimates, not the upstream's report: the answer ended
    /// (cancelled, broken off) before its usage arrived. The prompt count is
    /// the request's size estimate, the completion count the content chunks
    /// relayed.
    #[serde(default)]
    pub usage_estimated: bool,
    pub joules: Option<f64>,
    pub usd: Option<f64>,
    pub status: LedgerStatus,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub stream: bool,
    /// The routing decision (`routing::Decision`) as JSON text:
    /// candidates, predictions, scores and exclusions, to explain the
    /// choice later. Serialised once, when the decision is made, and stored
    /// as it is ([`LedgerEntry::decision_value`] parses it).
    pub decision: Option<DecisionJson>,
    pub created_at: i64,
    /// Predicted and actual queue wait, and the all-cloud counterfactual.
    #[serde(default)]
    pub placement: Placement,
}

/// What placement predicted and what the same request would have cost in
/// the cloud. Stored as columns of their own (`predicted_wait_ms`,
/// `actual_wait_ms`, `allcloud_*`) so savings are plain sums over the
/// ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Queue wait for a running slot that routing predicted on the backend
    /// that served (ms); 0 for a cloud backend.
    pub predicted_wait_ms: Option<f64>,
    /// The wait the edge worker measured for this request (ms, its
    /// `x-queue-ms` header); `None` for cloud backends and for requests
    /// that never got a slot.
    pub actual_wait_ms: Option<f64>,
    /// The cloud backend the request would have gone to in an all-cloud
    /// deployment (privacy aside); `None` when no cloud backend serves the
    /// model.
    pub allcloud_backend: Option<String>,
    /// Predicted end-to-end latency of the request there (ms), unloaded.
    pub allcloud_latency_ms: Option<f64>,
    /// Energy of the request there (J): its tokens at the cloud backend's
    /// configured joules per token.
    pub allcloud_joules: Option<f64>,
    /// Cost of the request there (USD): its tokens at the cloud's prices.
    pub allcloud_usd: Option<f64>,
}

impl LedgerEntry {
    /// A row of a request just admitted: who asked for what, and when;
    /// nothing else known yet.
    #[must_use]
    pub fn new(
        id: String,
        tenant_id: String,
        key_id: String,
        requested_model: String,
        stream: bool,
        created_at: i64,
    ) -> LedgerEntry {
        LedgerEntry {
            id,
            tenant_id,
            key_id,
            requested_model,
            resolved_model: None,
            backend: None,
            route_reason: None,
            privacy_class: Class::Public,
            detectors: Vec::new(),
            predicted_latency_ms: None,
            predicted_energy_j: None,
            predicted_cost_usd: None,
            latency_ms: None,
            ttft_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            usage_estimated: false,
            joules: None,
            usd: None,
            status: LedgerStatus::Cancelled,
            http_status: None,
            error_code: None,
            stream,
            decision: None,
            created_at,
            placement: Placement::default(),
        }
    }

    /// Replaces NUL characters, which Postgres text and JSON columns cannot
    /// hold, in every text field. Client text reaches some of them (the
    /// requested model, inside the decision), and a row must never fail
    /// to store because of what a client sent.
    pub fn scrub_nul(&mut self) {
        fn clean(s: &mut String) {
            if s.contains('\0') {
                *s = s.replace('\0', "\u{fffd}");
            }
        }
        for s in [
            &mut self.id,
            &mut self.tenant_id,
            &mut self.key_id,
            &mut self.requested_model,
        ] {
            clean(s);
        }
        for s in [
            &mut self.resolved_model,
            &mut self.backend,
            &mut self.route_reason,
            &mut self.error_code,
            &mut self.placement.allcloud_backend,
        ]
        .into_iter()
        .flatten()
        {
            clean(s);
        }
        self.detectors.iter_mut().for_each(clean);
        // serde_json writes NUL as `\u0000`, which Postgres refuses in a
        // JSON text too. The text is only parsed when it may hold one.
        if let Some(d) = &mut self.decision {
            if d.as_str().contains("\\u0000") {
                if let Some(mut v) = d.value() {
                    scrub_json(&mut v);
                    if let Some(scrubbed) = DecisionJson::new(&v) {
                        *d = scrubbed;
                    }
                }
            }
        }
    }

    /// The row with every free-form field replaced by a placeholder: what
    /// is stored when the row as it is keeps failing for a reason a retry
    /// cannot fix. Ids, status, numbers and timing survive.
    #[must_use]
    pub fn minimal(&self) -> LedgerEntry {
        LedgerEntry {
            requested_model: "<unstorable>".to_owned(),
            resolved_model: None,
            detectors: Vec::new(),
            error_code: self.error_code.as_ref().map(|_| "unstorable".to_owned()),
            decision: None,
            ..self.clone()
        }
    }

    /// Approximate memory held by the row, for the writer queue's bound.
    #[must_use]
    pub fn approx_bytes(&self) -> usize {
        let text = [
            Some(&self.id),
            Some(&self.tenant_id),
            Some(&self.key_id),
            Some(&self.requested_model),
            self.resolved_model.as_ref(),
            self.backend.as_ref(),
            self.route_reason.as_ref(),
            self.error_code.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum::<usize>();
        let decision = self.decision.as_ref().map_or(0, |d| d.as_str().len());
        std::mem::size_of::<LedgerEntry>()
            + text
            + self.detectors.iter().map(String::len).sum::<usize>()
            + decision
    }
}

fn scrub_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub_json),
        serde_json::Value::Object(map) => {
            let keys: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
            for k in keys {
                if let Some(value) = map.remove(&k) {
                    map.insert(k.replace('\0', "\u{fffd}"), value);
                }
            }
            map.values_mut().for_each(scrub_json);
        }
        _ => {}
    }
}

pub(super) const LEDGER_COLUMNS: &str = "id, tenant_id, key_id, requested_model, resolved_model, backend, \
     route_reason, privacy_class, detectors, predicted_latency_ms, predicted_energy_j, \
     predicted_cost_usd, latency_ms, ttft_ms, prompt_tokens, completion_tokens, usage_estimated, joules, usd, \
     status, http_status, error_code, stream, decision, created_at, predicted_wait_ms, \
     actual_wait_ms, allcloud_backend, allcloud_latency_ms, allcloud_joules, allcloud_usd";

/// Rows per `INSERT` statement (31 parameters each). Far below SQLite's
/// (32,766) and Postgres's (65,535) limits on bound parameters.
const ROWS_PER_INSERT: usize = 32;

/// `INSERT … VALUES (…), (…)` for `rows` rows (Postgres), skipping ids
/// already stored and returning what the spend update needs from the rows
/// inserted.
fn insert_sql(rows: usize) -> String {
    use std::fmt::Write as _;
    let columns = LEDGER_COLUMNS.split(',').count();
    let mut sql = format!("INSERT INTO request_ledger ({LEDGER_COLUMNS}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            let sep = if column == 0 { "" } else { ", " };
            let _ = write!(sql, "{sep}${}", row * columns + column + 1);
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING key_id, usd");
    sql
}

/// Binds one row's values, in [`LEDGER_COLUMNS`] order.
fn bind_entry<'q>(query: AnyQuery<'q>, e: &'q LedgerEntry) -> AnyQuery<'q> {
    query
        .bind(&e.id)
        .bind(&e.tenant_id)
        .bind(&e.key_id)
        .bind(&e.requested_model)
        .bind(e.resolved_model.as_deref())
        .bind(e.backend.as_deref())
        .bind(e.route_reason.as_deref())
        .bind(e.privacy_class.as_str())
        .bind(super::rows::to_json(&e.detectors))
        .bind_opt_f64(e.predicted_latency_ms)
        .bind_opt_f64(e.predicted_energy_j)
        .bind_opt_f64(e.predicted_cost_usd)
        .bind_opt_f64(e.latency_ms)
        .bind_opt_f64(e.ttft_ms)
        .bind(e.prompt_tokens.map(i64::from))
        .bind(e.completion_tokens.map(i64::from))
        .bind(flag(e.usage_estimated))
        .bind_opt_f64(e.joules)
        .bind_opt_f64(e.usd)
        .bind(e.status.as_str())
        .bind(e.http_status.map(i64::from))
        .bind(e.error_code.as_deref())
        .bind(flag(e.stream))
        .bind(e.decision.as_ref().map(DecisionJson::as_str))
        .bind(e.created_at)
        .bind_opt_f64(e.placement.predicted_wait_ms)
        .bind_opt_f64(e.placement.actual_wait_ms)
        .bind(e.placement.allcloud_backend.as_deref())
        .bind_opt_f64(e.placement.allcloud_latency_ms)
        .bind_opt_f64(e.placement.allcloud_joules)
        .bind_opt_f64(e.placement.allcloud_usd)
}

pub(super) fn entry_from_row(row: &AnyRow) -> Result<LedgerEntry, StoreError> {
    let decision: Option<String> = get(row, "decision")?;
    Ok(LedgerEntry {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        key_id: get(row, "key_id")?,
        requested_model: get(row, "requested_model")?,
        resolved_model: get(row, "resolved_model")?,
        backend: get(row, "backend")?,
        route_reason: get(row, "route_reason")?,
        privacy_class: get_class(row, "privacy_class")?,
        detectors: get_json(row, "detectors")?,
        predicted_latency_ms: get(row, "predicted_latency_ms")?,
        predicted_energy_j: get(row, "predicted_energy_j")?,
        predicted_cost_usd: get(row, "predicted_cost_usd")?,
        latency_ms: get(row, "latency_ms")?,
        ttft_ms: get(row, "ttft_ms")?,
        prompt_tokens: get_opt_u32(row, "prompt_tokens")?,
        completion_tokens: get_opt_u32(row, "completion_tokens")?,
        usage_estimated: get_flag(row, "usage_estimated")?,
        joules: get(row, "joules")?,
        usd: get(row, "usd")?,
        status: LedgerStatus::parse(&get::<String>(row, "status")?)
            .ok_or(StoreError::Corrupt("status"))?,
        http_status: get_opt_u32(row, "http_status")?
            .map(|s| u16::try_from(s).map_err(|_| StoreError::Corrupt("http_status")))
            .transpose()?,
        error_code: get(row, "error_code")?,
        stream: get_flag(row, "stream")?,
        decision: decision
            .map(|d| DecisionJson::from_text(d).map_err(|_| StoreError::Corrupt("decision")))
            .transpose()?,
        created_at: get(row, "created_at")?,
        placement: Placement {
            predicted_wait_ms: get(row, "predicted_wait_ms")?,
            actual_wait_ms: get(row, "actual_wait_ms")?,
            allcloud_backend: get(row, "allcloud_backend")?,
            allcloud_latency_ms: get(row, "allcloud_latency_ms")?,
            allcloud_joules: get(row, "allcloud_joules")?,
            allcloud_usd: get(row, "allcloud_usd")?,
        },
    })
}

/// What appending rows did: rows stored now, and rows whose id was already
/// in the ledger (a retry of a batch whose commit landed but whose answer
/// was lost, or a spill file replayed after a crash), which were left as
/// they were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub inserted: u64,
    pub duplicates: u64,
}

impl Store {
    /// Appends one ledger row (see [`Store::insert_ledger_batch`]).
    pub async fn insert_ledger(&self, e: &LedgerEntry) -> Result<Appended, StoreError> {
        self.insert_ledger_batch(std::slice::from_ref(e)).await
    }

    /// Appends rows, all or none, and adds the cost of each row to its
    /// key's spend in the same transaction.
    ///
    /// Idempotent by request id: a row whose id is already stored is
    /// skipped (`ON CONFLICT (id) DO NOTHING`, the primary key being the
    /// request id), never overwritten, and its cost is not added again,
    /// because spend is summed only over the rows the `INSERT` returned. A
    /// batch may therefore be retried whenever its outcome is unknown.
    ///
    /// On Postgres, one multi-row `INSERT` per [`ROWS_PER_INSERT`] rows:
    /// every statement is a round trip and every commit a WAL flush, so a
    /// busy ledger is cheap only in batches. Keys are updated in a fixed
    /// (sorted) order, so two gateways writing batches for the same keys
    /// cannot deadlock. On SQLite, the same through a connection of the
    /// ledger's own, on the calling thread (`sqlite_ledger`): this then
    /// blocks for the batch's time.
    pub async fn insert_ledger_batch(&self, rows: &[LedgerEntry]) -> Result<Appended, StoreError> {
        if rows.is_empty() {
            return Ok(Appended::default());
        }
        if let Some(sqlite) = &self.sqlite_ledger {
            return sqlite.insert(rows);
        }
        let err = |e| StoreError::from_sqlx(e, "ledger row");
        let mut tx = self.pool.begin().await.map_err(err)?;
        let mut spend: BTreeMap<String, f64> = BTreeMap::new();
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            for (key_id, usd) in insert_rows(&mut *tx, chunk).await? {
                inserted += 1;
                if let Some(usd) = usd.filter(|u| u.is_finite() && *u > 0.0) {
                    *spend.entry(key_id).or_default() += usd;
                }
            }
        }
        for (key_id, usd) in &spend {
            // A key deleted since the request was admitted updates nothing;
            // its rows are kept all the same.
            sqlx::query("UPDATE api_keys SET spent_usd = spent_usd + $1 WHERE id = $2")
                .bind(*usd)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "key"))?;
        }
        tx.commit().await.map_err(err)?;
        Ok(Appended {
            inserted,
            duplicates: rows.len() as u64 - inserted,
        })
    }

    /// The newest `limit` rows, optionally of one tenant, newest first.
    pub async fn recent_ledger(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let sql = format!(
            "SELECT {LEDGER_COLUMNS} FROM request_ledger WHERE $1 IS NULL OR tenant_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        rows.iter().map(entry_from_row).collect()
    }

    pub async fn ledger_entry(&self, id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM request_ledger WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Row counts per status (statuses with no rows are omitted), in
    /// [`LedgerStatus::ALL`] order.
    pub async fn count_ledger_by_status(&self) -> Result<Vec<(LedgerStatus, u64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM request_ledger GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
        let mut counts = Vec::new();
        for row in &rows {
            let status = LedgerStatus::parse(&get::<String>(row, "status")?)
                .ok_or(StoreError::Corrupt("status"))?;
            let n = u64::try_from(get::<i64>(row, "n")?).map_err(|_| StoreError::Corrupt("n"))?;
            counts.push((status, n));
        }
        counts.sort_by_key(|(s, _)| LedgerStatus::ALL.iter().position(|x| x == s));
        Ok(counts)
    }
}

/// Inserts `rows` (at most [`ROWS_PER_INSERT`]) and returns the key and
/// cost of each row actually inserted (not of those skipped as already
/// stored).
async fn insert_rows<'c, E>(
    executor: E,
    rows: &[LedgerEntry],
) -> Result<Vec<(String, Option<f64>)>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let sql = insert_sql(rows.len());
    let query = rows.iter().fold(sqlx::query(&sql), |q, e| bind_entry(q, e));
    let returned = query
        .fetch_all(executor)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "ledger row"))?;
    returned
        .iter()
        .map(|row| Ok((get(row, "key_id")?, get(row, "usd")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::DecisionJson;

    #[test]
    fn a_note_is_added_to_the_decision_or_replaces_one_of_its_name() {
        let mut d = DecisionJson::new(&json!({"chosen": "a", "hedge": 1})).unwrap();
        d.insert("cascade", json!({"escalated": true}));
        d.insert("hedge", json!(2));
        assert_eq!(
            d.value().unwrap(),
            json!({"chosen": "a", "hedge": 2, "cascade": {"escalated": true}})
        );
    }

    /// NUL reaches the text only as `\u0000`; a backslash the client sent
    /// before `u0000` is written `\\u0000` and is no NUL, so it stays.
    #[test]
    fn only_real_nul_is_scrubbed_from_the_decision_text() {
        let mut e =
            super::LedgerEntry::new("r".into(), "t".into(), "k".into(), "m".into(), false, 1);
        e.decision = DecisionJson::new(&json!({"a\0": "b\0", "c": "\\u0000"}));
        e.scrub_nul();
        assert_eq!(
            e.decision.unwrap().value().unwrap(),
            json!({"a\u{fffd}": "b\u{fffd}", "c": "\\u0000"})
        );
    }
}

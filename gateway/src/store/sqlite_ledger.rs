//! The ledger's inserts on the embedded SQLite file, through `rusqlite`.
//!
//! Everything else in the store goes through sqlx's `Any` driver (see the
//! module docs of `store`); the ledger's inserts on SQLite do not, for
//! their cost: they run once per request, and through `Any` each batch was
//! a statement of 31 parameters a row rebuilt and re-bound value by value
//! as `AnyArguments`, then sent to sqlx's connection thread and back. That
//! thread and the encoding were a fifth of the gateway's CPU under load
//! (docs/benchmarks.md). Here one prepared single-row statement is bound
//! straight from the row and stepped on the calling thread (the ledger
//! writer's own), inside one transaction per batch: SQLite's B-tree work
//! and nothing around it.
//!
//! The statement and its semantics are the `Any` path's: `ON CONFLICT
//! (id) DO NOTHING`, the cost of each row actually inserted added to its
//! key's spend in the same transaction, keys updated in sorted order. The
//! store tests run the same ledger tests against this path (SQLite) and
//! the `Any` one (Postgres).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::ledger::{Appended, DecisionJson, LedgerEntry, LEDGER_COLUMNS};
use super::rows::{flag, to_json};
use super::StoreError;

/// How long a statement waits for a lock held by another connection (a
/// reader checkpointing, an admin change) before it fails: as the pool's.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection of its own to the store's SQLite file, opened at the first
/// insert (after the migrations have created the table).
pub(super) struct SqliteLedger {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Mutex<Conn>,
}

/// The connection's life: opened at the first insert, opened again after
/// a failure at the file, and never again once closed (as the pool's
/// closing: later inserts find the store unavailable).
enum Conn {
    Unopened,
    Open(Connection),
    Closed,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteLedger {
    pub(super) fn new(path: PathBuf) -> SqliteLedger {
        SqliteLedger {
            path,
            busy_timeout: BUSY_TIMEOUT,
            conn: Mutex::new(Conn::Unopened),
        }
    }

    /// Closes the connection (with the pool, at `Store::close`).
    pub(super) fn close(&self) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Conn::Closed;
    }

    /// Appends `rows` in one transaction (see `Store::insert_ledger_batch`).
    /// Blocks the calling thread for the batch's time, about a millisecond
    /// for fifty rows: the ledger writer calls it from a thread of its own.
    pub(super) fn insert(&self, rows: &[LedgerEntry]) -> Result<Appended, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Conn::Unopened = *guard {
            *guard = Conn::Open(self.open().map_err(classify)?);
        }
        let Conn::Open(conn) = &mut *guard else {
            return Err(StoreError::unavailable("the store is closed"));
        };
        insert_rows(conn, rows).map_err(|e| {
            let e = classify(e);
            if matches!(e, StoreError::Unavailable(_)) {
                // A connection that failed at the file (I/O, a replaced
                // file) is opened afresh next time rather than trusted.
                *guard = Conn::Unopened;
            }
            e
        })
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        // As the pool's connections: see `Store::connect`.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }
}

fn insert_rows(conn: &mut Connection, rows: &[LedgerEntry]) -> rusqlite::Result<Appended> {
    // IMMEDIATE takes the write lock at BEGIN, so a busy file fails (after
    // the busy timeout) before any row, not in the middle of the batch.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut spend: BTreeMap<&str, f64> = BTreeMap::new();
    let mut inserted = 0;
    {
        let mut insert = tx.prepare_cached(&INSERT_SQL)?;
        for e in rows {
            if insert.execute(params![
                e.id,
                e.tenant_id,
                e.key_id,
                e.requested_model,
                e.resolved_model,
                e.backend,
                e.route_reason,
                e.privacy_class.as_str(),
                to_json(&e.detectors),
                e.predicted_latency_ms,
                e.predicted_energy_j,
                e.predicted_cost_usd,
                e.latency_ms,
                e.ttft_ms,
                e.prompt_tokens,
                e.completion_tokens,
                flag(e.usage_estimated),
                e.joules,
                e.usd,
                e.status.as_str(),
                e.http_status,
                e.error_code,
                flag(e.stream),
                e.decision.as_ref().map(DecisionJson::as_str),
                e.created_at,
                e.placement.predicted_wait_ms,
                e.placement.actual_wait_ms,
                e.placement.allcloud_backend,
                e.placement.allcloud_latency_ms,
                e.placement.allcloud_joules,
                e.placement.allcloud_usd,
            ])? == 0
            {
                continue;
            }
            inserted += 1;
            if let Some(usd) = e.usd.filter(|u| u.is_finite() && *u > 0.0) {
                *spend.entry(&e.key_id).or_default() += usd;
            }
        }
        let mut add =
            tx.prepare_cached("UPDATE api_keys SET spent_usd = spent_usd + ?1 WHERE id = ?2")?;
        for (key_id, usd) in &spend {
            // A key deleted since the request was admitted updates nothing;
            // its rows are kept all the same.
            add.execute(params![usd, key_id])?;
        }
    }
    tx.commit()?;
    Ok(Appended {
        inserted,
        duplicates: rows.len() as u64 - inserted,
    })
}

/// The single-row `INSERT`, its `?` in [`LEDGER_COLUMNS`] order.
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let placeholders = vec!["?"; LEDGER_COLUMNS.split(',').count()].join(", ");
    format!(
        "INSERT INTO request_ledger ({LEDGER_COLUMNS}) VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING"
    )
});

/// A busy, locked, unopenable, full or failing file is the store being
/// unavailable (the writer keeps the rows and retries); anything else is
/// the rows' fault (the writer stores them one by one).
fn classify(e: rusqlite::Error) -> StoreError {
    let unavailable = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::NotADatabase
                | ErrorCode::DatabaseCorrupt
        )
    );
    if unavailable {
        StoreError::Unavailable(e.into())
    } else {
        StoreError::Database(e.into())
    }
}

#[cfg(test)]
// Spend sums of binary fractions (0.25 + 0.5) are exact.
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;
    use crate::privacy::Class;
    use crate::store::{LedgerStatus, NewKeySpec, Store};

    /// A migrated SQLite store with one key, and a ledger connection to its
    /// file that waits 50 ms for a lock.
    async fn store_and_key(dir: &tempfile::TempDir) -> (Store, SqliteLedger, String) {
        let path = dir.path().join("gateway.db");
        let store = Store::connect(None, &path).await.unwrap();
        store.migrate().await.unwrap();
        let tenant = store.create_tenant("acme").await.unwrap();
        let key = store
            .create_key(&NewKeySpec {
                tenant_id: tenant.id,
                default_class: Class::Public,
                scopes: Vec::new(),
                requests_per_min: None,
                tokens_per_min: None,
                budget_usd: None,
                expires_at: None,
            })
            .await
            .unwrap()
            .key;
        let ledger = SqliteLedger {
            busy_timeout: Duration::from_millis(50),
            ..SqliteLedger::new(path)
        };
        (store, ledger, key.id)
    }

    fn row(id: &str, key_id: &str, usd: f64) -> LedgerEntry {
        let mut e = LedgerEntry::new(id.into(), "t".into(), key_id.into(), "m".into(), false, 1);
        e.status = LedgerStatus::Ok;
        e.usd = Some(usd);
        e
    }

    async fn spent(store: &Store) -> f64 {
        store.list_keys(None).await.unwrap()[0].spent_usd
    }

    #[tokio::test]
    async fn a_refused_row_takes_its_whole_batch_and_its_spend_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger, key) = store_and_key(&dir).await;
        Connection::open(dir.path().join("gateway.db"))
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON request_ledger WHEN NEW.id = 'bad' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let rows = [
            row("a", &key, 0.25),
            row("b", &key, 0.5),
            row("bad", &key, 1.0),
        ];
        let err = ledger.insert(&rows).unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
        assert_eq!(store.ledger_entry("a").await.unwrap(), None);
        assert_eq!(spent(&store).await, 0.0);

        let appended = ledger.insert(&rows[..2]).unwrap();
        assert_eq!((appended.inserted, appended.duplicates), (2, 0));
        assert_eq!(spent(&store).await, 0.75);
        let again = ledger.insert(&rows[..2]).unwrap();
        assert_eq!((again.inserted, again.duplicates), (0, 2));
        assert_eq!(spent(&store).await, 0.75, "a duplicate adds no spend");
    }

    /// The writer keeps rows it could not store for an unavailable store
    /// and retries them, where a refused batch is stored row by row.
    #[tokio::test]
    async fn a_locked_file_is_unavailable_until_the_lock_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger, key) = store_and_key(&dir).await;
        let holder = Connection::open(dir.path().join("gateway.db")).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = ledger.insert(&[row("a", &key, 0.25)]).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        holder.execute_batch("ROLLBACK").unwrap();
        let appended = ledger.insert(&[row("a", &key, 0.25)]).unwrap();
        assert_eq!(appended.inserted, 1);
        assert!(store.ledger_entry("a").await.unwrap().is_some());
    }
}

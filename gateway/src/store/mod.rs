//! The repository: tenants, keys, backends, aliases, policies, privacy rules
//! and the request ledger, over Postgres or an embedded SQLite file.
//!
//! # Why sqlx's `Any` driver
//!
//! One set of queries serves both databases. The schema sticks to types both
//! dialects share and `Any` maps (TEXT, BIGINT/INTEGER, DOUBLE/REAL): ids are
//! UUID text, timestamps are unix milliseconds, flags are 0/1 integers
//! (`Any` decodes booleans only from a native boolean, which SQLite lacks).
//! `$1` placeholders work on both. The dialects differ only in DDL, so there
//! are two migration folders (`migrations/postgres`, `migrations/sqlite`)
//! that must describe the same schema. The price is no compile-time checked
//! `query!` macros, which would need a live database at build time anyway;
//! the store tests run every query against both databases instead. The one
//! exception is the ledger's inserts on SQLite, which run once per request
//! and go through `rusqlite` for their cost (`sqlite_ledger`).
//!
//! # Errors
//!
//! [`StoreError`]'s `Display` never includes SQL, connection strings or
//! driver text, so it is safe to put in an HTTP error body. The driver error
//! stays reachable through `source()` for logs.

mod admin;
mod backends;
pub mod changes;
mod error;
mod ledger;
mod ledger_query;
mod migrations;
mod rows;
mod savings;
mod settings;
mod sqlite_ledger;
mod tenants;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor};

pub use admin::{AdminSession, AdminToken, CreatedAdminToken, CreatedSession, KeyLimitsUpdate};
pub use error::{DriverError, StoreError};
pub use ledger::{Appended, DecisionJson, LedgerEntry, LedgerStatus, Placement};
pub use ledger_query::{
    LedgerFilter, LedgerTotals, SeriesPoint, Totals, MAX_LEDGER_ROWS, MAX_WINDOW_ROWS,
};
pub use savings::SavingsBucket;
pub use tenants::{ApiKey, CreatedKey, NewKeySpec, Tenant};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A cheap-to-clone handle on the connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// On SQLite, the ledger's inserts' own connection (`sqlite_ledger`).
    sqlite_ledger: Option<Arc<sqlite_ledger::SqliteLedger>>,
}

impl Store {
    /// Connects to `url` (a `postgres://` URL) or, when it is `None`, to the
    /// SQLite file at `sqlite_path`, creating it in WAL mode if missing. WAL
    /// lets the ledger writer and readers (dashboard, admin) proceed at once.
    pub async fn connect(url: Option<&str>, sqlite_path: &Path) -> Result<Store, StoreError> {
        install_default_drivers();
        let Some(url) = url else {
            let options = SqliteConnectOptions::new()
                .filename(sqlite_path)
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(5));
            let url = options.to_url_lossy().to_string();
            let pool = AnyPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                // In WAL mode, NORMAL syncs at checkpoints rather than at
                // every commit: a committed row survives a crash of the
                // process, and the file cannot corrupt; only an OS crash or
                // power loss may take the last commits. Per connection.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA synchronous=NORMAL").await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await
                .map_err(StoreError::unavailable)?;
            // journal_mode is persistent in the file, so setting it once
            // through any connection covers the whole pool.
            pool.execute("PRAGMA journal_mode=WAL")
                .await
                .map_err(StoreError::unavailable)?;
            return Ok(Store {
                pool,
                dialect: Dialect::Sqlite,
                sqlite_ledger: Some(Arc::new(sqlite_ledger::SqliteLedger::new(
                    sqlite_path.to_owned(),
                ))),
            });
        };
        let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(StoreError::Invalid(
                "database url must be postgres:// or sqlite:",
            ));
        };
        let sqlite_ledger = if dialect == Dialect::Sqlite {
            // Validate the URL with the SQLite parser so a typo fails here
            // rather than at first query.
            let options = SqliteConnectOptions::from_str(url).map_err(StoreError::unavailable)?;
            // The ledger's inserts open the file again (`sqlite_ledger`);
            // an in-memory database is another one per connection.
            if url.contains(":memory:") || url.contains("mode=memory") {
                return Err(StoreError::Invalid(
                    "the ledger needs a SQLite file, not an in-memory database",
                ));
            }
            let path = options.get_filename().to_owned();
            Some(Arc::new(sqlite_ledger::SqliteLedger::new(path)))
        } else {
            None
        };
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Store {
            pool,
            dialect,
            sqlite_ledger,
        })
    }

    /// Applies pending migrations of this store's dialect.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = migrations::migrator(self.dialect)
            .await
            .map_err(StoreError::Migrate)?;
        migrator.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    #[must_use]
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes the pool, waiting for connections to be returned, and the
    /// ledger's own connection on SQLite.
    pub async fn close(&self) {
        if let Some(sqlite) = &self.sqlite_ledger {
            sqlite.close();
        }
        self.pool.close().await;
    }
}

/// Current time as unix milliseconds, the store's timestamp unit.
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

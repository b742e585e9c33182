//! The store's error type.

/// A driver's error (sqlx's, or rusqlite's for the ledger's inserts on
/// SQLite), kept for logs only.
pub type DriverError = Box<dyn std::error::Error + Send + Sync>;

/// Errors from the store. The `Display` of every variant is a fixed phrase:
/// driver messages can contain SQL, constraint names or a DSN with a
/// password, so they are only reachable through `source()` (for logs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connect, pool timeout, I/O): 503.
    #[error("database unavailable")]
    Unavailable(#[source] DriverError),
    /// Any other driver error: 500.
    #[error("database error")]
    Database(#[source] DriverError),
    /// Applying migrations failed.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The named entity does not exist: 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique name is already taken: 409.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The caller passed a value the store refuses: 400.
    #[error("invalid input: {0}")]
    Invalid(&'static str),
    /// A stored value cannot be decoded into its type (a manual edit, or a
    /// schema drift between the dialects).
    #[error("stored data is invalid: {0}")]
    Corrupt(&'static str),
}

impl StoreError {
    /// `Unavailable`, from a driver error.
    pub(crate) fn unavailable(err: impl Into<DriverError>) -> StoreError {
        StoreError::Unavailable(err.into())
    }

    /// Classifies a driver error; `entity` names what a unique violation
    /// collided with.
    pub(crate) fn from_sqlx(err: sqlx::Error, entity: &'static str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(entity),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::NotFound("referenced tenant")
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unreachable_state(&c)) => {
                StoreError::Unavailable(err.into())
            }
            sqlx::Error::RowNotFound => StoreError::NotFound(entity),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.into()),
            _ => StoreError::Database(err.into()),
        }
    }
}

/// Postgres states that mean "the server cannot take this now", not "this
/// statement is wrong": connection exceptions (class 08), the server
/// shutting down, crashing or starting up (57P01–57P03), and too many
/// connections (53300). A restarted Postgres answers with these for a few
/// seconds; the ledger writer must keep retrying through them rather than
/// treat its rows as refused.
fn is_unreachable_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

#[cfg(test)]
mod tests {
    use super::is_unreachable_state;

    #[test]
    fn server_side_outages_are_unreachable_and_statement_errors_are_not() {
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(is_unreachable_state(code), "{code}");
        }
        for code in ["23505", "22021", "42P01", "23514"] {
            assert!(!is_unreachable_state(code), "{code}");
        }
    }
}

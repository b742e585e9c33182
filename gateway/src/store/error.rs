//! The store's error type.

/// Errors from the store. The `Display` of every variant is a fixed phrase:
/// driver messages can contain SQL, constraint names or a DSN with a
/// password, so they are only reachable through `source()` (for logs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connect, pool timeout, I/O): 503.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Any other driver error: 500.
    #[error("database error")]
    Database(#[source] sqlx::Error),
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
    /// Classifies a driver error; `entity` names what a unique violation
    /// collided with.
    pub(crate) fn from_sqlx(err: sqlx::Error, entity: &'static str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(entity),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::NotFound("referenced tenant")
            }
            sqlx::Error::RowNotFound => StoreError::NotFound(entity),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            _ => StoreError::Database(err),
        }
    }
}

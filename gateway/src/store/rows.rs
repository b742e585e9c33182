//! Small decoding and statement helpers shared by the store's submodules.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::StoreError;
use crate::privacy::Class;

pub(super) fn get<'r, T>(row: &'r AnyRow, col: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(|_| StoreError::Corrupt(col))
}

pub(super) fn get_u32(row: &AnyRow, col: &'static str) -> Result<u32, StoreError> {
    u32::try_from(get::<i64>(row, col)?).map_err(|_| StoreError::Corrupt(col))
}

pub(super) fn get_opt_u32(row: &AnyRow, col: &'static str) -> Result<Option<u32>, StoreError> {
    get::<Option<i64>>(row, col)?
        .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(col)))
        .transpose()
}

pub(super) fn get_flag(row: &AnyRow, col: &'static str) -> Result<bool, StoreError> {
    Ok(get::<i64>(row, col)? != 0)
}

pub(super) fn get_class(row: &AnyRow, col: &'static str) -> Result<Class, StoreError> {
    get::<String>(row, col)?
        .parse()
        .map_err(|_| StoreError::Corrupt(col))
}

pub(super) fn get_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(&get::<String>(row, col)?).map_err(|_| StoreError::Corrupt(col))
}

pub(super) fn flag(b: bool) -> i64 {
    i64::from(b)
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// A query on the `Any` driver, as built by `sqlx::query`.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binding helpers that work around driver quirks.
pub(super) trait BindExt {
    /// Binds an optional `f64`. sqlx 0.8's `Any` driver turns a `None::<f64>`
    /// into a `real` (f32) NULL on Postgres, which then fixes the cached
    /// statement's parameter type to `real` and makes every later non-NULL
    /// `double precision` value fail to bind. A `None::<f32>` comes out as a
    /// `double precision` NULL, which is what the columns are.
    fn bind_opt_f64(self, v: Option<f64>) -> Self;
}

impl BindExt for AnyQuery<'_> {
    fn bind_opt_f64(self, v: Option<f64>) -> Self {
        match v {
            Some(x) => self.bind(x),
            None => self.bind(None::<f32>),
        }
    }
}

/// Runs a statement that must touch at least one row (a delete or update by
/// id or name): `NotFound(what)` when none matched.
pub(super) async fn execute_one(
    pool: &sqlx::AnyPool,
    query: AnyQuery<'_>,
    what: &'static str,
) -> Result<(), StoreError> {
    let done = query
        .execute(pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, what))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(what));
    }
    Ok(())
}

//! The schema's migrations, embedded in the binary.
//!
//! sqlx's `migrate!` macro does the same at compile time, but it pulls in
//! sqlx's proc-macro crate, which builds a second sqlx (SQLite's C library
//! included) for the compiler's host: about half a minute of every cold
//! build, for a list of files. Here the files are named once below (the same
//! names in both dialects' folders) and parsed the way the macro parses them
//! (`<version>_<description>.sql`, underscores in the description read as
//! spaces, `-- no-transaction` on the first line), so the checksums sqlx
//! records are the same as before and
//! databases migrated by an earlier build stay valid. A test checks that the
//! list names every file of both folders.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

use super::Dialect;

/// `POSTGRES` and `SQLITE`: `(file name, contents)` of each file of the
/// two folders, in order. The folders describe the same schema in two
/// dialects, so they hold the same file names.
macro_rules! folders {
    ($($file:literal),+ $(,)?) => {
        const POSTGRES: &[(&str, &str)] =
            &[$(($file, include_str!(concat!("../../../migrations/postgres/", $file)))),+];
        const SQLITE: &[(&str, &str)] =
            &[$(($file, include_str!(concat!("../../../migrations/sqlite/", $file)))),+];
    };
}

folders!(
    "20240601000001_init.sql",
    "20261202000001_fail_closed.sql",
    "20261202053000_change_notify.sql",
    "20261202100001_admin.sql",
    "20261202100002_placement.sql",
    "20261202100003_usage_estimated.sql",
    "20261202110001_hedge_cascade.sql",
);

/// The migrations of one dialect, for [`Migrator::new`].
pub(super) async fn migrator(dialect: Dialect) -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded(match dialect {
        Dialect::Postgres => POSTGRES,
        Dialect::Sqlite => SQLITE,
    }))
    .await
}

/// A folder's files, compiled in.
#[derive(Debug, Clone, Copy)]
struct Embedded(&'static [(&'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            self.0
                .iter()
                .map(|&(name, sql)| migration(name, sql))
                .collect()
        })
    }
}

/// One file, read as sqlx reads a migrations folder.
fn migration(name: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, description) = name
        .strip_suffix(".sql")
        .and_then(|stem| stem.split_once('_'))
        .ok_or_else(|| format!("migration {name}: not <version>_<description>.sql"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration {name}: the version is not a number"))?;
    Ok(Migration::new(
        version,
        Cow::Owned(description.replace('_', " ")),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_disk(dir: &str) -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/").to_string() + dir;
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_list_names_every_file_of_both_folders_in_order() {
        for (dir, files) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let listed: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
            assert_eq!(listed, on_disk(dir), "migrations/{dir}");
        }
    }

    #[test]
    fn files_parse_as_sqlx_parses_them() {
        let m = migration("20261202000001_fail_closed.sql", "CREATE TABLE t (x INT);").unwrap();
        assert_eq!(m.version.to_string(), "20261202000001");
        assert_eq!(m.description, "fail closed");
        assert_eq!(m.migration_type, MigrationType::Simple);
        assert!(!m.no_tx);
        assert!(
            migration("1_x.sql", "-- no-transaction\nVACUUM;")
                .unwrap()
                .no_tx
        );
        for bad in ["init.sql", "x_init.sql", "1_init.txt"] {
            assert!(migration(bad, "").is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn each_dialect_resolves_to_its_files_in_version_order() {
        for (dialect, files) in [(Dialect::Postgres, POSTGRES), (Dialect::Sqlite, SQLITE)] {
            let m = migrator(dialect).await.unwrap();
            let versions: Vec<i64> = m.iter().map(|m| m.version).collect();
            assert_eq!(versions.len(), files.len());
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        }
    }
}

//! Shared test harness. Here: a fresh database per test, on SQLite (a temp
//! file) or on the real Postgres (a uniquely named database that is dropped
//! again when the handle goes out of scope, even after a failure). In
//! [`edge`]: the real edge-worker process; in [`harness`]: the gateway
//! served over such a database, with seeding and waiting helpers; in
//! [`process`]: the gateway binary as a child process, for fleets of
//! several gateways and for killing one; in [`pg_cluster`] and
//! [`redis_server`]: a private Postgres and Redis a test may stop; in
//! [`cloud_recorder`]: what a cloud backend received.

// Each test binary uses a different part of the harness.
#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::doc_markdown)]

pub mod cloud_recorder;
pub mod edge;
pub mod harness;
pub mod logs;
pub mod pg_cluster;
pub mod process;
pub mod redis_server;
pub mod stand_in;

use gateway::store::Store;
use sqlx::Connection;

/// Where the Postgres tests connect; the database in it only serves to
/// create and drop the per-test databases.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub struct TestDb {
    pub store: Store,
    cleanup: Cleanup,
}

impl TestDb {
    /// A store over a database the test manages (and drops) itself.
    pub fn external(store: Store) -> TestDb {
        TestDb {
            store,
            cleanup: Cleanup::External,
        }
    }
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
    // A database the test manages itself (a private cluster).
    External,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(None, &dir.path().join("gateway.db"))
        .await
        .expect("open sqlite store");
    store.migrate().await.expect("migrate sqlite");
    TestDb {
        store,
        cleanup: Cleanup::Sqlite(dir),
    }
}

/// Fails (never skips) when Postgres is unreachable, saying how to fix it.
pub async fn postgres() -> TestDb {
    let admin_url = postgres_admin_url();
    let name = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
            "cannot reach Postgres for the store tests ({e}); start it or set TEST_DATABASE_URL \
             (default postgres://postgres@127.0.0.1:5432/test)"
        )
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    let url = replace_database(&admin_url, &name);
    let store = Store::connect(Some(&url), std::path::Path::new("unused"))
        .await
        .expect("open postgres store");
    store.migrate().await.expect("migrate postgres");
    TestDb {
        store,
        cleanup: Cleanup::Postgres { admin_url, name },
    }
}

impl TestDb {
    /// The URL of this Postgres database, for gateway processes of its own;
    /// `None` on SQLite.
    pub fn postgres_url(&self) -> Option<String> {
        match &self.cleanup {
            Cleanup::Postgres { admin_url, name } => Some(replace_database(admin_url, name)),
            Cleanup::Sqlite(_) | Cleanup::External => None,
        }
    }
}

fn replace_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on,
        // so the cleanup gets a thread and a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Generates one `#[tokio::test]` per backend for each named async test
/// body `fn(&Store)`, so both databases run exactly the same checks.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                let db = $crate::common::sqlite().await;
                super::$name(&db.store).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                let db = $crate::common::postgres().await;
                super::$name(&db.store).await;
            })*
        }
    };
}

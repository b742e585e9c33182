//! The settings cache against a real store: fresh entries are served from
//! memory; entries past their lifetime are served once more while a
//! background read replaces them (no request waits for a routine refresh);
//! entries too old, invalidated, or with a lifetime of 0 are read before
//! they are served, so a privacy rule whose change notification arrived is
//! never missed.
//!
//! The sleeps here are the subject of the tests (how the cache treats an
//! entry of a given age), not waits for something to happen.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown,
    // Counters and stored settings are compared exactly on purpose.
    clippy::float_cmp
)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness::{cloud_backend, WAIT};
use gateway::catalog::{Catalog, TenantSettings, STALE_FACTOR};
use gateway::privacy::{classify, Class, RuleSpec};
use gateway::routing::Policy;
use gateway::store::Store;

const TTL: Duration = Duration::from_millis(300);

fn names(catalog_backends: &[gateway::routing::Backend]) -> Vec<&str> {
    catalog_backends.iter().map(|b| b.name.as_str()).collect()
}

async fn add(store: &Store, name: &str) {
    store
        .add_backend(&cloud_backend(name, "http://127.0.0.1:9"))
        .await
        .unwrap();
}

/// Polls `snapshot()` until `name` is listed; returns how many calls it took.
async fn calls_until_listed(catalog: &Catalog, name: &str) -> u32 {
    let deadline = Instant::now() + WAIT;
    let mut calls = 0;
    loop {
        calls += 1;
        if names(&catalog.snapshot().await.unwrap().backends).contains(&name) {
            return calls;
        }
        assert!(Instant::now() < deadline, "{name} never appeared");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_stale_snapshot_is_served_once_more_and_refreshed_behind() {
    let db = common::sqlite().await;
    add(&db.store, "a").await;
    let catalog = Catalog::new(db.store.clone(), TTL);
    assert_eq!(names(&catalog.snapshot().await.unwrap().backends), ["a"]);

    add(&db.store, "b").await;
    // Fresh: from memory.
    assert_eq!(names(&catalog.snapshot().await.unwrap().backends), ["a"]);
    // Stale: the old snapshot once more, while a background read runs;
    // that read's result is served soon after.
    tokio::time::sleep(TTL).await;
    assert_eq!(names(&catalog.snapshot().await.unwrap().backends), ["a"]);
    assert!(calls_until_listed(&catalog, "b").await >= 1);

    // Too old to serve stale: read before serving.
    add(&db.store, "c").await;
    tokio::time::sleep(TTL * STALE_FACTOR).await;
    assert_eq!(calls_until_listed(&catalog, "c").await, 1);
}

#[tokio::test]
async fn an_invalidated_or_uncached_entry_is_read_before_it_is_served() {
    let db = common::sqlite().await;
    let tenant = db.store.create_tenant("acme").await.unwrap().id;
    let catalog = Catalog::new(db.store.clone(), Duration::from_secs(600));
    let class = |s: Arc<TenantSettings>| {
        classify(
            ["the launch code is tangerine-42"],
            Class::Public,
            None,
            &s.rules,
        )
        .class
    };
    assert_eq!(class(catalog.tenant(&tenant).await.unwrap()), Class::Public);

    // A rule added and notified: the very next request sees it, although
    // the cached settings were fresh.
    let rule = RuleSpec::Regex {
        name: "launch-code".into(),
        pattern: "tangerine-[0-9]+".into(),
        class: Class::Confidential,
    };
    db.store
        .add_privacy_rule(Some(&tenant), &rule)
        .await
        .unwrap();
    assert_eq!(class(catalog.tenant(&tenant).await.unwrap()), Class::Public);
    catalog.invalidate();
    assert_eq!(
        class(catalog.tenant(&tenant).await.unwrap()),
        Class::Confidential
    );

    // A lifetime of 0: every read goes to the store.
    let uncached = Catalog::new(db.store.clone(), Duration::ZERO);
    let weight = |p: &Policy| p.w_energy;
    assert_eq!(
        weight(&uncached.tenant(&tenant).await.unwrap().policy),
        Policy::default().w_energy
    );
    let greener = Policy {
        w_energy: 7.0,
        ..Policy::default()
    };
    db.store.set_policy(&tenant, &greener).await.unwrap();
    assert!((weight(&uncached.tenant(&tenant).await.unwrap().policy) - 7.0).abs() < 1e-9);
    add(&db.store, "z").await;
    assert_eq!(calls_until_listed(&uncached, "z").await, 1);
}

#[tokio::test]
async fn stale_tenant_settings_are_served_once_more_and_refreshed_behind() {
    let db = common::sqlite().await;
    let tenant = db.store.create_tenant("acme").await.unwrap().id;
    let catalog = Catalog::new(db.store.clone(), TTL);
    let w = |c: &Catalog| {
        let c = c.clone();
        let t = tenant.clone();
        async move { c.tenant(&t).await.unwrap().policy.w_energy }
    };
    let initial = w(&catalog).await;
    let greener = Policy {
        w_energy: initial + 5.0,
        ..Policy::default()
    };
    db.store.set_policy(&tenant, &greener).await.unwrap();
    tokio::time::sleep(TTL).await;
    assert!(
        (w(&catalog).await - initial).abs() < 1e-9,
        "stale served once more"
    );
    let deadline = Instant::now() + WAIT;
    while (w(&catalog).await - greener.w_energy).abs() > 1e-9 {
        assert!(
            Instant::now() < deadline,
            "the background read never landed"
        );
        tokio::task::yield_now().await;
    }
}

//! Store behaviour, run identically against SQLite and Postgres.

#![allow(
    clippy::unwrap_used,
    clippy::doc_markdown,
    clippy::expect_used,
    clippy::panic,
    clippy::float_cmp
)]

use gateway::keys;
use gateway::privacy::{Class, RuleSet, RuleSpec};
use gateway::routing::{
    Alias, AliasTarget, Backend, BackendKind, Capabilities, ModelMapping, Policy, Zone,
};
use gateway::store::{
    DecisionJson, LedgerEntry, LedgerStatus, NewKeySpec, Placement, Store, StoreError,
};
use secrecy::ExposeSecret;

on_both_databases!(
    tenants_and_keys,
    spend_is_added_atomically,
    backends_round_trip,
    aliases_and_policies,
    privacy_rules_scope_and_order,
    ledger_rows,
    ledger_batches_are_idempotent_and_all_or_none,
    ledger_spend_is_added_once_per_row,
    ledger_rows_with_nul_are_stored,
    errors_hide_driver_text,
);

fn key_spec(tenant_id: &str) -> NewKeySpec {
    NewKeySpec {
        tenant_id: tenant_id.to_owned(),
        default_class: Class::Internal,
        scopes: vec!["chat".into(), "models".into()],
        requests_per_min: Some(60),
        tokens_per_min: Some(10_000),
        budget_usd: Some(5.0),
        expires_at: None,
    }
}

async fn tenants_and_keys(store: &Store) {
    let acme = store.create_tenant("acme").await.unwrap();
    store.create_tenant("beta").await.unwrap();
    assert!(matches!(
        store.create_tenant("acme").await,
        Err(StoreError::Conflict("tenant"))
    ));
    let names: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "beta"]);
    assert_eq!(store.find_tenant("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(
        store.find_tenant(&acme.id).await.unwrap(),
        Some(acme.clone())
    );

    let created = store.create_key(&key_spec(&acme.id)).await.unwrap();
    let plain = created.plaintext.expose_secret().to_owned();
    let found = store
        .key_by_hash(&keys::hash(&plain))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, created.key);
    assert_eq!(found.scopes, ["chat", "models"]);
    assert_eq!(found.default_class, Class::Internal);
    assert_eq!(
        (
            found.requests_per_min,
            found.tokens_per_min,
            found.budget_usd
        ),
        (Some(60), Some(10_000), Some(5.0))
    );
    assert!(found.is_active(gateway::store::now_ms()));
    assert_eq!(
        store.key_by_hash(&keys::hash("gw-wrong")).await.unwrap(),
        None
    );

    let other = store
        .create_key(&NewKeySpec {
            expires_at: Some(1),
            ..key_spec(&acme.id)
        })
        .await
        .unwrap();
    assert!(!other.key.is_active(gateway::store::now_ms()));
    assert_eq!(store.list_keys(Some(&acme.id)).await.unwrap().len(), 2);
    assert_eq!(store.list_keys(None).await.unwrap().len(), 2);
    assert!(store.list_keys(Some("nobody")).await.unwrap().is_empty());

    store.revoke_key(&created.key.id).await.unwrap();
    let revoked = store
        .key_by_hash(&keys::hash(&plain))
        .await
        .unwrap()
        .unwrap();
    let first_revocation = revoked.revoked_at.unwrap();
    assert!(!revoked.is_active(gateway::store::now_ms()));
    store.revoke_key(&created.key.id).await.unwrap();
    let again = store
        .key_by_hash(&keys::hash(&plain))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(first_revocation));
    assert!(matches!(
        store.revoke_key("missing").await,
        Err(StoreError::NotFound("key"))
    ));

    // A key for a tenant that does not exist is refused by the foreign key.
    assert!(store.create_key(&key_spec("no-such-tenant")).await.is_err());
}

async fn spend_is_added_atomically(store: &Store) {
    let t = store.create_tenant("acme").await.unwrap();
    let key = store.create_key(&key_spec(&t.id)).await.unwrap().key;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let id = key.id.clone();
            tokio::spawn(async move { store.add_spend(&id, 0.25).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.add_spend(&key.id, 0.0).await.unwrap(), 5.0);
    assert!(matches!(
        store.add_spend(&key.id, -1.0).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.add_spend("missing", 1.0).await,
        Err(StoreError::NotFound("key"))
    ));
}

fn edge_backend() -> Backend {
    Backend {
        id: String::new(),
        name: "edge-1".into(),
        kind: BackendKind::Edge,
        base_url: "http://127.0.0.1:8081".into(),
        zone: Zone::OnPrem,
        api_key_env: None,
        models: vec![
            ModelMapping {
                public: "smollm2".into(),
                upstream: "smollm2-135m-instruct".into(),
            },
            ModelMapping {
                public: "tiny".into(),
                upstream: "smollm2-135m-instruct".into(),
            },
        ],
        price_in_per_1k: 0.0,
        price_out_per_1k: 0.0,
        joules_per_prompt_token: 0.004,
        joules_per_output_token: 0.12,
        rtt_ms: 1.5,
        prefill_tps: 900.0,
        decode_tps: 60.0,
        max_concurrency: 4,
        context_length: 8192,
        enabled: true,
        capabilities: Capabilities::default(),
    }
}

async fn backends_round_trip(store: &Store) {
    let edge = store.add_backend(&edge_backend()).await.unwrap();
    assert!(!edge.id.is_empty());
    let cloud_spec = Backend {
        name: "cloud".into(),
        kind: BackendKind::Cloud,
        zone: Zone::Cloud,
        api_key_env: Some("OPENAI_API_KEY".into()),
        models: vec![ModelMapping {
            public: "smollm2".into(),
            upstream: "gpt-4o-mini".into(),
        }],
        price_in_per_1k: 0.00015,
        price_out_per_1k: 0.0006,
        ..edge_backend()
    };
    let cloud = store.add_backend(&cloud_spec).await.unwrap();
    assert_eq!(
        store.list_backends().await.unwrap(),
        vec![cloud.clone(), edge.clone()]
    );

    assert!(matches!(
        store.add_backend(&edge_backend()).await,
        Err(StoreError::Conflict("backend"))
    ));
    let secret_env = Backend {
        name: "x".into(),
        api_key_env: Some("sk-live-123".into()),
        ..edge_backend()
    };
    assert!(matches!(
        store.add_backend(&secret_env).await,
        Err(StoreError::Invalid(_))
    ));
    let no_models = Backend {
        name: "y".into(),
        models: vec![],
        ..edge_backend()
    };
    assert!(matches!(
        store.add_backend(&no_models).await,
        Err(StoreError::Invalid(_))
    ));

    store.set_backend_enabled("edge-1", false).await.unwrap();
    let listed = store.list_backends().await.unwrap();
    assert!(!listed[1].enabled);
    assert_eq!(listed[1].models.len(), 2);
    assert!(matches!(
        store.set_backend_enabled("nope", true).await,
        Err(StoreError::NotFound(_))
    ));

    store.remove_backend("edge-1").await.unwrap();
    assert_eq!(store.list_backends().await.unwrap(), vec![cloud]);
    assert!(matches!(
        store.remove_backend("edge-1").await,
        Err(StoreError::NotFound(_))
    ));
    // The model rows went with the backend, so the name can be reused.
    store.add_backend(&edge_backend()).await.unwrap();
}

async fn aliases_and_policies(store: &Store) {
    store
        .set_alias(&Alias {
            name: "auto".into(),
            target: AliasTarget::Any,
        })
        .await
        .unwrap();
    let small = Alias {
        name: "small".into(),
        target: AliasTarget::Models(vec!["a".into(), "b".into()]),
    };
    store.set_alias(&small).await.unwrap();
    let replaced = Alias {
        name: "auto".into(),
        target: AliasTarget::Models(vec!["smollm2".into()]),
    };
    store.set_alias(&replaced).await.unwrap();
    assert_eq!(store.list_aliases().await.unwrap(), vec![replaced, small]);
    store.remove_alias("small").await.unwrap();
    assert!(matches!(
        store.remove_alias("small").await,
        Err(StoreError::NotFound(_))
    ));

    let t = store.create_tenant("acme").await.unwrap();
    assert_eq!(store.get_policy(&t.id).await.unwrap(), None);
    let policy = Policy {
        w_cost: 2.5,
        default_class: Class::Confidential,
        allow_cloud: false,
        ..Policy::default()
    };
    store.set_policy(&t.id, &policy).await.unwrap();
    assert_eq!(store.get_policy(&t.id).await.unwrap(), Some(policy.clone()));
    let updated = Policy {
        latency_slo_ms: 900.0,
        ..policy
    };
    store.set_policy(&t.id, &updated).await.unwrap();
    assert_eq!(store.get_policy(&t.id).await.unwrap(), Some(updated));
    let bad = Policy {
        cost_ref_usd: 0.0,
        ..Policy::default()
    };
    assert!(matches!(
        store.set_policy(&t.id, &bad).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn privacy_rules_scope_and_order(store: &Store) {
    let t = store.create_tenant("acme").await.unwrap();
    let global_off = RuleSpec::Builtin {
        detector: "email".into(),
        enabled: false,
        class: None,
    };
    let tenant_on = RuleSpec::Builtin {
        detector: "email".into(),
        enabled: true,
        class: Some(Class::Confidential),
    };
    let codename = RuleSpec::Regex {
        name: "codename".into(),
        pattern: r"(?i)\bbluebird\b".into(),
        class: Class::Confidential,
    };
    let g = store.add_privacy_rule(None, &global_off).await.unwrap();
    store
        .add_privacy_rule(Some(&t.id), &tenant_on)
        .await
        .unwrap();
    store
        .add_privacy_rule(Some(&t.id), &codename)
        .await
        .unwrap();
    assert!(matches!(
        store.add_privacy_rule(None, &global_off).await,
        Err(StoreError::Conflict(_))
    ));
    let broken = RuleSpec::Regex {
        name: "broken".into(),
        pattern: "(".into(),
        class: Class::Internal,
    };
    assert!(matches!(
        store.add_privacy_rule(None, &broken).await,
        Err(StoreError::Invalid(_))
    ));

    let global: Vec<RuleSpec> = store
        .privacy_rules_for(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.spec)
        .collect();
    assert_eq!(global, vec![global_off.clone()]);
    let tenant: Vec<RuleSpec> = store
        .privacy_rules_for(Some(&t.id))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.spec)
        .collect();
    // Global scope first; inside a scope by name, on every store.
    assert_eq!(tenant, vec![global_off, codename, tenant_on]);
    // The tenant's row overrides the global one once compiled.
    let rules = RuleSet::compile(&tenant).unwrap();
    let c = gateway::privacy::classify(["mail a@b.io"], Class::Public, None, &rules);
    assert_eq!(c.class, Class::Confidential);
    assert_eq!(store.list_privacy_rules().await.unwrap().len(), 3);

    store.remove_privacy_rule(&g.id).await.unwrap();
    assert!(store.privacy_rules_for(None).await.unwrap().is_empty());
    assert!(matches!(
        store.remove_privacy_rule(&g.id).await,
        Err(StoreError::NotFound(_))
    ));
}

fn ledger_entry(id: &str, status: LedgerStatus, created_at: i64) -> LedgerEntry {
    LedgerEntry {
        id: id.to_owned(),
        tenant_id: "t1".into(),
        key_id: "k1".into(),
        requested_model: "auto".into(),
        resolved_model: Some("smollm2".into()),
        backend: Some("edge-1".into()),
        route_reason: Some("lowest_score".into()),
        privacy_class: Class::Internal,
        detectors: vec!["email".into()],
        predicted_latency_ms: Some(1180.5),
        predicted_energy_j: Some(8.08),
        predicted_cost_usd: Some(0.0),
        latency_ms: Some(1201.0),
        ttft_ms: Some(95.0),
        prompt_tokens: Some(100),
        completion_tokens: Some(64),
        usage_estimated: false,
        joules: Some(8.2),
        usd: Some(0.0),
        status,
        http_status: Some(200),
        error_code: None,
        stream: true,
        decision: DecisionJson::new(
            &serde_json::json!({"chosen": {"backend": "edge-1", "score": 0.27}}),
        ),
        created_at,
        placement: Placement {
            predicted_wait_ms: Some(120.0),
            actual_wait_ms: Some(97.5),
            allcloud_backend: Some("cloud-1".into()),
            allcloud_latency_ms: Some(2150.0),
            allcloud_joules: Some(25.6),
            allcloud_usd: Some(0.000_146),
        },
    }
}

async fn ledger_rows(store: &Store) {
    let a = ledger_entry("r1", LedgerStatus::Ok, 1_000);
    let b = LedgerEntry {
        backend: None,
        resolved_model: None,
        route_reason: None,
        detectors: vec![],
        predicted_latency_ms: None,
        latency_ms: None,
        prompt_tokens: None,
        http_status: Some(503),
        error_code: Some("privacy_route_unavailable".into()),
        stream: false,
        decision: None,
        tenant_id: "t2".into(),
        placement: Placement::default(),
        ..ledger_entry("r2", LedgerStatus::Rejected, 2_000)
    };
    let c = ledger_entry("r3", LedgerStatus::Ok, 3_000);
    // The row with NULLs goes first so the statement is prepared with
    // NULL parameters and must still accept values afterwards.
    for e in [&b, &a, &c] {
        store.insert_ledger(e).await.unwrap();
    }
    // A row stored again (a retried batch, a replayed spill file) is
    // skipped, never overwritten.
    let changed = LedgerEntry {
        status: LedgerStatus::Error,
        ..a.clone()
    };
    let dup = store.insert_ledger(&changed).await.unwrap();
    assert_eq!((dup.inserted, dup.duplicates), (0, 1));
    assert_eq!(
        store.recent_ledger(None, 10).await.unwrap(),
        vec![c.clone(), b.clone(), a.clone()]
    );
    assert_eq!(store.recent_ledger(None, 1).await.unwrap(), vec![c.clone()]);
    assert_eq!(
        store.recent_ledger(Some("t1"), 10).await.unwrap(),
        vec![c, a]
    );
    assert_eq!(store.ledger_entry("r2").await.unwrap(), Some(b));
    assert_eq!(store.ledger_entry("nope").await.unwrap(), None);
    assert_eq!(
        store.count_ledger_by_status().await.unwrap(),
        vec![(LedgerStatus::Ok, 2), (LedgerStatus::Rejected, 1)]
    );
}

/// Client text can carry NUL characters, which Postgres refuses in text and
/// JSON; scrubbed rows store on both databases, and the minimal form of a
/// row keeps its ids, status and numbers.
async fn ledger_rows_with_nul_are_stored(store: &Store) {
    let mut e = ledger_entry("nul", LedgerStatus::Ok, 5_000);
    e.requested_model = "a\0b".into();
    e.error_code = Some("c\0".into());
    e.decision = DecisionJson::new(&serde_json::json!({"requested_model": "a\0b", "k\0": ["x\0"]}));
    e.scrub_nul();
    store.insert_ledger(&e).await.unwrap();
    let stored = store.ledger_entry("nul").await.unwrap().unwrap();
    assert_eq!(stored.requested_model, "a\u{fffd}b");
    assert_eq!(
        stored.decision.unwrap().value().unwrap()["k\u{fffd}"][0],
        "x\u{fffd}"
    );

    let minimal = ledger_entry("min", LedgerStatus::Partial, 6_000).minimal();
    store.insert_ledger(&minimal).await.unwrap();
    let stored = store.ledger_entry("min").await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.completion_tokens, stored.decision),
        (LedgerStatus::Partial, Some(64), None)
    );
}

/// Batches span several multi-row statements (32 rows each); rows already
/// stored are skipped, the others stored; a batch the database refuses is
/// stored whole or not at all, however many statements it takes.
async fn ledger_batches_are_idempotent_and_all_or_none(store: &Store) {
    let batch = |prefix: &str, n: usize| -> Vec<LedgerEntry> {
        (0..n)
            .map(|i| {
                let mut e = ledger_entry(
                    &format!("{prefix}{i:03}"),
                    LedgerStatus::Ok,
                    10_000 + i64::try_from(i).unwrap(),
                );
                if i % 3 == 0 {
                    e.backend = None;
                    e.latency_ms = None;
                    e.decision = None;
                }
                e
            })
            .collect()
    };
    let big = batch("big", 70);
    let appended = store.insert_ledger_batch(&big).await.unwrap();
    assert_eq!((appended.inserted, appended.duplicates), (70, 0));
    let mut stored = store.recent_ledger(None, 100).await.unwrap();
    stored.reverse();
    assert_eq!(stored, big);

    for n in [5, 40] {
        // The last row repeats a stored id: the others land, it does not.
        let mut again = batch(&format!("again{n}-"), n);
        again.last_mut().unwrap().id.clone_from(&big[0].id);
        let appended = store.insert_ledger_batch(&again).await.unwrap();
        assert_eq!((appended.inserted, appended.duplicates), (n as u64 - 1, 1));
        assert!(store.ledger_entry(&again[0].id).await.unwrap().is_some());
    }
    assert_eq!(
        store.count_ledger_by_status().await.unwrap(),
        vec![(LedgerStatus::Ok, 70 + 4 + 39)]
    );
    assert_eq!(
        store.insert_ledger_batch(&[]).await.unwrap(),
        gateway::store::Appended::default()
    );

    if store.dialect() == gateway::store::Dialect::Postgres {
        // Postgres refuses NUL in text (the writer scrubs it first): the
        // first statement of the batch succeeded, yet nothing may land.
        let mut bad = batch("bad-", 40);
        bad.last_mut().unwrap().requested_model = "a\0b".into();
        let err = store.insert_ledger_batch(&bad).await;
        assert!(matches!(err, Err(StoreError::Database(_))), "{err:?}");
        assert_eq!(store.ledger_entry(&bad[0].id).await.unwrap(), None);
    }
}

/// Spend is added in the transaction that inserts the row, and only for
/// rows actually inserted: storing a batch twice adds its cost once.
async fn ledger_spend_is_added_once_per_row(store: &Store) {
    let t = store.create_tenant("acme").await.unwrap();
    let k1 = store.create_key(&key_spec(&t.id)).await.unwrap().key;
    let k2 = store.create_key(&key_spec(&t.id)).await.unwrap().key;
    let row = |id: &str, key: &str, usd: Option<f64>| LedgerEntry {
        key_id: key.to_owned(),
        usd,
        ..ledger_entry(id, LedgerStatus::Ok, 1_000)
    };
    let rows = vec![
        row("s1", &k1.id, Some(0.25)),
        row("s2", &k1.id, Some(0.5)),
        row("s3", &k2.id, Some(1.0)),
        row("s4", &k2.id, None),
        row("s5", "deleted-key", Some(2.0)),
    ];
    store.insert_ledger_batch(&rows).await.unwrap();
    let again = store.insert_ledger_batch(&rows).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 5));
    store
        .insert_ledger(&row("s6", &k1.id, Some(0.25)))
        .await
        .unwrap();
    let keys = store.list_keys(Some(&t.id)).await.unwrap();
    let spent = |id: &str| keys.iter().find(|k| k.id == id).unwrap().spent_usd;
    assert_eq!(spent(&k1.id), 1.0);
    assert_eq!(spent(&k2.id), 1.0);
    assert_eq!(
        store.ledger_entry("s5").await.unwrap().unwrap().usd,
        Some(2.0)
    );
}

async fn errors_hide_driver_text(store: &Store) {
    store.create_tenant("acme").await.unwrap();
    let err = store.create_tenant("acme").await.unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown, "tenant already exists");
    for leak in [
        "INSERT",
        "tenants",
        "UNIQUE",
        "duplicate",
        "postgres",
        "sqlite",
    ] {
        assert!(!shown.contains(leak), "{shown}");
    }
}

//! The admin subcommands, executed against SQLite and Postgres.

#![allow(
    clippy::unwrap_used,
    clippy::doc_markdown,
    clippy::expect_used,
    clippy::panic,
    clippy::float_cmp
)]

use gateway::keys;
use gateway::privacy::Class;
use gateway::routing::{AliasTarget, ModelMapping, Zone};
use gateway::store::Store;

on_both_databases!(admin_cli_round_trip, zone_labels_are_checked);

#[derive(clap::Parser)]
struct AdminArgs {
    #[command(subcommand)]
    command: gateway::admin_cli::AdminCommand,
}

async fn admin(
    store: &Store,
    args: &str,
) -> Result<Vec<serde_json::Value>, gateway::admin_cli::AdminError> {
    use clap::Parser;
    let words = std::iter::once("gateway").chain(args.split_whitespace());
    let parsed = AdminArgs::try_parse_from(words).unwrap_or_else(|e| panic!("{args}: {e}"));
    let mut out = Vec::new();
    gateway::admin_cli::run(store, parsed.command, &mut out).await?;
    Ok(String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

async fn admin_cli_round_trip(store: &Store) {
    admin(store, "tenant create acme").await.unwrap();
    let created = admin(
        store,
        "key create --tenant acme --class internal --rpm 5 --budget 2.5 --expires-days 7",
    )
    .await
    .unwrap();
    let plaintext = created[0]["api_key"].as_str().unwrap().to_owned();
    assert!(plaintext.starts_with("gw-"));
    let key = store
        .key_by_hash(&keys::hash(&plaintext))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (key.default_class, key.requests_per_min, key.budget_usd),
        (Class::Internal, Some(5), Some(2.5))
    );
    assert!(key.expires_at.is_some());

    let listed =
        serde_json::to_string(&admin(store, "key list --tenant acme").await.unwrap()).unwrap();
    assert!(
        !listed.contains(&plaintext[3..]),
        "a listing must not show the key"
    );
    assert!(
        !listed.contains(&keys::hash(&plaintext)),
        "a listing must not show the hash"
    );

    admin(store, "backend add --name edge-1 --kind edge --url http://127.0.0.1:9 --model smollm2=smollm2-135m-instruct --model tiny")
        .await
        .unwrap();
    admin(store, "backend add --name cloud --kind cloud --url https://cloud.invalid --model smollm2=gpt-x --api-key-env CLOUD_API_KEY --price-in 0.001")
        .await
        .unwrap();
    admin(store, "backend disable edge-1").await.unwrap();
    let backends = store.list_backends().await.unwrap();
    assert_eq!(backends[0].zone, Zone::Cloud);
    assert_eq!(backends[1].zone, Zone::OnPrem);
    assert!(!backends[1].enabled);
    assert_eq!(
        backends[1].models[1],
        ModelMapping {
            public: "tiny".into(),
            upstream: "tiny".into()
        }
    );

    admin(store, "alias set auto any").await.unwrap();
    assert_eq!(
        store.list_aliases().await.unwrap()[0].target,
        AliasTarget::Any
    );
    admin(
        store,
        "policy set --tenant acme --w-cost 3 --allow-cloud false",
    )
    .await
    .unwrap();
    let got = admin(store, "policy get --tenant acme").await.unwrap();
    assert_eq!(got[0]["policy"]["w_cost"], 3.0);
    assert_eq!(got[0]["policy"]["allow_cloud"], false);

    admin(
        store,
        "privacy rule add --name codename --pattern bluebird --class confidential --tenant acme",
    )
    .await
    .unwrap();
    admin(store, "privacy rule add --name email --builtin --disable")
        .await
        .unwrap();
    assert!(admin(
        store,
        "privacy rule add --name bad --pattern ( --class internal"
    )
    .await
    .is_err());
    assert!(admin(store, "privacy rule add --name nameless --pattern x")
        .await
        .is_err());
    assert_eq!(admin(store, "privacy rule list").await.unwrap().len(), 2);
    privacy_check(store).await;
    assert!(matches!(
        admin(store, "key create --tenant nobody").await,
        Err(gateway::admin_cli::AdminError::UnknownTenant(_))
    ));
}

/// A dry run of the classifier, after the round trip's rules: the tenant's
/// rule applies with --tenant only; the global switch-off of `email`
/// applies to all; the matched text is never printed.
async fn privacy_check(store: &Store) {
    let check = |args: &'static str| async move {
        let got = admin(store, args).await.unwrap();
        (got[0]["class"].clone(), got[0]["detectors"].clone())
    };
    assert_eq!(
        check("privacy check --tenant acme --text project-bluebird").await,
        (
            serde_json::json!("confidential"),
            serde_json::json!(["codename"])
        )
    );
    assert_eq!(
        check("privacy check --text project-bluebird").await,
        (serde_json::json!("public"), serde_json::json!([]))
    );
    assert_eq!(
        check("privacy check --text bob@example.com").await,
        (serde_json::json!("public"), serde_json::json!([]))
    );
    let card = admin(store, "privacy check --text card:4539-1488-0343-6467")
        .await
        .unwrap();
    assert_eq!(card[0]["detectors"], serde_json::json!(["card"]));
    assert!(!card[0].to_string().contains("4539"), "{card:?}");
    assert!(matches!(
        admin(store, "privacy check --tenant nobody --text x").await,
        Err(gateway::admin_cli::AdminError::UnknownTenant(_))
    ));
}

/// A zone label that would send confidential requests off the premises is
/// refused unless forced; so is a key variable named like the gateway's own.
async fn zone_labels_are_checked(store: &Store) {
    let refused = [
        "backend add --name c1 --kind cloud --zone on-prem --url http://10.0.0.5:8000 --model m",
        "backend add --name e1 --kind edge --url http://10.0.0.5:8080 --model m --api-key-env OPENAI_API_KEY",
        "backend add --name e2 --kind edge --url https://api.openai.com --model m",
        "backend add --name e3 --kind edge --url http://8.8.8.8:8080 --model m",
        "backend add --name e4 --kind edge --url http://2130706433:8080 --model m",
        "backend add --name e5 --kind edge --url http://user@203.0.113.9/v1 --model m",
        // The HTTP client reads a backslash as the end of the host: it would
        // connect to cloud.example.com, not 10.0.0.5.
        r"backend add --name e6 --kind edge --url http://cloud.example.com\@10.0.0.5:8080 --model m",
    ];
    for args in refused {
        let err = admin(store, args).await.unwrap_err();
        assert!(err.to_string().contains("--force-zone"), "{args}: {err}");
    }
    let err = admin(
        store,
        "backend add --name c2 --kind cloud --url https://api.example.com/v1 --model m --api-key-env GATEWAY_DATABASE_URL",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("GATEWAY_"), "{err}");
    let err = admin(
        store,
        "backend add --name worker:10.0.0.5:8081 --kind edge --url http://10.0.0.5:8081 --model m",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("self-registered"), "{err}");
    let accepted = [
        "backend add --name ok1 --kind edge --url http://127.0.0.1:8081 --model m",
        "backend add --name ok2 --kind edge --url http://192.168.1.20:8081 --model m",
        "backend add --name ok3 --kind edge --url http://edge-1:8080 --model m",
        "backend add --name ok4 --kind edge --url http://[fd00::5]:8080 --model m",
        "backend add --name ok5 --kind edge --url http://gpu.lab.internal:8080 --model m",
        "backend add --name ok6 --kind cloud --url https://api.example.com/v1 --model m --api-key-env OPENAI_API_KEY",
        "backend add --name ok7 --kind edge --url https://api.example.com --model m --force-zone",
    ];
    for args in accepted {
        admin(store, args)
            .await
            .unwrap_or_else(|e| panic!("{args}: {e}"));
    }
    let listed = admin(store, "backend list").await.unwrap();
    let caps = |name: &str| {
        let b = listed.iter().find(|b| b["name"] == name).unwrap();
        (
            b["capabilities"]["tools"].as_bool().unwrap(),
            b["capabilities"]["json_schema"].as_bool().unwrap(),
        )
    };
    assert_eq!(caps("ok1"), (false, false));
    assert_eq!(caps("ok6"), (true, true));
}

//! The admin subcommands, executed against SQLite and Postgres.

#![allow(
    clippy::unwrap_used,
    clippy::doc_markdown,
    clippy::expect_used,
    clippy::panic,
    clippy::float_cmp
)]

mod common;

use gateway::keys;
use gateway::privacy::Class;
use gateway::routing::{AliasTarget, ModelMapping, Zone};
use gateway::store::Store;

on_both_databases!(admin_cli_round_trip);

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
    admin(store, "backend add --name cloud --kind cloud --url https://cloud.invalid --model smollm2=gpt-x --api-key-env CLOUD_KEY --price-in 0.001")
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
    assert!(matches!(
        admin(store, "key create --tenant nobody").await,
        Err(gateway::admin_cli::AdminError::UnknownTenant(_))
    ));
}

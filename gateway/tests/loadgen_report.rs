//! The load generator's scenario reports against the real gateway: a real
//! edge worker and the mock cloud behind it, a scenario with a privacy mix
//! and an event, and the report joined with the ledger over the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;

use common::harness::{edge_and_cloud, preferred_cloud, test_config, EdgeSetup};
use loadtest::loadgen::{
    fetch_ledger, scenario, Digest, Ledger, LoadConfig, Scenario, ScenarioRun,
};
use secrecy::ExposeSecret;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_report_shows_where_requests_ran_and_that_confidential_stayed_home() {
    // A fast, free cloud: everything allowed to leave goes there, and
    // confidential requests can only run on the edge worker.
    let EdgeSetup {
        gw,
        key,
        edge: _edge,
        mock: _mock,
        ..
    } = edge_and_cloud(
        common::sqlite().await,
        &[],
        |url| preferred_cloud("cloud", url),
        test_config(),
    )
    .await;
    let token = gw.store().create_admin_token("loadgen").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("event-ran");
    let file = scenario_file(dir.path(), &marker);
    let scenario = Scenario::load(&file).unwrap();
    let expected = scenario.plan(1.0).unwrap().len() as u64;

    let config = LoadConfig {
        api_key: Some(key),
        timeout: 60.0,
        ..LoadConfig::default()
    };
    let base = format!("{}/v1", gw.base);
    let run = scenario::run(scenario, &config, &base, 1.0, 7)
        .await
        .unwrap();
    let ledger = joined_ledger(&base, token.plaintext.expose_secret(), &run).await;
    let digest = Digest::of(&run, Some(&ledger));

    let all = &digest.total;
    assert_eq!((all.sent, all.ok), (expected, expected), "{:?}", all.errors);
    assert_eq!(digest.ledger_missing, 0);
    let answered = run.samples.iter().filter(|s| s.ledger_id.is_some());
    assert_eq!(answered.count() as u64, expected);
    assert_eq!(all.confidential_in_cloud, 0);
    // Both halves of the mix ran where they should: the public half in the
    // cloud, the confidential half on the edge.
    let edge = *all.placed.get("edge").unwrap_or(&0);
    let cloud = *all.placed.get("cloud").unwrap_or(&0);
    assert_eq!(edge + cloud, expected, "{:?}", all.placed);
    let confidential = run
        .samples
        .iter()
        .filter(|s| run.classes[s.class].as_deref() == Some("confidential"))
        .count() as u64;
    assert_eq!(edge, confidential, "{:?}", all.placed);
    assert!(cloud > 0 && edge > 0, "{:?}", all.placed);
    // The ledger's energy and cost reached the report.
    assert!(all.joules_per_request.is_some_and(|j| j > 0.0));
    assert!(all.usd_per_request.is_some());
    assert!(all.ttft_ms.is_some_and(|t| t.p50 <= t.p99));
    assert_eq!(digest.phases.len(), 2);
    assert_eq!(digest.phases[0].figures.sent, 6);
    assert_eq!(digest.windows.len(), 4);
    assert_eq!(
        digest.windows.iter().map(|w| w.figures.sent).sum::<u64>(),
        expected
    );
    // The event ran once, about a second in.
    assert!(marker.exists());
    assert_eq!(digest.events.len(), 1);
    assert!(
        digest.events[0].outcome.contains('0'),
        "{:?}",
        digest.events
    );
    assert!((digest.events[0].started_s - 1.0).abs() < 0.5);

    let out = dir.path().join("report");
    digest.write(&run, Some(&ledger), &out).unwrap();
    let read = |f: &str| std::fs::read_to_string(Path::new(&out).join(f)).unwrap();
    let md = read("report.md");
    assert!(
        md.contains("| **all** |") && md.contains("![split.svg](split.svg)"),
        "{md}"
    );
    for svg in ["latency.svg", "split.svg", "energy.svg", "cost.svg"] {
        let s = read(svg);
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }
    assert_eq!(read("samples.csv").lines().count() as u64, expected + 1);
    let json: serde_json::Value = serde_json::from_str(&read("report.json")).unwrap();
    assert_eq!(json["total"]["confidential_in_cloud"], 0);
    gw.shutdown().await;
}

/// Two phases of public and confidential requests, and an event that
/// touches `marker` a second in.
fn scenario_file(dir: &Path, marker: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
name = "mix"
description = "Public and confidential, two phases."
model = "{model}"
max_tokens = 4
stream = true

[mix]
public = 0.5
confidential = 0.5

[[phase]]
name = "one"
seconds = 2
rate = 3

[[phase]]
name = "two"
seconds = 2
rate = 1
rate_to = 3

[[event]]
at = 1.0
run = "touch '{marker}'"
"#,
        model = common::edge::MODEL,
        marker = marker.display()
    );
    let file = dir.join("mix.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The ledger rows of the run, once every answered request has its row
/// (the ledger writes in batches).
async fn joined_ledger(base: &str, token: &str, run: &ScenarioRun) -> Ledger {
    let client = reqwest::Client::new();
    for _ in 0..50 {
        let ledger = fetch_ledger(&client, base, token, run.started_unix_ms, run.ended_unix_ms)
            .await
            .unwrap();
        let ids = run.samples.iter().filter_map(|s| s.ledger_id.as_deref());
        if ids.into_iter().all(|id| ledger.rows.contains_key(id)) {
            return ledger;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("ledger rows missing after 10 s");
}

/// Every scenario kept in the repository parses and schedules requests.
#[test]
fn the_kept_scenarios_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!s.plan(4.0).unwrap().is_empty());
        names.push(s.name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "burst",
            "confidential-mix",
            "overload",
            "steady",
            "worker-loss"
        ]
    );
}

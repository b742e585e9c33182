//! Placement over real HTTP: energy routing between two backends of
//! different joules per token, the power-of-two choice spreading a burst
//! over near-equal edge workers, the predicted and actual queue wait and the
//! all-cloud counterfactual in the ledger with the real edge worker, and
//! the savings report (`gateway report`) over both databases.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::process::Command;

use common::harness::{
    chat_body, cloud_backend, edge_and_cloud, header, metric, mock_cloud, tenant_and_key,
    test_config, EdgeSetup, Gateway,
};
use common::stand_in::{backend, StandIn};
use futures::StreamExt;
use gateway::privacy::Class;
use gateway::report::{Period, ReportArgs};
use gateway::routing::{Backend, Policy, Zone};
use gateway::store::{LedgerEntry, LedgerStatus, Placement, Store};
use serde_json::{json, Value};

/// A free cloud backend on `url` with `joules` per output token and
/// `decode_tps`: the two backends of the energy test differ only there.
fn priced(name: &str, url: &str, joules: f64, decode_tps: f64) -> Backend {
    Backend {
        price_in_per_1k: 0.0,
        price_out_per_1k: 0.0,
        joules_per_prompt_token: 0.0,
        joules_per_output_token: joules,
        rtt_ms: 1.0,
        prefill_tps: 1e5,
        decode_tps,
        ..cloud_backend(name, url)
    }
}

/// Sends `n` requests with a new key of a tenant with `policy`; returns
/// the backends that served them.
async fn served_by(gw: &Gateway, policy: &Policy, n: usize) -> Vec<String> {
    let (tenant, key) = tenant_and_key(gw.store(), |_| {}).await;
    gw.store().set_policy(&tenant, policy).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = gw.chat(&key, &chat_body("Say hi.", 16)).await;
        assert_eq!(r.status(), 200);
        out.push(header(&r, "x-gateway-backend").to_owned());
    }
    out
}

#[tokio::test]
async fn raising_the_energy_weight_moves_traffic_to_the_lower_joules_backend_within_the_slo() {
    // `green`: a tenth of the joules per token, five times slower.
    let (green, brown) = (mock_cloud().await, mock_cloud().await);
    let db = common::sqlite().await;
    db.store
        .add_backend(&priced("green", &green.base_url(), 0.05, 40.0))
        .await
        .unwrap();
    db.store
        .add_backend(&priced("brown", &brown.base_url(), 0.5, 200.0))
        .await
        .unwrap();
    let gw = Gateway::start(db, test_config()).await;
    let latency_first = Policy {
        w_energy: 0.0,
        ..Policy::default()
    };
    // 16 output tokens: 0.8 J on green, 8 J on brown; ~400 ms against ~80.
    let energy_first = Policy {
        w_energy: 1.0,
        energy_ref_j: 1.0,
        ..Policy::default()
    };
    let energy_first_tight_slo = Policy {
        latency_slo_ms: 200.0,
        ..energy_first.clone()
    };
    let n = 6;
    let share = |served: &[String]| served.iter().filter(|b| *b == "green").count();
    let a = served_by(&gw, &latency_first, n).await;
    let b = served_by(&gw, &energy_first, n).await;
    let c = served_by(&gw, &energy_first_tight_slo, n).await;
    println!(
        "green share: latency first {}/{n}, energy first {}/{n}, energy first within a 200 ms SLO {}/{n}",
        share(&a),
        share(&b),
        share(&c)
    );
    assert_eq!(share(&a), 0, "{a:?}");
    assert_eq!(share(&b), n, "{b:?}");
    assert_eq!(share(&c), 0, "green breaks the SLO: {c:?}");
    assert_eq!(green.stats().requests_total, n as u64);
    assert_eq!(brown.stats().requests_total, 2 * n as u64);
    let counts = gw.ledger_counts(3 * n as u64).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&(3 * n as u64)));
    gw.shutdown().await;
}

/// Energy and money are predicted for the tenant's mean answer so far
/// (the mock answers 16 tokens whatever the bound), within `max_tokens`;
/// latency for `max_tokens`. Every prediction takes the prompt as the
/// backend counted the tenant's earlier ones. Another tenant starts from
/// the bound and the estimate.
#[tokio::test]
async fn predictions_follow_the_tenants_answers_and_prompts_so_far() {
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    let cloud = Backend {
        price_in_per_1k: 0.001,
        price_out_per_1k: 0.002,
        prefill_tps: 1000.0,
        ..priced("cloud", &mock.base_url(), 0.5, 100.0)
    };
    db.store.add_backend(&cloud).await.unwrap();
    let gw = Gateway::start(db, test_config()).await;
    let row_of = |key: String| {
        let gw = &gw;
        async move {
            let r = gw.chat(&key, &chat_body("Say hi.", 64)).await;
            assert_eq!(r.status(), 200);
            gw.row(header(&r, "x-gateway-ledger-id")).await
        }
    };
    let assumed = |row: &LedgerEntry| {
        let d = row.decision.as_ref().unwrap().value().unwrap();
        let n = |k: &str| d[k].as_u64().unwrap();
        (n("prompt_tokens"), n("output_tokens"), n("answer_tokens"))
    };
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    // Nothing seen yet: the prompt's estimate and the bound, 64 tokens at
    // 0.5 J and USD 0.002 per thousand.
    let first = row_of(key.clone()).await;
    let (estimate, output, answer) = assumed(&first);
    assert_eq!((output, answer), (64, 64));
    assert_eq!(first.completion_tokens, Some(16));
    let reported = u64::from(first.prompt_tokens.unwrap());
    assert_ne!(
        reported, estimate,
        "the test needs the mock to count otherwise"
    );
    assert!(
        (first.predicted_energy_j.unwrap() - 32.0).abs() < 1e-9,
        "{first:?}"
    );
    let usd = |prompt: u64, answer: u64| (prompt as f64 * 0.001 + answer as f64 * 0.002) / 1000.0;
    assert!((first.predicted_cost_usd.unwrap() - usd(estimate, 64)).abs() < 1e-12);
    // After one request: its 16-token answer and the prompt as the mock
    // counted it; the latency still for 64 tokens, with that prompt.
    let second = row_of(key.clone()).await;
    assert_eq!(assumed(&second), (reported, 64, 16));
    assert!(
        (second.predicted_energy_j.unwrap() - 8.0).abs() < 1e-9,
        "{second:?}"
    );
    assert!((second.predicted_cost_usd.unwrap() - usd(reported, 16)).abs() < 1e-12);
    let prefill_ms = (reported as f64 - estimate as f64) / 1000.0 * 1000.0;
    let latency = second.predicted_latency_ms.unwrap() - first.predicted_latency_ms.unwrap();
    assert!(
        (latency - prefill_ms).abs() < 1e-9,
        "{latency} against {prefill_ms}"
    );
    // Another tenant's requests have means of their own.
    let (_, other) = tenant_and_key(gw.store(), |_| {}).await;
    assert_eq!(assumed(&row_of(other).await), (estimate, 64, 64));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_burst_is_spread_over_near_equal_edge_workers() {
    let (a, b) = (StandIn::start().await, StandIn::start().await);
    let db = common::sqlite().await;
    let ids = [
        db.store
            .add_backend(&backend("a", &a.url, Zone::OnPrem, 0.0))
            .await
            .unwrap()
            .id,
        db.store
            .add_backend(&backend("b", &b.url, Zone::OnPrem, 0.0))
            .await
            .unwrap()
            .id,
    ];
    let gw = Gateway::start(db, test_config()).await;
    for id in &ids {
        gw.wait_live(id, |l| l.load.is_some()).await;
    }
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let n = 16;
    let answers = futures::stream::iter(0..n)
        .map(|_| gw.chat(&key, &body))
        .buffer_unordered(n)
        .collect::<Vec<_>>()
        .await;
    for r in &answers {
        assert_eq!(r.status(), 200);
    }
    // Identical idle workers: without the power-of-two choice every
    // request goes to the first by name. With it, each request compares
    // the two by the requests sent since the last report.
    println!("burst of {n}: a {}, b {}", a.count(), b.count());
    assert_eq!(a.count() + b.count(), n);
    assert!(
        a.count() >= n / 4 && b.count() >= n / 4,
        "a {} b {}",
        a.count(),
        b.count()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_ledger_has_predicted_and_actual_wait_and_the_all_cloud_counterfactual() {
    let cloud = |url: &str| Backend {
        joules_per_prompt_token: 0.05,
        joules_per_output_token: 0.3,
        ..cloud_backend("cloud", url)
    };
    let EdgeSetup {
        edge: _edge,
        mock,
        gw,
        tenant,
        key,
        ..
    } = edge_and_cloud(
        common::sqlite().await,
        &["--max-running", "1"],
        cloud,
        test_config(),
    )
    .await;
    let confidential = [("x-privacy-class", "confidential")];
    // A long first request holds the one running slot.
    let mut first = chat_body("Count from one to fifty.", 48);
    first["stream"] = json!(true);
    let r1 = gw.chat_with(&key, &first, &confidential).await;
    assert_eq!(header(&r1, "x-gateway-backend"), "edge");
    let id1 = header(&r1, "x-gateway-ledger-id").to_owned();
    let mut stream = r1.bytes_stream();
    // Its first chunk: it is running on the worker now.
    stream.next().await.unwrap().unwrap();
    let second = chat_body("Say hi.", 4);
    let (r2, r3) = tokio::join!(
        gw.chat_with(&key, &second, &confidential),
        gw.chat_with(&key, &second, &confidential)
    );
    while stream.next().await.is_some() {}
    let mut rows = vec![gw.row(&id1).await];
    for r in [r2, r3] {
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-gateway-backend"), "edge");
        rows.push(gw.row(header(&r, "x-gateway-ledger-id")).await);
    }
    for (i, row) in rows.iter().enumerate() {
        let p = &row.placement;
        println!(
            "request {i}: predicted wait {:?} ms, actual wait {:?} ms",
            p.predicted_wait_ms, p.actual_wait_ms
        );
        assert_eq!(row.status, LedgerStatus::Ok);
        assert!(p.actual_wait_ms.is_some(), "{row:?}");
        // The counterfactual: these tokens at the cloud's prices and
        // joules, though a confidential request may never go there.
        assert_eq!(p.allcloud_backend.as_deref(), Some("cloud"));
        let (prompt, out) = (
            f64::from(row.prompt_tokens.unwrap()),
            f64::from(row.completion_tokens.unwrap()),
        );
        let usd = prompt / 1000.0 * 0.5 + out / 1000.0 * 1.5;
        assert!((p.allcloud_usd.unwrap() - usd).abs() < 1e-12, "{row:?}");
        let joules = prompt * 0.05 + out * 0.3;
        assert!((p.allcloud_joules.unwrap() - joules).abs() < 1e-9);
        assert!(p.allcloud_latency_ms.unwrap() > 50.0);
    }
    // The first found the slot free; the two behind it were predicted to
    // wait (this gateway had sent the first) and did wait.
    assert!(rows[0].placement.predicted_wait_ms.unwrap() < 1e-9);
    for row in &rows[1..] {
        assert!(row.placement.predicted_wait_ms.unwrap() > 0.0, "{row:?}");
        assert!(row.placement.actual_wait_ms.unwrap() > 1.0, "{row:?}");
    }
    assert_eq!(mock.stats().requests_total, 0, "nothing confidential left");

    // The savings: what these rows cost against what all-cloud would have.
    let text = gw.metrics().await;
    assert!(
        metric(
            &text,
            "gateway_allcloud_cost_microusd_total",
            &[("zone", "on_prem")]
        ) > 0.0
    );
    assert!(metric(&text, "gateway_grid_gco2_per_kwh", &[]) > 0.0);
    let lines = report(gw.store(), Some(&tenant), 400.0).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["requests"], 3);
    let want_usd: f64 = rows.iter().map(|r| r.placement.allcloud_usd.unwrap()).sum();
    assert!(
        (l["saved_usd"].as_f64().unwrap() - want_usd).abs() < 1e-9,
        "{l}"
    );
    let saved_j: f64 = rows
        .iter()
        .map(|r| r.placement.allcloud_joules.unwrap() - r.joules.unwrap())
        .sum();
    assert!((l["saved_co2_g"].as_f64().unwrap() - saved_j / 3.6e6 * 400.0).abs() < 1e-9);
    gw.shutdown().await;
}

/// The report's lines for `tenant`, over the whole window.
async fn report(store: &Store, tenant: Option<&str>, intensity: f64) -> Vec<Value> {
    let args = ReportArgs {
        tenant: tenant.map(str::to_owned),
        period: Period::All,
        days: 30,
        grid_gco2_per_kwh: None,
    };
    let mut out = Vec::new();
    gateway::report::run(store, &args, intensity, gateway::store::now_ms(), &mut out)
        .await
        .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn row(id: &str, tenant: &str, created_at: i64, joules: f64, cloud_joules: f64) -> LedgerEntry {
    LedgerEntry {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        key_id: "k".into(),
        requested_model: "m".into(),
        resolved_model: Some("m".into()),
        backend: Some("edge".into()),
        route_reason: Some("lowest_score".into()),
        privacy_class: Class::Public,
        detectors: vec![],
        predicted_latency_ms: Some(100.0),
        predicted_energy_j: Some(joules),
        predicted_cost_usd: Some(0.0),
        latency_ms: Some(100.0),
        ttft_ms: Some(10.0),
        prompt_tokens: Some(10),
        completion_tokens: Some(10),
        usage_estimated: false,
        joules: Some(joules),
        usd: Some(0.0),
        status: LedgerStatus::Ok,
        http_status: Some(200),
        error_code: None,
        stream: false,
        decision: None,
        created_at,
        placement: Placement {
            predicted_wait_ms: Some(0.0),
            actual_wait_ms: Some(0.0),
            allcloud_backend: Some("cloud".into()),
            allcloud_latency_ms: Some(900.0),
            allcloud_joules: Some(cloud_joules),
            allcloud_usd: Some(0.01),
        },
    }
}

/// Per tenant and per day; rows without a counterfactual (a rejected
/// request, a model no cloud serves) are left out.
async fn report_sums_per_tenant_and_period(store: &Store) {
    let acme = store.create_tenant("acme").await.unwrap();
    let other = store.create_tenant("other").await.unwrap();
    let day = 86_400_000;
    let today = gateway::store::now_ms() / day * day;
    let mut rows = vec![
        row("a1", &acme.id, today - day + 5, 1.0, 3.6e6 + 1.0),
        row("a2", &acme.id, today + 5, 2.0, 12.0),
        row("a3", &acme.id, today + 6, 2.0, 12.0),
        row("o1", &other.id, today + 7, 1.0, 2.0),
    ];
    let mut rejected = row("a4", &acme.id, today + 8, 0.0, 0.0);
    rejected.status = LedgerStatus::Rejected;
    rejected.placement = Placement::default();
    rows.push(rejected);
    store.insert_ledger_batch(&rows).await.unwrap();

    let mut out = Vec::new();
    let args = ReportArgs {
        tenant: Some("acme".into()),
        period: Period::Day,
        days: 3,
        grid_gco2_per_kwh: Some(100.0),
    };
    gateway::report::run(store, &args, 400.0, gateway::store::now_ms(), &mut out)
        .await
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["tenant"], "acme");
    assert_eq!(lines[0]["requests"], 1);
    // One kWh saved at the flag's 100 g/kWh, not the config's 400.
    assert!((lines[0]["saved_co2_g"].as_f64().unwrap() - 100.0).abs() < 1e-6);
    assert_eq!(lines[1]["requests"], 2);
    assert!((lines[1]["saved_joules"].as_f64().unwrap() - 20.0).abs() < 1e-9);
    assert!((lines[1]["saved_usd"].as_f64().unwrap() - 0.02).abs() < 1e-12);
    assert!(lines[1]["period_start"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    let all = report(store, None, 400.0).await;
    assert_eq!(all.len(), 2, "one line per tenant: {all:?}");
}

on_both_databases!(report_sums_per_tenant_and_period);

#[tokio::test]
async fn gateway_report_runs_as_a_subcommand() {
    let db = common::postgres().await;
    let t = db.store.create_tenant("acme").await.unwrap();
    db.store
        .insert_ledger(&row(
            "r1",
            &t.id,
            gateway::store::now_ms(),
            1.0,
            3.6e6 + 1.0,
        ))
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--database-url", &db.postgres_url().unwrap()])
        .args(["report", "--tenant", "acme", "--period", "all"])
        .env("GATEWAY_GRID_GCO2_PER_KWH", "250")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["tenant"], "acme");
    assert_eq!(line["grid_gco2_per_kwh"], 250.0);
    assert!(
        (line["saved_co2_g"].as_f64().unwrap() - 250.0).abs() < 1e-6,
        "{line}"
    );
}

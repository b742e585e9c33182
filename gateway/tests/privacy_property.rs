//! The privacy invariant at the proxy level, as a property: whatever the
//! request, wherever in it a sensitive value hides and however it is
//! disguised, whatever backends exist and however they fail, a recording
//! cloud receives nothing from a request that holds a sensitive value.
//!
//! Each case runs through the real gateway over HTTP: authentication,
//! classification of the whole body, routing, the real `execute` path with
//! its failover and recovery trials, and the relay. On-premises upstreams
//! are stand-in OpenAI servers (with a load report, as edge workers have)
//! whose failure mode each case draws: answering, connection refused, 500,
//! no answer before the first-byte timeout, an error event before the first
//! token, or dying after it. The cloud records every request it gets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::harness::{tenant_and_key, test_config, Gateway};
use common::stand_in::{backend, Mode, StandIn};
use gateway::routing::Zone;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// The failure modes each backend of a case draws from.
fn modes() -> Vec<Mode> {
    vec![
        Mode::Answer,
        Mode::Refused,
        Mode::Status(
            500,
            r#"{"error":{"message":"boom","type":"server_error","param":null,"code":"x"}}"#.into(),
        ),
        Mode::Hang,
        Mode::ErrorFirst,
        Mode::DieAfterFirst,
    ]
}

/// Sensitive values, each of a different detector, in plain form.
const SECRETS: &[&str] = &[
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "378282246310005",
    "jane.doe@example.com",
    "+44 20 7946 0958",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
    "10.20.30.40",
    "fe80::1ff:fe23:4567:890a",
];

/// Disguises a value the way an evasive client would; every disguise
/// normalises back to something the detectors must find.
fn disguise(value: &str, how: u8) -> String {
    match how % 6 {
        0 => value.to_owned(),
        // Zero-width spaces and soft hyphens between characters.
        1 => value
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 3 == 1 {
                    format!("\u{200b}{c}")
                } else if i % 4 == 2 {
                    format!("{c}\u{ad}")
                } else {
                    c.to_string()
                }
            })
            .collect(),
        // Fullwidth digits, letters and at sign.
        2 => value
            .chars()
            .map(|c| match c {
                '0'..='9' | 'A'..='Z' | 'a'..='z' | '@' => {
                    char::from_u32(u32::from(c) - 0x21 + 0xff01).unwrap_or(c)
                }
                _ => c,
            })
            .collect(),
        // Other separators between digit groups.
        3 => value.replace(' ', ".").replace('-', "/"),
        4 => value.replace(' ', "\u{a0}"),
        // Lower case.
        _ => value.to_lowercase(),
    }
}

/// Where in the request the value is planted.
const PLACES: usize = 13;

fn plant(place: usize, value: &str, split: usize) -> (Value, Option<String>) {
    let text = |v: &str| format!("Please look at this {v} and reply briefly");
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Reply with one short word"}],
        "max_tokens": 8,
    });
    let mut request_id = None;
    match place {
        0 => body["messages"][0]["content"] = json!(text(value)),
        1 => {
            // Split over two content parts of one message.
            let cut = value
                .char_indices()
                .map(|(i, _)| i)
                .nth(split % value.chars().count())
                .unwrap_or(0);
            let (a, b) = value.split_at(cut);
            body["messages"][0]["content"] = json!([
                {"type": "text", "text": format!("Look at {a}")},
                {"type": "text", "text": format!("{b} please")}
            ]);
        }
        2 => {
            body["messages"] = json!([
                {"role": "system", "content": text(value)},
                {"role": "user", "content": "Reply with one short word"}
            ]);
        }
        3 => {
            body["tools"] = json!([{"type": "function", "function": {
                "name": "lookup", "description": text(value),
                "parameters": {"type": "object", "properties": {}}}}]);
        }
        4 => {
            body["tools"] = json!([{"type": "function", "function": {
                "name": "lookup", "parameters": {"type": "object",
                "properties": {value: {"type": "string"}}}}}]);
        }
        5 => {
            body["response_format"] = json!({"type": "json_schema", "json_schema": {
                "name": "answer", "schema": {"type": "object", "description": text(value)}}});
        }
        6 => body["metadata"] = json!({"note": text(value)}),
        7 => body["user"] = json!(value),
        8 => body["stop"] = json!(["END", value]),
        9 => body["x_vendor_extension"] = json!({"deep": [{"k": text(value)}]}),
        10 => body["prediction"] = json!({"type": "content", "content": text(value)}),
        11 => {
            body["messages"] = json!([
                {"role": "user", "content": "Reply with one short word"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                  "function": {"name": "lookup", "arguments": json!({"q": value}).to_string()}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}
            ]);
        }
        _ => {
            // The request id header, which is forwarded upstream. Only a
            // plain id (letters, digits, `-_.:`) survives the gateway's own
            // check; anything else is replaced, so plant plain values.
            const PLAIN: [&str; 3] = [
                "4111111111111111",
                "DE89370400440532013000",
                "AKIAIOSFODNN7EXAMPLE",
            ];
            request_id = Some(PLAIN[split % PLAIN.len()].to_owned());
        }
    }
    (body, request_id)
}

#[derive(Debug, Clone)]
struct Case {
    secret: Option<(usize, u8, usize, usize)>,
    on_prem: Vec<Mode>,
    cloud_modes: Vec<Mode>,
    cloud_cheaper: bool,
    stream: bool,
    /// A long system message first, which takes the body over
    /// `classify_inline_bytes`: the scan then runs on the classify pool.
    padded: bool,
}

fn cases() -> impl Strategy<Value = Case> {
    let mode = prop::sample::select(modes());
    (
        prop::option::weighted(
            0.85,
            (0..SECRETS.len(), any::<u8>(), 0..PLACES, any::<usize>()),
        ),
        prop::collection::vec(mode.clone(), 0..=3),
        prop::collection::vec(mode, 1..=2),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(secret, on_prem, cloud_modes, cloud_cheaper, stream, padded)| Case {
                secret,
                on_prem,
                cloud_modes,
                cloud_cheaper,
                stream,
                padded,
            },
        )
}

/// One case: its backends, its request, and what must hold.
async fn run_case(
    gw: &Gateway,
    key: &str,
    pool_on_prem: &[StandIn],
    pool_cloud: &[StandIn],
    case: &Case,
    planted_cases: &AtomicUsize,
    controls_in_cloud: &AtomicUsize,
) -> Result<(), TestCaseError> {
    // This case's backends.
    for b in gw.store().list_backends().await.unwrap() {
        gw.store().remove_backend(&b.name).await.unwrap();
    }
    let arm = |up: &StandIn, mode: &Mode| {
        up.set(mode.clone());
        up.url_for(mode)
    };
    for (i, mode) in case.on_prem.iter().enumerate() {
        let url = arm(&pool_on_prem[i], mode);
        gw.store()
            .add_backend(&backend(&format!("edge-{i}"), &url, Zone::OnPrem, 0.0))
            .await
            .unwrap();
    }
    let price = if case.cloud_cheaper { 0.0 } else { 5.0 };
    for (i, mode) in case.cloud_modes.iter().enumerate() {
        let url = arm(&pool_cloud[i], mode);
        gw.store()
            .add_backend(&backend(&format!("cloud-{i}"), &url, Zone::Cloud, price))
            .await
            .unwrap();
    }
    let before: usize = pool_cloud.iter().map(StandIn::count).sum();

    let (mut body, request_id) = match case.secret {
        Some((s, how, place, split)) => plant(place, &disguise(SECRETS[s], how), split),
        None => plant(0, "weather", 0),
    };
    body["stream"] = json!(case.stream);
    if case.padded {
        let long = "The weather is mild today. ".repeat(700);
        let messages = body["messages"].as_array_mut().unwrap();
        messages.insert(0, json!({"role": "system", "content": long}));
    }
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body);
    if let Some(id) = &request_id {
        req = req.header("x-request-id", id);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let class = response
        .headers()
        .get("x-gateway-privacy-class")
        .map(|v| v.to_str().unwrap().to_owned());
    let served_by = response
        .headers()
        .get("x-gateway-backend")
        .map(|v| v.to_str().unwrap().to_owned());
    // Drain the body so a stream runs to its end.
    let _ = response.bytes().await;
    let after: usize = pool_cloud.iter().map(StandIn::count).sum();
    if let Some(id) = &request_id {
        // Not forwarded to any upstream, so the request stays public.
        let leaked = pool_on_prem.iter().chain(pool_cloud).any(|up| {
            up.headers()
                .iter()
                .any(|h| h.get("x-request-id").is_some_and(|v| v == id.as_str()))
        });
        prop_assert!(!leaked, "a client request id was forwarded");
        prop_assert_eq!(class.as_deref(), Some("public"));
    } else if case.secret.is_some() {
        planted_cases.fetch_add(1, Ordering::Relaxed);
        prop_assert_eq!(after, before, "the cloud received a confidential request");
        prop_assert_eq!(class.as_deref(), Some("confidential"), "status {}", status);
        prop_assert!(
            served_by.as_deref().is_none_or(|b| b.starts_with("edge-")),
            "served by {:?}",
            served_by
        );
    } else {
        prop_assert_eq!(class.as_deref(), Some("public"));
        if after > before {
            controls_in_cloud.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[test]
fn nothing_sensitive_reaches_the_cloud_whatever_fails() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = gateway::config::Config {
        // Every case sees its own backend set at once.
        settings_cache_ms: 0,
        poll_interval_ms: 50,
        upstream_first_byte_timeout_ms: 300,
        upstream_idle_timeout_ms: 300,
        unhealthy_cooldown_ms: 20,
        ..test_config()
    };
    let (gw, key, pool_on_prem, pool_cloud) = rt.block_on(async {
        let db = common::sqlite().await;
        let gw = Gateway::start(db, config).await;
        let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
        let mut on_prem = Vec::new();
        for _ in 0..3 {
            on_prem.push(StandIn::start().await);
        }
        let mut cloud = Vec::new();
        for _ in 0..2 {
            cloud.push(StandIn::start().await);
        }
        (gw, key, on_prem, cloud)
    });
    let controls_in_cloud = AtomicUsize::new(0);
    let planted_cases = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&cases(), |case| {
        rt.block_on(run_case(
            &gw,
            &key,
            &pool_on_prem,
            &pool_cloud,
            &case,
            &planted_cases,
            &controls_in_cloud,
        ))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The property is only meaningful if the cloud was reachable: requests
    // without a planted value did get there.
    assert!(planted_cases.load(Ordering::Relaxed) > 40);
    assert!(
        controls_in_cloud.load(Ordering::Relaxed) > 0,
        "no control request reached the cloud; the test proves nothing"
    );
    rt.block_on(async move {
        gw.shutdown().await;
    });
}

//! OpenTelemetry traces across the real gateway binary and the real edge
//! worker binary (the bundled model), exported over OTLP/HTTP protobuf to
//! a receiver in this test on a loopback port.
//!
//! Checks: one trace per request with the gateway's spans (auth, classify,
//! route, one per attempt, ledger) and their attributes, the worker's
//! spans (queue wait, prefill, decode) joined to the gateway's attempt
//! span, a client's `traceparent` accepted as the parent, a cloud backend
//! receiving no trace context at all, and no prompt text, answer text or
//! secret anywhere in the exported bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown,
    clippy::too_many_lines
)]

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::edge::{EdgeWorker, MODEL, WORKER_TOKEN};
use common::harness::{chat_body, edge_backend, header, sse_data, tenant_and_key};
use common::process::GatewayProcess;
use common::stand_in::{backend, closed_port, StandIn};
use gateway::routing::{ModelMapping, Zone};
use gateway::store::Store;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message as _;
use serde_json::json;
use tokio::sync::watch;

/// Text that must never leave in a trace: in prompts, keys and headers.
const PROMPT_CANARY: &str = "PROMPT-CANARY-7c1e9b";
const CLOUD_KEY: &str = "sk-canary-cloud-key-51f0a2d9c4e8";
const CLOUD_KEY_ENV: &str = "TRACES_TEST_CLOUD_KEY";
const BAD_KEY: &str = "sk-canary-unknown-key-0b7d33e1";
const BAGGAGE_CANARY: &str = "BAGGAGE-CANARY-44aa";
const WORKER_SERVICE: &str = "edge-worker-under-test";

/// A client's trace: the gateway's request span must take this parent.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const CLOUD_CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// One exported span, flattened with its service's name.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    status: i32,
    attributes: HashMap<String, Any>,
}

impl Exported {
    fn attr(&self, key: &str) -> &Any {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}: {:?}", self.name, self.attributes))
    }

    fn str(&self, key: &str) -> &str {
        match self.attr(key) {
            Any::StringValue(s) => s,
            other => panic!("{key} of {} is not a string: {other:?}", self.name),
        }
    }

    fn int(&self, key: &str) -> i64 {
        match self.attr(key) {
            Any::IntValue(n) => *n,
            other => panic!("{key} of {} is not an int: {other:?}", self.name),
        }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match self.attr(key) {
            Any::ArrayValue(a) => a
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(Any::StringValue(s)) => s.clone(),
                    other => panic!("{key}: {other:?}"),
                })
                .collect(),
            other => panic!("{key} of {} is not an array: {other:?}", self.name),
        }
    }

    fn floats(&self, key: &str) -> Vec<f64> {
        match self.attr(key) {
            Any::ArrayValue(a) => a
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(Any::DoubleValue(f)) => *f,
                    other => panic!("{key}: {other:?}"),
                })
                .collect(),
            other => panic!("{key} of {} is not an array: {other:?}", self.name),
        }
    }
}

/// What the receiver got: every request body as sent, and the spans.
#[derive(Default)]
struct Received {
    bodies: Vec<Bytes>,
    spans: Vec<Exported>,
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Received>>,
    /// Bumped on every export, so waiting needs no sleep.
    arrivals: watch::Sender<usize>,
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, Any> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.clone()?)))
        .collect()
}

async fn export(
    State(rx): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    // Uncompressed protobuf: the byte search below sees the strings as sent.
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    assert!(headers.get("content-encoding").is_none());
    let request = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
    {
        let mut got = rx.got.lock().unwrap();
        got.bodies.push(body);
        for rs in &request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = match resource.get("service.name") {
                Some(Any::StringValue(s)) => s.clone(),
                _ => String::new(),
            };
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                got.spans.push(Exported {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    kind: span.kind,
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    rx.arrivals.send_modify(|n| *n += 1);
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        Vec::new(),
    )
}

impl Receiver {
    /// An OTLP/HTTP trace receiver on a loopback port; returns it and its
    /// base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` names).
    async fn start() -> (Receiver, String) {
        let rx = Receiver {
            got: Arc::default(),
            arrivals: watch::channel(0).0,
        };
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, url)
    }

    fn spans(&self) -> Vec<Exported> {
        self.got.lock().unwrap().spans.clone()
    }

    /// Waits until `done` holds for the spans received (at most 60 s).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Exported]) -> bool) {
        let mut arrivals = self.arrivals.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if done(&self.spans()) {
                    return;
                }
                arrivals.changed().await.unwrap();
            }
        })
        .await;
        if waited.is_err() {
            let names: Vec<(String, String, String)> = self
                .spans()
                .into_iter()
                .map(|s| (s.service, s.name, s.trace_id))
                .collect();
            panic!("never received {what}; got {names:#?}");
        }
    }
}

fn in_trace<'a>(spans: &'a [Exported], trace: &str) -> Vec<&'a Exported> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn one<'a>(spans: &[&'a Exported], service: &str, name: &str) -> &'a Exported {
    let found: Vec<&&Exported> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name}: {found:#?}");
    found[0]
}

/// A trace holds the gateway's request span and its ledger span (the last
/// to end), and for edge requests the worker's decode span.
fn complete(spans: &[Exported], trace: &str, with_worker: bool) -> bool {
    let t = in_trace(spans, trace);
    let has = |service: &str, name: &str| t.iter().any(|s| s.service == service && s.name == name);
    has("gateway", "POST /v1/chat/completions")
        && has("gateway", "ledger")
        && (!with_worker || has(WORKER_SERVICE, "decode"))
}

/// The gateway's spans of one request and the worker's, linked.
fn check_edge_trace(spans: &[Exported], trace: &str, stream: bool) {
    let t = in_trace(spans, trace);
    let root = one(&t, "gateway", "POST /v1/chat/completions");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(root.str("gen_ai.operation.name"), "chat");
    assert_eq!(root.str("gen_ai.request.model"), MODEL);
    assert_eq!(root.str("gen_ai.response.model"), MODEL);
    assert_eq!(root.int("http.response.status_code"), 200);
    assert_eq!(root.str("gateway.ledger.status"), "ok");
    assert_eq!(root.str("gateway.backend"), "edge");
    assert!(root.int("gen_ai.usage.input_tokens") > 0);
    assert!(root.int("gen_ai.usage.output_tokens") > 0);
    assert_eq!(
        root.attr("gateway.stream"),
        &Any::BoolValue(stream),
        "{root:?}"
    );
    for name in ["auth", "classify", "route", "ledger"] {
        let child = one(&t, "gateway", name);
        assert_eq!(
            child.parent, root.span_id,
            "{name} is a child of the request"
        );
    }
    assert_eq!(one(&t, "gateway", "auth").str("gateway.auth.outcome"), "ok");
    let classify = one(&t, "gateway", "classify");
    assert_eq!(classify.str("gateway.privacy.class"), "public");
    assert!(classify.strings("gateway.privacy.detectors").is_empty());
    assert_eq!(
        classify.attr("gateway.privacy.pooled"),
        &Any::BoolValue(false),
        "a short body is scanned where it is served"
    );

    let route = one(&t, "gateway", "route");
    let candidates = route.strings("gateway.route.candidates");
    assert_eq!(candidates, ["edge", "cloud"], "{route:?}");
    for key in [
        "gateway.route.predicted_latency_ms",
        "gateway.route.predicted_energy_j",
        "gateway.route.predicted_cost_usd",
        "gateway.route.scores",
    ] {
        let values = route.floats(key);
        assert_eq!(values.len(), 2, "{key}");
        assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{key}");
    }
    // The cloud is priced, the edge free: the prediction says so.
    let cost = route.floats("gateway.route.predicted_cost_usd");
    assert!(cost[0] == 0.0 && cost[1] > 0.0, "{cost:?}");
    assert_eq!(route.str("gateway.route.winner"), "edge");
    assert_eq!(route.str("gateway.route.reason"), "lowest_score");

    let attempt = one(&t, "gateway", &format!("chat {MODEL}"));
    assert_eq!(attempt.parent, root.span_id);
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(attempt.str("gen_ai.request.model"), MODEL);
    assert_eq!(attempt.str("gen_ai.provider.name"), "edge_worker");
    assert_eq!(attempt.str("gateway.backend"), "edge");
    assert_eq!(attempt.str("gateway.backend.zone"), "on_prem");
    assert_eq!(attempt.str("gateway.attempt.outcome"), "ok");
    assert_eq!(attempt.int("gateway.attempt"), 1);

    // The worker's spans join the trace under the gateway's attempt.
    let server = one(&t, WORKER_SERVICE, "POST /v1/chat/completions");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        server.parent, attempt.span_id,
        "worker span under the attempt"
    );
    assert_eq!(server.str("gen_ai.response.model"), MODEL);
    assert_eq!(server.str("edge.outcome"), "completed");
    assert_eq!(server.int("http.response.status_code"), 200);
    assert_eq!(
        server.int("gen_ai.usage.output_tokens"),
        root.int("gen_ai.usage.output_tokens"),
        "the gateway's usage is the worker's"
    );
    for name in ["queue wait", "prefill", "decode"] {
        let phase = one(&t, WORKER_SERVICE, name);
        assert_eq!(
            phase.parent, server.span_id,
            "{name} under the worker's span"
        );
    }
    assert_eq!(
        one(&t, WORKER_SERVICE, "queue wait").str("edge.queue.outcome"),
        "slot"
    );
    assert!(one(&t, WORKER_SERVICE, "decode").int("gen_ai.usage.output_tokens") > 0);
}

/// Seeds a SQLite file for the gateway process: the edge worker, a priced
/// cloud (the stand-in, which also serves model `m`) and an unreachable
/// cheaper cloud that `m` tries first.
async fn seed(store: &Store, edge: &str, cloud: &str) -> String {
    store
        .add_backend(&edge_backend("edge", edge))
        .await
        .unwrap();
    let mut priced = backend("cloud", cloud, Zone::Cloud, 1.0);
    priced.api_key_env = Some(CLOUD_KEY_ENV.to_owned());
    priced.models.push(ModelMapping {
        public: MODEL.to_owned(),
        upstream: "m".to_owned(),
    });
    store.add_backend(&priced).await.unwrap();
    let mut down = backend("cloud-down", &closed_port(), Zone::Cloud, 0.01);
    down.api_key_env = Some(CLOUD_KEY_ENV.to_owned());
    store.add_backend(&down).await.unwrap();
    tenant_and_key(store, |_| {}).await.1
}

#[tokio::test]
async fn traces_follow_a_request_from_the_gateway_into_the_edge_worker_and_never_to_the_cloud() {
    let (receiver, otlp) = Receiver::start().await;
    let otel_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        // Spans leave within 100 ms instead of the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut worker_env = otel_env.to_vec();
    worker_env.push(("OTEL_SERVICE_NAME", WORKER_SERVICE));
    let edge = EdgeWorker::start_with_env("127.0.0.1:0", &[], &worker_env).await;
    let cloud = StandIn::start().await;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.db");
    let store = Store::connect(None, &db).await.unwrap();
    store.migrate().await.unwrap();
    let key = seed(&store, &edge.base, &cloud.url).await;
    let mut gateway_env = otel_env.to_vec();
    let db_path = db.to_str().unwrap();
    gateway_env.extend([
        ("GATEWAY_SQLITE_PATH", db_path),
        (CLOUD_KEY_ENV, CLOUD_KEY),
        ("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_MS", "1000"),
    ]);
    let gw = GatewayProcess::start(&gateway_env).await;

    // 1. The edge, non-streaming, inside the client's trace.
    let prompt = format!("Say hi. {PROMPT_CANARY}");
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("traceparent", &traceparent)
        .json(&chat_body(&prompt, 8))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let answer: serde_json::Value = r.json().await.unwrap();
    let answer_text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    // 2. The edge, streaming, in a trace of the gateway's own.
    let mut body = chat_body(&prompt, 8);
    body["stream"] = json!(true);
    let r = gw.chat(&key, &body).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let streamed = sse_data(r).await;
    assert_eq!(streamed.last().map(String::as_str), Some("[DONE]"));

    // 3. The cloud (after the unreachable one failed), with trace context
    //    and baggage from the client.
    //    Its body is over `classify_inline_bytes`, so it is scanned on the
    //    classify pool.
    let mut body = chat_body(&prompt, 8);
    body["model"] = json!("m");
    let long = "The weather is mild today. ".repeat(700);
    body["messages"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"role": "system", "content": long}));
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header(
            "traceparent",
            format!("00-{CLOUD_CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        )
        .header("tracestate", "vendor=client-state")
        .header("baggage", format!("user={BAGGAGE_CANARY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");

    // 4. A key the gateway does not know.
    let r = gw.chat(BAD_KEY, &chat_body(&prompt, 8)).await;
    assert_eq!(r.status(), 401);

    // The cloud never saw trace context, nor anything of the client's.
    let seen = cloud.headers();
    assert_eq!(seen.len(), 1, "one request reached the cloud");
    for headers in &seen {
        for name in otel::CONTEXT_HEADERS {
            assert!(headers.get(name).is_none(), "the cloud received {name}");
        }
        assert!(
            !format!("{headers:?}").contains(BAGGAGE_CANARY),
            "client baggage reached the cloud"
        );
    }

    receiver
        .wait_for("the edge request's trace", |s| {
            complete(s, CLIENT_TRACE, true)
        })
        .await;
    receiver
        .wait_for("the cloud request's trace", |s| {
            complete(s, CLOUD_CLIENT_TRACE, false)
        })
        .await;
    let streamed_trace = |s: &[Exported]| {
        s.iter()
            .find(|x| {
                x.name == "POST /v1/chat/completions"
                    && x.service == "gateway"
                    && x.attributes.get("gateway.stream") == Some(&Any::BoolValue(true))
            })
            .map(|x| x.trace_id.clone())
    };
    receiver
        .wait_for("the streamed request's trace", |s| {
            streamed_trace(s).is_some_and(|t| complete(s, &t, true))
        })
        .await;
    receiver
        .wait_for("the refused request's span", |s| {
            s.iter().any(|x| {
                x.name == "auth"
                    && x.attributes.get("gateway.auth.outcome")
                        == Some(&Any::StringValue("invalid_api_key".into()))
            })
        })
        .await;
    let spans = receiver.spans();

    // 1: the client's trace, continued; its span is the gateway's parent.
    check_edge_trace(&spans, CLIENT_TRACE, false);
    let root = one(
        &in_trace(&spans, CLIENT_TRACE),
        "gateway",
        "POST /v1/chat/completions",
    );
    assert_eq!(
        root.parent, CLIENT_SPAN,
        "the client's traceparent is the parent"
    );

    // 2: a trace of its own, with no parent outside it.
    let t2 = streamed_trace(&spans).unwrap();
    assert_ne!(t2, CLIENT_TRACE);
    check_edge_trace(&spans, &t2, true);
    let root2 = one(
        &in_trace(&spans, &t2),
        "gateway",
        "POST /v1/chat/completions",
    );
    assert!(root2.parent.is_empty(), "{root2:?}");

    // 3: two attempts, the failed one first; nothing from a worker.
    let t3 = in_trace(&spans, CLOUD_CLIENT_TRACE);
    assert!(t3.iter().all(|s| s.service == "gateway"), "{t3:#?}");
    let mut attempts: Vec<&&Exported> = t3.iter().filter(|s| s.name == "chat m").collect();
    attempts.sort_by_key(|s| s.int("gateway.attempt"));
    assert_eq!(attempts.len(), 2, "{t3:#?}");
    assert_eq!(attempts[0].str("gateway.backend"), "cloud-down");
    assert_eq!(attempts[0].str("gateway.backend.zone"), "cloud");
    assert_eq!(attempts[0].str("gateway.attempt.outcome"), "connect");
    assert_eq!(attempts[0].str("error.type"), "connect");
    assert_eq!(attempts[0].status, SpanStatus::Error as i32);
    assert_eq!(attempts[1].str("gateway.backend"), "cloud");
    assert_eq!(attempts[1].str("gen_ai.provider.name"), "openai_compatible");
    assert_eq!(attempts[1].str("gateway.attempt.outcome"), "ok");
    let classify = one(&t3, "gateway", "classify");
    assert_eq!(classify.str("gateway.privacy.class"), "public");
    assert_eq!(
        classify.attr("gateway.privacy.pooled"),
        &Any::BoolValue(true),
        "a long body is scanned on the pool"
    );
    let route = one(&t3, "gateway", "route");
    assert_eq!(
        route.strings("gateway.route.candidates"),
        ["cloud-down", "cloud"]
    );
    assert_eq!(route.str("gateway.route.winner"), "cloud-down");
    let root3 = one(&t3, "gateway", "POST /v1/chat/completions");
    assert_eq!(root3.str("gateway.backend"), "cloud");
    assert_eq!(root3.str("gen_ai.response.model"), "m");

    // Not a prompt, an answer, a key, the worker token or the client's
    // baggage, anywhere in what was exported.
    let bodies = receiver.got.lock().unwrap().bodies.clone();
    assert!(!bodies.is_empty());
    let mut secrets = vec![
        PROMPT_CANARY,
        "Say hi.",
        CLOUD_KEY,
        CLOUD_KEY_ENV,
        BAD_KEY,
        WORKER_TOKEN,
        key.as_str(),
        BAGGAGE_CANARY,
    ];
    // The model's answer, when it is long enough not to occur by chance.
    if answer_text.trim().len() >= 12 {
        secrets.push(answer_text.trim());
    }
    for body in &bodies {
        for secret in &secrets {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} was exported"
            );
        }
    }
}

//! Short load runs against the in-process mock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{default_mock, mock};
use loadtest::loadgen::{LoadConfig, LoadGen};
use loadtest::mock_cloud::Behaviour;

fn config(rate: f64, duration: f64) -> LoadConfig {
    LoadConfig {
        rate,
        duration,
        warmup: 0.0,
        timeout: 5.0,
        ..LoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_sends_every_scheduled_request() {
    let mock = default_mock().await;
    let report = LoadGen::new(config(200.0, 1.0))
        .unwrap()
        .run(&mock.base_url())
        .await
        .unwrap();
    assert_eq!(report.scheduled, 200);
    assert_eq!(report.sent, 200);
    assert_eq!(report.ok, 200, "{report}");
    assert_eq!(report.dropped, 0);
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.latency.count, 200);
    assert!(report.latency.p50_us > 0 && report.latency.p50_us <= report.latency.p99_us);
    assert!(report.achieved_rate > 150.0, "{report}");
    assert!(report.ttft.is_none());
    // The mock saw exactly what the generator sent.
    assert_eq!(mock.stats().requests_total, 200);
    mock.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_run_records_time_to_first_event() {
    let mock = mock(Behaviour {
        ttft_ms: 20,
        tokens_per_second: 500.0,
        ..Behaviour::default()
    })
    .await;
    let report = LoadGen::new(LoadConfig {
        stream: true,
        ..config(100.0, 0.5)
    })
    .unwrap()
    .run(&mock.base_url())
    .await
    .unwrap();
    assert_eq!(report.ok, 50, "{report}");
    let ttft = report.ttft.clone().unwrap();
    assert_eq!(ttft.count, 50);
    // First event at 20 ms; the remaining 15 tokens at 2 ms each after it.
    assert!(ttft.p50_us >= 20_000, "{report}");
    assert!(report.latency.p50_us >= 50_000, "{report}");
    assert!(report.latency.p50_us > ttft.p50_us);
    assert_eq!(mock.stats().streams_completed, 50);
    mock.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_broken_streams_are_counted_by_kind() {
    let mock = default_mock().await;
    let failing = LoadGen::new(LoadConfig {
        headers: vec![r#"x-mock-scenario: {"fail_status":503}"#.into()],
        ..config(100.0, 0.2)
    })
    .unwrap()
    .run(&mock.base_url())
    .await
    .unwrap();
    assert_eq!(failing.ok, 0);
    assert_eq!(failing.errors.get("503"), Some(&20), "{failing}");
    assert_eq!(failing.latency.count, 0);

    let broken = LoadGen::new(LoadConfig {
        stream: true,
        headers: vec![r#"x-mock-scenario: {"drop_after_chunks":2}"#.into()],
        ..config(100.0, 0.2)
    })
    .unwrap()
    .run(&mock.base_url())
    .await
    .unwrap();
    assert_eq!(
        broken.errors.get("incomplete_stream"),
        Some(&20),
        "{broken}"
    );
    mock.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_in_flight_are_dropped_not_queued() {
    let mock = mock(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await;
    let report = LoadGen::new(LoadConfig {
        max_in_flight: 5,
        timeout: 0.5,
        ..config(100.0, 0.3)
    })
    .unwrap()
    .run(&mock.base_url())
    .await
    .unwrap();
    assert_eq!(report.scheduled, 30);
    assert_eq!(report.sent, 5, "{report}");
    assert_eq!(report.dropped, 25);
    assert_eq!(report.errors.get("timeout"), Some(&5), "{report}");
    mock.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_alternates_two_targets() {
    let fast = default_mock().await;
    let slow = mock(Behaviour {
        ttft_ms: 10,
        ..Behaviour::default()
    })
    .await;
    let report = LoadGen::new(LoadConfig {
        round: 0.1,
        ..config(100.0, 0.4)
    })
    .unwrap()
    .compare(&fast.base_url(), &slow.base_url())
    .await
    .unwrap();
    assert_eq!(report.rounds, 4);
    assert_eq!(report.a.ok, 40, "{report}");
    assert_eq!(report.b.ok, 40, "{report}");
    assert_eq!(fast.stats().requests_total, 40);
    assert_eq!(slow.stats().requests_total, 40);
    // B answers 10 ms later than A.
    assert!(report.added.p50_us >= 9_000, "{report}");
    let text = report.to_string();
    assert!(text.contains("B - A"), "{text}");
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert!(json["added"]["p99_us"].is_i64());
    fast.shutdown().await.unwrap();
    slow.shutdown().await.unwrap();
}

//! `/v1/worker/load` is the shared `wire::LoadReport` the gateway parses,
//! from the first poll while the model loads to the measured ready worker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use common::{Worker, MODEL};
use wire::{Capabilities, LoadReport, PrefixCache};

async fn report(w: &Worker) -> LoadReport {
    let response = w.get("/v1/worker/load").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn the_load_report_parses_as_the_wire_type_while_loading_and_after() {
    let w = Worker::spawn(
        &[
            "--max-running",
            "3",
            "--max-waiting",
            "5",
            "--prefix-cache-sequences",
            "6",
            "--prefix-cache-mib",
            "9",
        ],
        &[],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut loading = Vec::new();
    let ready = loop {
        let r = report(&w).await;
        if r.ready {
            break r;
        }
        loading.push(r);
        assert!(Instant::now() < deadline, "not ready within 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The first poll came right after the worker started listening, long
    // before the model could have loaded and warmed up.
    let first = loading.first().expect("a report while loading");
    assert_eq!(first.model, None, "{first:?}");
    assert_eq!(first.context_length, None);
    assert_eq!(first.quantization.as_deref(), Some("Q4_1"));
    assert_eq!(
        (first.max_running_sequences, first.max_waiting_sequences),
        (3, 5)
    );
    assert!(!first.draining && !first.saturated());

    let expected = Capabilities {
        json_schema: true,
        tools: false,
    };
    // SmolLM2-135M: 30 layers × 3 KV heads × (64 + 64) values × 4 bytes
    // = 46,080 bytes of keys and values a token; 9 MiB hold 204 tokens.
    let cache = PrefixCache {
        sequences: 6,
        tokens: 9 * 1024 * 1024 / 46_080,
    };
    for r in loading.iter().chain([&ready]) {
        assert_eq!(r.capabilities, expected);
        assert!(r.energy_method.is_some());
        assert_eq!(r.prefix_cache, Some(cache));
    }
    assert_eq!(ready.model.as_deref(), Some(MODEL));
    assert_eq!(ready.context_length, Some(8192));
    assert_eq!((ready.active_sequences, ready.waiting_sequences), (0, 0));
    assert!(ready.served_quantization.is_some());
    // The warm-up measured the speed before readiness was declared.
    assert!(
        ready.prefill_tokens_per_s.is_some_and(|v| v > 0.0),
        "{ready:?}"
    );
    assert!(
        ready.decode_tokens_per_s.is_some_and(|v| v > 0.0),
        "{ready:?}"
    );
    // Joules per token per load: one entry per running slot, the warm-up
    // (which ran alone) measured at one running, the other loads not yet.
    for r in &loading {
        assert!(
            r.joules_at_running.iter().all(|j| j.output.is_none()),
            "{r:?}"
        );
    }
    assert_eq!(ready.joules_at_running.len(), 3, "{ready:?}");
    let alone = ready.joules_at_running[0];
    assert!(alone.output.is_some(), "{ready:?}");
    assert_eq!(alone.output, ready.joules_per_output_token);
    assert_eq!(alone.prompt, ready.joules_per_prompt_token);
    assert!(
        ready.joules_at_running[1..]
            .iter()
            .all(|j| j.prompt.is_none() && j.output.is_none()),
        "{ready:?}"
    );
}

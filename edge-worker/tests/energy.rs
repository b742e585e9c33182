//! Joules per request from the meter the host offers, whatever that host
//! is: a RAPL counter (here a fake powercap tree that the test advances) or,
//! without one, CPU time. The same figure appears in the body, the headers,
//! the streamed usage chunk, `/metrics` and the load report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{greedy, sse_events, Worker};
use serde_json::{json, Value};

/// A powercap tree with one package domain (and a core sub-domain that must
/// not be counted), whose counter a thread advances by 1 mJ a millisecond
/// (1 W) for as long as it lives.
struct FakeRapl {
    dir: tempfile::TempDir,
    micro_joules: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl FakeRapl {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (domain, name) in [("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core")] {
            let d = dir.path().join(domain);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(d.join("energy_uj"), "0\n").unwrap();
            std::fs::write(d.join("max_energy_range_uj"), "262143328850\n").unwrap();
        }
        let micro_joules = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let files: Vec<PathBuf> = ["intel-rapl:0", "intel-rapl:0:0"]
            .iter()
            .map(|d| dir.path().join(d).join("energy_uj"))
            .collect();
        let thread = {
            let (micro_joules, stop) = (micro_joules.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    let now = micro_joules.fetch_add(1000, Ordering::SeqCst) + 1000;
                    // The sub-domain moves too: summing it would show.
                    for f in &files {
                        write_atomically(f, &format!("{now}\n"));
                    }
                }
            })
        };
        Self {
            dir,
            micro_joules,
            stop,
            thread: Some(thread),
        }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// The counter now, in joules.
    fn joules(&self) -> f64 {
        self.micro_joules.load(Ordering::SeqCst) as f64 / 1e6
    }
}

impl Drop for FakeRapl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sample's value in the Prometheus text (`None` when absent).
fn sample<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(str::trim)
}

/// An integer counter's value (0 when absent).
fn counter(text: &str, name: &str) -> u64 {
    sample(text, name).map_or(0, |v| v.parse().unwrap())
}

/// One answer's joules, checked against its headers; returns them.
async fn answer_joules(w: &Worker, method: &str) -> f64 {
    let response = w.chat(&greedy("Name a large animal.", 16)).await;
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    let (header_joules, header_method) = (header("x-energy-joules"), header("x-energy-method"));
    let body: Value = response.json().await.unwrap();
    let usage = &body["usage"];
    let joules = usage["energy_joules"].as_f64().unwrap();
    assert!(joules > 0.0, "{usage}");
    assert_eq!(usage["energy_method"], method, "{usage}");
    assert_eq!(header_method, method);
    assert_eq!(header_joules, format!("{joules:.3}"));
    joules
}

/// A streamed answer's joules, from its final usage chunk.
async fn streamed_joules(w: &Worker, method: &str) -> f64 {
    let mut body = greedy("Name a small animal.", 16);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(w.chat(&body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let usage = &usage_chunk["usage"];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage["energy_method"], method, "{usage}");
    let joules = usage["energy_joules"].as_f64().unwrap();
    assert!(joules > 0.0, "{usage}");
    joules
}

/// The metrics and the load report agree with the answers' joules: the
/// energy counter is exactly their sum (the warm-up is not a request), and
/// the load report publishes per-token figures from the same meter.
async fn check_metrics_and_load(w: &Worker, method: &str, answers: &[f64]) {
    let metrics = w.metrics().await;
    let millijoules: u64 = answers.iter().map(|j| (j * 1000.0).round() as u64).sum();
    assert_eq!(
        counter(&metrics, "edge_energy_millijoules_total"),
        millijoules
    );
    let sum: f64 = sample(&metrics, "edge_request_joules_sum")
        .unwrap()
        .parse()
        .unwrap();
    assert!((sum - answers.iter().sum::<f64>()).abs() < 1e-9, "{sum}");
    assert_eq!(
        counter(&metrics, "edge_request_joules_count"),
        answers.len() as u64
    );
    let load: wire::LoadReport = serde_json::from_value(w.load().await).unwrap();
    assert_eq!(load.energy_method.as_deref(), Some(method));
    for (name, value) in [
        ("joules_per_prompt_token", load.joules_per_prompt_token),
        ("joules_per_output_token", load.joules_per_output_token),
    ] {
        assert!(value.is_some_and(|j| j > 0.0), "{name}: {load:?}");
    }
}

#[tokio::test]
async fn rapl_counters_give_each_request_its_joules_everywhere() {
    let rapl = FakeRapl::start();
    let w = Worker::start(&["--powercap-dir", rapl.path()]).await;

    let before = rapl.joules();
    let first = answer_joules(&w, "rapl").await;
    let streamed = streamed_joules(&w, "rapl").await;
    let window = rapl.joules() - before;
    // Each request is charged the counter's advance while it ran alone,
    // from the package domain only (the moving sub-domain would double it).
    assert!(
        first + streamed <= window + 1e-9,
        "{first} + {streamed} J charged, {window} J metered while they ran"
    );
    check_metrics_and_load(&w, "rapl", &[first, streamed]).await;
}

#[tokio::test]
async fn without_rapl_counters_cpu_time_is_the_meter() {
    let empty = tempfile::tempdir().unwrap();
    let w = Worker::start(&["--powercap-dir", empty.path().to_str().unwrap()]).await;
    let first = answer_joules(&w, "cpu_time").await;
    let streamed = streamed_joules(&w, "cpu_time").await;
    check_metrics_and_load(&w, "cpu_time", &[first, streamed]).await;
    drop(w);

    let absent = empty.path().join("absent");
    let w = Worker::start(&["--powercap-dir", absent.to_str().unwrap()]).await;
    let joules = answer_joules(&w, "cpu_time").await;
    check_metrics_and_load(&w, "cpu_time", &[joules]).await;
}

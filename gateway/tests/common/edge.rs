//! The real `edge-worker` binary with the real bundled model, as a child
//! process on a loopback port.

#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MODEL: &str = "smollm2-135m-instruct";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The address a child announces as its first stdout line (`<prefix><url>`),
/// as both binaries do once they listen.
pub async fn announced_address(child: &mut Child, prefix: &'static str) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        line
    })
    .await
    .expect("join");
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected first line {line:?}, wanted {prefix:?}"))
        .to_owned()
}

/// `EDGE_WORKER_BIN`, else `<workspace>/target/release/edge-worker`.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("EDGE_WORKER_BIN").map_or_else(
        || workspace().join("target/release/edge-worker"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "edge-worker binary {} missing: run `cargo build --release -p edge-worker` \
         (the test command does) or set EDGE_WORKER_BIN",
        path.display()
    );
    path
}

pub fn model_path() -> PathBuf {
    let path = std::env::var_os("EDGE_TEST_MODEL").map_or_else(
        || workspace().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "model file {} missing: run scripts/fetch-model.sh (the test command does)",
        path.display()
    );
    path
}

/// The fleet's worker token in these tests: every worker requires it, and
/// [`super::harness::test_config`] gives it to the gateway.
pub const WORKER_TOKEN: &str = "test-worker-token-0f1e2d3c4b5a";

pub struct EdgeWorker {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, as the worker prints it.
    pub base: String,
}

impl EdgeWorker {
    /// Starts a worker (one compute thread, so parallel tests share the
    /// CPU fairly) with extra flags and waits until its model is loaded.
    pub async fn start(extra: &[&str]) -> EdgeWorker {
        EdgeWorker::start_on("127.0.0.1:0", extra).await
    }

    /// [`EdgeWorker::start`] on a given address (to restart a worker where
    /// it was).
    pub async fn start_on(listen: &str, extra: &[&str]) -> EdgeWorker {
        EdgeWorker::start_with_env(listen, extra, &[]).await
    }

    /// [`EdgeWorker::start_on`] with extra environment variables.
    pub async fn start_with_env(listen: &str, extra: &[&str], env: &[(&str, &str)]) -> EdgeWorker {
        let mut child = Command::new(binary())
            .env("EDGE_WORKER_TOKEN", WORKER_TOKEN)
            .envs(env.iter().copied())
            .arg("--model-path")
            .arg(model_path())
            .args(["--listen", listen, "--threads", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn edge-worker");
        let base = announced_address(&mut child, "edge-worker listening on ").await;
        let worker = EdgeWorker {
            child: Some(child),
            base,
        };
        worker.wait_ready().await;
        worker
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = format!("{}/readyz", self.base);
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "edge worker not ready within 120 s"
            );
            // The worker has no push signal for "model loaded".
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the worker: a stopped worker
    /// keeps its connections open and answers nothing, as a wedged host.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{signal} failed");
        }
    }

    /// SIGKILL: the process dies at once, mid-request if one is running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EdgeWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

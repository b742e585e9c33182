//! Test harness: runs the real `edge-worker` binary on a loopback port with
//! the real bundled model, and talks to it over HTTP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The bundled model, fetched by `scripts/fetch-model.sh`. Tests fail (never
/// skip) without it.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("EDGE_TEST_MODEL").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "model file {} missing: run scripts/fetch-model.sh (the test command does)",
        path.display()
    );
    path
}

pub const MODEL: &str = "smollm2-135m-instruct";

pub struct Worker {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    /// Sent as `Authorization: Bearer` by [`Worker::chat`], [`Worker::get`]
    /// and [`Worker::load`] when set.
    pub token: Option<String>,
}

impl Worker {
    /// Starts a worker with extra flags and waits until it is ready.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[]).await
    }

    /// Starts a worker with extra flags and environment variables and waits
    /// until it is ready.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let worker = Self::spawn(extra, env).await;
        worker.wait_ready().await;
        worker
    }

    /// Starts a worker with extra flags and environment variables and
    /// returns once it listens, while the model is still loading. Listens on
    /// a loopback port unless `extra` names `--listen`; a worker token in the
    /// test's own environment is not inherited.
    pub async fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edge-worker"));
        command
            .arg("--model-path")
            .arg(model_path())
            .env_remove("EDGE_WORKER_TOKEN")
            .env_remove("EDGE_WORKER_TOKEN_FILE")
            .env_remove("EDGE_INSECURE_NO_TOKEN")
            .envs(env.iter().copied());
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn edge-worker");
        let stdout = child.stdout.take().unwrap();
        // The worker prints its bound address as its first stdout line.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let base = line
            .trim()
            .strip_prefix("edge-worker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Self {
            child,
            base,
            client: reqwest::Client::new(),
            token: None,
        }
    }

    /// Sends this token with the harness's requests from now on.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "worker not ready within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the worker has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which is in parentheses and may
        // hold spaces): utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // Linux reports these in USER_HZ, 100 on every supported platform.
        ticks / 100.0
    }

    /// The worker's resident memory now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib / 1024.0
    }

    /// The text of a successful chat completion.
    pub async fn content(&self, body: &Value) -> String {
        let response = self.chat(body).await;
        assert_eq!(response.status(), 200);
        let v: Value = response.json().await.unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.authorized(self.client.post(self.url("/v1/chat/completions")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.authorized(self.client.get(self.url(path)))
            .send()
            .await
            .unwrap()
    }

    pub async fn load(&self) -> Value {
        self.get("/v1/worker/load").await.json().await.unwrap()
    }

    /// The Prometheus exposition text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Sends SIGTERM and waits, at most a minute, for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit(Duration::from_secs(60))
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; a worker still running after `within`
    /// fails the test (and is killed by `Drop`) instead of hanging the suite.
    pub fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::mem::forget(self);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} still running {within:?} after the signal",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bounded greedy chat request.
pub fn greedy(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

/// Reads a whole SSE response into its `data:` payloads.
pub async fn sse_events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_string()))
        })
        .collect()
}

/// A whole chat SSE response, which must end with `[DONE]`: its chunks, and
/// the text their deltas carry, concatenated.
pub async fn sse_chunks(response: reqwest::Response) -> (Vec<Value>, String) {
    let events = sse_events(response).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (chunks, text)
}

/// Polls the load report until `pred` holds or `within` passes.
pub async fn wait_load(worker: &Worker, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let load = worker.load().await;
        if pred(&load) || Instant::now() >= deadline {
            return load;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

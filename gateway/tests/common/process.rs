//! The real `gateway` binary as a child process (`gateway serve` on a
//! loopback port), for tests that need several gateways on one database
//! and one Redis, or that kill one.

#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::edge::{announced_address, WORKER_TOKEN};

pub struct GatewayProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, as the gateway prints it.
    pub base: String,
    pub client: reqwest::Client,
}

impl GatewayProcess {
    /// Starts `gateway serve` with the fleet's worker token, short caches,
    /// fast polling and `env` (`GATEWAY_*` settings), and waits until it
    /// answers `/readyz`. Its logs go to stderr only when
    /// `TEST_GATEWAY_LOGS` is set.
    pub async fn start(env: &[(&str, &str)]) -> GatewayProcess {
        let logs = if std::env::var_os("TEST_GATEWAY_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("serve")
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_WORKER_TOKEN", WORKER_TOKEN)
            .env("GATEWAY_KEY_CACHE_MS", "200")
            .env("GATEWAY_SETTINGS_CACHE_MS", "100")
            .env("GATEWAY_POLL_INTERVAL_MS", "100")
            .env("GATEWAY_POLL_TIMEOUT_MS", "5000")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(logs)
            .spawn()
            .expect("spawn gateway");
        let base = announced_address(&mut child, "gateway listening on ").await;
        let gw = GatewayProcess {
            child: Some(child),
            base,
            client: reqwest::Client::new(),
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "gateway not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn chat(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The value of an unlabelled gauge or counter in `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
    }

    /// Polls `/metrics` until `name` satisfies `pred` (the gateway has no
    /// push signal for what it has seen of the fleet).
    pub async fn wait_metric(&self, name: &str, pred: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.metric(name).await;
            if v.is_some_and(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never matched at {}: {v:?}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits up to `within` for the process to exit; its
    /// exit status, or `None` when it was still running (it is then
    /// killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = child.try_wait().expect("wait for gateway") {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            // A child's exit has no async signal here but `try_wait`.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process dies at once, with whatever it held.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the gateway binary's admin command `args` against the database at
/// `url`, and fails the test with its stderr if the command fails.
pub fn admin(url: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--database-url", url])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! A private `redis-server` on a free loopback port (no persistence), which
//! a test may pause (SIGSTOP: connections stay open and commands queue
//! unanswered, as with a Redis that hangs), resume, or kill. The shared
//! test Redis must not be treated that way.
//!
//! When `redis-server` is missing it is installed from Debian's
//! `redis-server` package, as `scripts/services.sh` does.

#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// Starts the server on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        ensure_installed();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.connection().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} not answering within 30 s"
            );
            // No readiness signal but the port answering.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// SIGSTOP: the server stops answering; its port still accepts
    /// connections and its state is kept.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT: the server answers again, the commands that queued first.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGKILL (works on a paused server too).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ensure_installed() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let run = |args: &[&str]| {
        let mut cmd = if root {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        } else {
            let mut c = Command::new("sudo");
            c.args(args);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        let out = cmd.output().expect("run apt-get");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["apt-get", "update", "-qq"]);
    run(&["apt-get", "install", "-y", "-qq", "redis-server"]);
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

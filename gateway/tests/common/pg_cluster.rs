//! A private Postgres cluster in a temporary directory on a free loopback
//! port, which a test may stop, start and restart at will (the shared
//! test Postgres must not be touched that way).
//!
//! The server binaries come from `/usr/lib/postgresql/<version>/bin`; when
//! they are missing they are installed from Debian's `postgresql` package,
//! as `scripts/services.sh` does. Postgres refuses to run as root, so as
//! root every command runs as the `postgres` user that package creates.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    /// Creates the cluster, starts it, and creates the `gateway` database.
    pub async fn start() -> PgCluster {
        tokio::task::spawn_blocking(PgCluster::create)
            .await
            .unwrap()
            .ready()
            .await
    }

    fn create() -> PgCluster {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("gw-pg-")
            .tempdir()
            .expect("temp dir for postgres");
        if is_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()));
        }
        let port = free_port();
        let cluster = PgCluster { dir, bin, port };
        cluster.run_pg(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        // Loopback only, its own socket directory, and no fsync: the tests
        // stop the server, they do not cut the machine's power.
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 60\nshared_buffers = 16MB\n",
            cluster.dir.path().display()
        );
        let conf_path = Path::new(&cluster.data()).join("postgresql.auto.conf");
        std::fs::write(&conf_path, conf).expect("write postgresql.auto.conf");
        if is_root() {
            run(Command::new("chown").arg("postgres:").arg(&conf_path));
        }
        cluster.start_blocking();
        cluster
    }

    async fn ready(self) -> PgCluster {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to the private postgres");
        sqlx::query("CREATE DATABASE gateway")
            .execute(&mut conn)
            .await
            .expect("create database");
        let _ = conn.close().await;
        self
    }

    /// The gateway's database in this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/gateway", self.port)
    }

    /// Stops the server (fast mode: open connections are cut, as in a
    /// real restart), waiting until it is down.
    pub async fn stop(&self) {
        let (bin, data) = (self.bin.clone(), self.data());
        tokio::task::spawn_blocking(move || {
            run_pg_at(&bin, "pg_ctl", &["stop", "-D", &data, "-m", "fast", "-w"]);
        })
        .await
        .unwrap();
    }

    /// Starts the server again, waiting until it accepts connections.
    pub async fn resume(&self) {
        let (bin, data, log) = (self.bin.clone(), self.data(), self.log());
        tokio::task::spawn_blocking(move || start_at(&bin, &data, &log))
            .await
            .unwrap();
    }

    fn start_blocking(&self) {
        start_at(&self.bin, &self.data(), &self.log());
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    fn run_pg(&self, program: &str, args: &[&str]) {
        run_pg_at(&self.bin, program, args);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let mut cmd = pg_command(&self.bin, "pg_ctl");
        cmd.args(["stop", "-D", &data, "-m", "immediate", "-w"]);
        let _ = cmd.output();
    }
}

fn start_at(bin: &Path, data: &str, log: &str) {
    run_pg_at(
        bin,
        "pg_ctl",
        &["start", "-D", data, "-l", log, "-w", "-t", "60"],
    );
}

fn run_pg_at(bin: &Path, program: &str, args: &[&str]) {
    let mut cmd = pg_command(bin, program);
    cmd.args(args);
    run(&mut cmd);
}

/// `bin/program`, run as `postgres` when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    cmd.current_dir(std::env::temp_dir());
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `pg_ctl`,
/// installing the server first if there is none.
fn server_bin_dir() -> PathBuf {
    if let Some(dir) = find_server_bin() {
        return dir;
    }
    let sudo = |args: &[&str]| {
        let mut cmd = if is_root() {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        } else {
            let mut c = Command::new("sudo");
            c.args(args);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd);
    };
    sudo(&["apt-get", "update", "-qq"]);
    sudo(&["apt-get", "install", "-y", "-qq", "postgresql"]);
    find_server_bin().expect("postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl")
}

fn find_server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

//! The `gateway` binary: `serve`, `migrate` and the administration
//! subcommands. Configuration comes from `--config` (TOML) and `GATEWAY_*`
//! variables (see `gateway::config::Config`); the flags below override both.

#![allow(clippy::doc_markdown)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::admin_cli::{self, AdminCommand};
use gateway::config::Config;
use secrecy::SecretString;

/// mimalloc rather than the system allocator: a request makes a few hundred
/// short-lived allocations across two or more threads, and glibc's malloc
/// spent about a tenth of the gateway's CPU on them under load. Built
/// without transparent huge pages (`no_thp`): with them its arenas are
/// backed 2 MiB at a time, and the resident set doubled.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "OpenAI-compatible cloud-edge inference gateway"
)]
struct Cli {
    /// TOML config file; every field can also be set as GATEWAY_<FIELD>.
    #[arg(long, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Postgres URL (overrides the config); embedded SQLite when absent.
    #[arg(long, global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// SQLite file used when no database URL is given (overrides the config).
    #[arg(long, global = true)]
    sqlite_path: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve {
        /// Listen address (overrides the config); port 0 picks a free one.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// What running at the edge saved against all-cloud (USD, joules,
    /// CO2), per tenant and period, from the ledger.
    Report(gateway::report::ReportArgs),
    #[command(flatten)]
    Admin(AdminCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config =
        Config::from_env(cli.config.as_deref()).context("cannot load the configuration")?;
    if let Some(url) = cli.database_url {
        config.database_url = Some(SecretString::from(url));
    }
    if let Some(path) = cli.sqlite_path {
        config.sqlite_path = path;
    }
    match cli.command {
        Command::Serve { listen } => {
            if let Some(addr) = listen {
                config.listen = addr;
            }
            config
                .load_worker_token()
                .context("cannot read the worker token")?;
            let traces =
                gateway::telemetry::init(config.log_format).context("cannot start traces")?;
            let served = gateway::server::serve(config, shutdown_signal()).await;
            if let Some(traces) = traces {
                // Sends the spans still queued; blocking, so off the runtime.
                let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
            }
            served.context("gateway serve failed")
        }
        Command::Report(args) => {
            let store = gateway::server::open_store(&config)
                .await
                .context("cannot open the database")?;
            let mut stdout = std::io::stdout().lock();
            let now = gateway::store::now_ms();
            let result =
                gateway::report::run(&store, &args, config.grid_gco2_per_kwh, now, &mut stdout)
                    .await;
            store.close().await;
            result.map_err(anyhow::Error::from)
        }
        Command::Admin(command) => {
            // The URL may carry a password, so errors name the database kind only.
            let store = gateway::server::open_store(&config)
                .await
                .context("cannot open the database")?;
            let mut stdout = std::io::stdout().lock();
            let result = admin_cli::run(&store, command, &mut stdout).await;
            store.close().await;
            result.map_err(anyhow::Error::from)
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                () = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    ctrl_c.await;
}

//! `mock-cloud`: serves the mock `OpenAI`-compatible cloud until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use loadtest::mock_cloud::{MockCloud, MockConfig};

/// A mock `OpenAI`-compatible cloud for tests and benchmarks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: MockConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    let mock = match MockCloud::start(cli.config).await {
        Ok(mock) => mock,
        Err(error) => {
            eprintln!("mock-cloud: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts read this line to learn the port when they asked for port 0.
    println!("mock-cloud listening on {}", mock.base_url());
    shutdown_signal().await;
    match mock.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mock-cloud: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

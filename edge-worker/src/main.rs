//! The edge worker's entry point: parse configuration, set up logging, run.

use clap::Parser;
use edge_worker::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    // Thread counts must be fixed before any pool starts.
    edge_worker::server::configure_threads(config.threads);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,mistralrs_core=warn,mistralrs_quant=warn,candle_core=warn")
    });
    let format = if config.log_json {
        otel::LogFormat::Json
    } else {
        otel::LogFormat::Text
    };
    // Traces only when the standard OTEL_EXPORTER_OTLP_*ENDPOINT variables
    // ask for them (see the otel crate); logs either way.
    let traces = otel::Traces::from_env("edge-worker");
    let exporting = traces.as_ref().ok().and_then(Option::as_ref);
    otel::install(filter, format, exporting);
    let traces = match traces {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("edge-worker: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge-worker: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(edge_worker::run(config));
    drop(runtime);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `loadgen`: drives one target, or two in alternating rounds, at a fixed
//! open-loop rate and prints percentiles.

use std::process::ExitCode;

use clap::Parser;
use loadtest::loadgen::{LoadConfig, LoadError, LoadGen};

/// Open-loop load generator for `OpenAI`-compatible chat endpoints.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Target: a chat completions URL, or a base URL ending in /v1.
    #[arg(long, required_unless_present = "compare", conflicts_with = "compare")]
    url: Option<String>,
    /// Compare two targets (A = baseline, B = candidate) in alternating rounds.
    #[arg(long, num_args = 2, value_names = ["URL_A", "URL_B"])]
    compare: Option<Vec<String>>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads; one is plenty at a few thousand requests per
    /// second and leaves the other cores to the system under test.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    config: LoadConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(&cli)),
        Err(error) => Err(error.to_string()),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<String, String> {
    let generator = LoadGen::new(cli.config.clone()).map_err(|e| e.to_string())?;
    let text = |e: LoadError| e.to_string();
    let json = |e: serde_json::Error| e.to_string();
    match (&cli.compare, &cli.url) {
        (Some(pair), _) => {
            let [a, b] = pair.as_slice() else {
                return Err("--compare takes two URLs".into());
            };
            let report = generator.compare(a, b).await.map_err(text)?;
            if cli.json {
                serde_json::to_string_pretty(&report).map_err(json)
            } else {
                Ok(report.to_string())
            }
        }
        (None, Some(url)) => {
            let report = generator.run(url).await.map_err(text)?;
            if cli.json {
                serde_json::to_string_pretty(&report).map_err(json)
            } else {
                Ok(report.to_string())
            }
        }
        (None, None) => Err("give --url or --compare".into()),
    }
}

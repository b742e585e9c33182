//! `loadgen`: drives one target, or two in alternating rounds, at a fixed
//! open-loop rate and prints percentiles; or drives one target through a
//! scenario file and writes a report with plots.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::Parser;
use loadtest::loadgen::{fetch_ledger, scenario, Digest, LoadConfig, LoadError, LoadGen, Scenario};

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
    /// Run this scenario file against --url instead of a fixed rate (see
    /// loadtest/scenarios/); --rate and --duration are then unused.
    #[arg(long, requires = "url")]
    scenario: Option<PathBuf>,
    /// Where the scenario's report goes (report.md, plots, JSON, CSV).
    #[arg(long, default_value = "target/loadtest", requires = "scenario")]
    out: PathBuf,
    /// Multiplies every rate of the scenario (e.g. by the measured capacity
    /// of the fleet under test).
    #[arg(long, default_value_t = 1.0, requires = "scenario")]
    scale: f64,
    /// Seed of the scenario's privacy-class draws.
    #[arg(long, default_value_t = 1, requires = "scenario")]
    seed: u64,
    /// Gateway admin token: the report then joins each request with its
    /// ledger row (zone, energy, cost, privacy class).
    #[arg(
        long,
        env = "LOADGEN_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "scenario"
    )]
    admin_token: Option<String>,
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
    if let (Some(path), Some(url)) = (&cli.scenario, &cli.url) {
        return run_scenario(cli, path, url).await;
    }
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

async fn run_scenario(cli: &Cli, path: &std::path::Path, url: &str) -> Result<String, String> {
    let text = |e: LoadError| e.to_string();
    let scenario = Scenario::load(path).map_err(text)?;
    let name = scenario.name.clone();
    let run = scenario::run(scenario, &cli.config, url, cli.scale, cli.seed)
        .await
        .map_err(text)?;
    let ledger = match &cli.admin_token {
        Some(token) => {
            // The gateway writes its ledger in batches: read until every
            // answered request's row is there, for up to half a minute.
            let wanted: Vec<&str> = run
                .samples
                .iter()
                .filter_map(|s| s.ledger_id.as_deref())
                .collect();
            let client = reqwest::Client::new();
            let mut tries = 0;
            loop {
                let ledger =
                    fetch_ledger(&client, url, token, run.started_unix_ms, run.ended_unix_ms)
                        .await
                        .map_err(|e| format!("reading the ledger: {e}"))?;
                let missing = wanted
                    .iter()
                    .filter(|id| !ledger.rows.contains_key(**id))
                    .count();
                tries += 1;
                if missing == 0 || tries == 30 {
                    if missing > 0 {
                        eprintln!("loadgen: {missing} answered requests have no ledger row");
                    }
                    break Some(ledger);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        None => None,
    };
    let digest = Digest::of(&run, ledger.as_ref());
    let dir = cli.out.join(&name);
    digest
        .write(&run, ledger.as_ref(), &dir)
        .map_err(|e| format!("writing the report to {}: {e}", dir.display()))?;
    if cli.json {
        return serde_json::to_string_pretty(&digest).map_err(|e| e.to_string());
    }
    Ok(format!(
        "{}\nreport: {}",
        digest.markdown(),
        dir.join("report.md").display()
    ))
}

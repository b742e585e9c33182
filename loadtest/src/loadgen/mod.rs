//! An open-loop HTTP load generator for `OpenAI`-style chat endpoints.
//!
//! Requests leave on a fixed schedule whatever the responses do (the
//! `schedule` module explains why), over a keep-alive connection pool. Results are
//! HDR-histogram percentiles in microseconds plus error counts.
//!
//! [`LoadGen::compare`] drives two targets with the same schedule in short
//! alternating rounds (A B B A A B B A …) inside one run. On a shared,
//! noisy machine, two separate runs minutes apart differ by more than the
//! sub-millisecond overhead being measured; interleaving exposes both targets
//! to the same noise, and the ABBA order cancels a steady drift.
//!
//! [`scenario::run`] drives one target through a scenario file (phases,
//! privacy mix, events) and [`Digest`] turns the run into a report with
//! plots.

mod digest;
mod plot;
mod report;
mod request;
pub mod scenario;
mod schedule;
mod table;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};

pub use digest::{fetch_ledger, Digest, Ledger};
pub use report::{Added, CompareReport, Percentiles, RunReport};
pub use request::RequestSpec;
pub use scenario::{Scenario, ScenarioRun};

use report::Recorder;
use schedule::{run_phase, Driver, Phase};

/// How to load a target.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadConfig {
    /// Requests per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of measured load (per target in compare mode).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of unmeasured load first (per target), to open connections and warm caches.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Outstanding requests past which scheduled requests are dropped and counted.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Ask for SSE streams and record the time to the first event.
    #[arg(long)]
    pub stream: bool,
    /// JSON request body to send instead of the built-in chat request.
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// Model of the built-in chat request.
    #[arg(long, default_value = "mock-model")]
    pub model: String,
    /// `max_tokens` of the built-in chat request.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// Bearer key sent in `Authorization`.
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Extra request header, `name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Seconds before one request counts as a `timeout` error.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Seconds per round in compare mode.
    #[arg(long, default_value_t = 1.0)]
    pub round: f64,
    /// Compare mode: also write every successful measured request as a CSV
    /// line `side,due_us,latency_us` (side `a` or `b`; due times in
    /// microseconds from the first due request, one clock for both sides),
    /// to tie slow requests to when they were due.
    #[arg(long, value_name = "FILE")]
    pub series: Option<PathBuf>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            rate: 100.0,
            duration: 10.0,
            warmup: 1.0,
            max_in_flight: 1024,
            stream: false,
            body: None,
            model: "mock-model".to_owned(),
            max_tokens: 16,
            api_key: None,
            headers: Vec::new(),
            timeout: 30.0,
            round: 1.0,
            series: None,
        }
    }
}

/// Why a load run could not be set up or finished.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The body file could not be read.
    #[error("cannot read body file {path}: {source}")]
    BodyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The body file is not a JSON object.
    #[error("body file is not a JSON object: {0}")]
    BodyJson(#[from] serde_json::Error),
    /// The target URL is invalid.
    #[error("invalid target URL {0}")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// A histogram could not be created.
    #[error("cannot create a histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// The dispatch thread failed.
    #[error("dispatch thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The series file could not be written.
    #[error("cannot write the series file {path}: {source}")]
    Series {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A configured load generator; cheap to reuse for several runs.
pub struct LoadGen {
    config: LoadConfig,
    client: reqwest::Client,
    spec: Arc<RequestSpec>,
}

impl LoadGen {
    /// Checks the configuration, builds the request and the client.
    pub fn new(config: LoadConfig) -> Result<Self, LoadError> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(LoadError::Config(format!(
                    "{name} must be a positive number"
                )))
            }
        };
        positive("rate", config.rate)?;
        positive("duration", config.duration)?;
        positive("timeout", config.timeout)?;
        positive("round", config.round)?;
        if !config.warmup.is_finite() || config.warmup < 0.0 {
            return Err(LoadError::Config("warmup must be >= 0".into()));
        }
        if config.max_in_flight == 0 {
            return Err(LoadError::Config("max-in-flight must be at least 1".into()));
        }
        let spec = Arc::new(request_spec(&config)?);
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(config.max_in_flight)
            .timeout(Duration::from_secs_f64(config.timeout))
            .build()?;
        Ok(Self {
            config,
            client,
            spec,
        })
    }

    /// The request every run sends.
    #[must_use]
    pub fn spec(&self) -> &RequestSpec {
        &self.spec
    }

    /// Drives `url` for the warmup and then the measured duration.
    pub async fn run(&self, url: &str) -> Result<RunReport, LoadError> {
        let driver = self.driver(url)?;
        let measured = Phase {
            rate: self.config.rate,
            duration: Duration::from_secs_f64(self.config.duration),
        };
        self.warm(&driver).await?;
        let recorder = Arc::new(Recorder::new()?);
        run_phase(&driver, &measured, &recorder).await?;
        Ok(recorder.report(url, self.spec.stream, self.config.rate))
    }

    /// Drives `a` and `b` in alternating rounds (A B B A …), each for the
    /// measured duration in total, and reports B's latency over A's.
    pub async fn compare(&self, a: &str, b: &str) -> Result<CompareReport, LoadError> {
        let drivers = [self.driver(a)?, self.driver(b)?];
        for driver in &drivers {
            self.warm(driver).await?;
        }
        let rounds = (self.config.duration / self.config.round).ceil().max(1.0) as u32;
        let round = Phase {
            rate: self.config.rate,
            duration: Duration::from_secs_f64(self.config.duration / f64::from(rounds)),
        };
        let recorder = || {
            if self.config.series.is_some() {
                Recorder::with_series()
            } else {
                Recorder::new()
            }
        };
        let recorders = [Arc::new(recorder()?), Arc::new(recorder()?)];
        for r in 0..rounds {
            let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                run_phase(&drivers[i], &round, &recorders[i]).await?;
            }
        }
        if let Some(path) = &self.config.series {
            write_series(
                path,
                &recorders[0].take_series(),
                &recorders[1].take_series(),
            )
            .map_err(|source| LoadError::Series {
                path: path.clone(),
                source,
            })?;
        }
        let stream = self.spec.stream;
        let report_a = recorders[0].report(a, stream, self.config.rate);
        let report_b = recorders[1].report(b, stream, self.config.rate);
        let ttft_added = match (&report_a.ttft, &report_b.ttft) {
            (Some(ta), Some(tb)) => Some(Added::between(ta, tb)),
            _ => None,
        };
        Ok(CompareReport {
            rounds,
            added: Added::between(&report_a.latency, &report_b.latency),
            ttft_added,
            a: report_a,
            b: report_b,
        })
    }

    async fn warm(&self, driver: &Arc<Driver>) -> Result<(), LoadError> {
        if self.config.warmup <= 0.0 {
            return Ok(());
        }
        let phase = Phase {
            rate: self.config.rate,
            duration: Duration::from_secs_f64(self.config.warmup),
        };
        run_phase(driver, &phase, &Arc::new(Recorder::new()?)).await?;
        Ok(())
    }

    fn driver(&self, url: &str) -> Result<Arc<Driver>, LoadError> {
        Ok(Arc::new(Driver {
            client: self.client.clone(),
            url: endpoint(url)?,
            spec: self.spec.clone(),
            max_in_flight: self.config.max_in_flight,
        }))
    }
}

/// Writes both sides' samples as `side,due_us,latency_us` lines, in due
/// order, due times counted from the earliest of either side.
fn write_series(
    path: &std::path::Path,
    a: &[(Instant, u64)],
    b: &[(Instant, u64)],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut rows: Vec<(Instant, &str, u64)> = a
        .iter()
        .map(|&(due, us)| (due, "a", us))
        .chain(b.iter().map(|&(due, us)| (due, "b", us)))
        .collect();
    rows.sort_by_key(|&(due, _, _)| due);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "side,due_us,latency_us")?;
    if let Some(&(epoch, _, _)) = rows.first() {
        for (due, side, us) in rows {
            writeln!(out, "{side},{},{us}", (due - epoch).as_micros())?;
        }
    }
    out.flush()
}

/// The chat completions URL for `url`: an `OpenAI` base URL (ending in `/v1`)
/// gets `/chat/completions` appended; any other URL is used as given.
pub fn endpoint(url: &str) -> Result<reqwest::Url, LoadError> {
    let trimmed = url.trim_end_matches('/');
    let full = if trimmed.ends_with("/v1") {
        format!("{trimmed}/chat/completions")
    } else {
        url.to_owned()
    };
    reqwest::Url::parse(&full).map_err(|e| LoadError::Url(format!("{url}: {e}")))
}

/// Builds the body and headers from the configuration. With `--stream` the
/// body gets `"stream": true` and, unless it sets its own,
/// `"stream_options": {"include_usage": true}`; a body file that already asks
/// for a stream is read as one too.
pub fn request_spec(config: &LoadConfig) -> Result<RequestSpec, LoadError> {
    let mut body: Value = match &config.body {
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| LoadError::BodyFile {
                path: path.clone(),
                source,
            })?;
            serde_json::from_slice(&text)?
        }
        None => json!({
            "model": config.model,
            "messages": [{"role": "user", "content": "Say something short about load testing."}],
            "max_tokens": config.max_tokens,
        }),
    };
    let Some(fields) = body.as_object_mut() else {
        return Err(LoadError::Config(
            "the request body must be a JSON object".into(),
        ));
    };
    if config.stream {
        fields.insert("stream".into(), Value::Bool(true));
        fields
            .entry("stream_options")
            .or_insert_with(|| json!({"include_usage": true}));
    }
    let stream = fields
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &config.api_key {
        let mut value = HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| LoadError::Config("the API key is not a valid header value".into()))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    for line in &config.headers {
        let bad = || LoadError::Config(format!("header {line:?} is not `name: value`"));
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::try_from(name.trim()).map_err(|_| bad())?;
        let value = HeaderValue::try_from(value.trim()).map_err(|_| bad())?;
        headers.append(name, value);
    }
    Ok(RequestSpec {
        body: Bytes::from(serde_json::to_vec(&body)?),
        headers,
        stream,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn series_lists_both_sides_in_due_order_from_the_first() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let dir = std::env::temp_dir().join(format!("series-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("series.csv");
        write_series(&path, &[(at(5), 300), (at(1), 200)], &[(at(3), 900)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "side,due_us,latency_us\na,0,200\nb,2000,900\na,4000,300\n"
        );
    }

    #[test]
    fn endpoint_appends_to_base_urls_only() {
        let e = |u| endpoint(u).unwrap().to_string();
        assert_eq!(e("http://h:1/v1"), "http://h:1/v1/chat/completions");
        assert_eq!(e("http://h:1/v1/"), "http://h:1/v1/chat/completions");
        assert_eq!(
            e("http://h:1/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert!(endpoint("not a url").is_err());
    }

    #[test]
    fn spec_sets_stream_and_headers() {
        let config = LoadConfig {
            stream: true,
            api_key: Some("k".into()),
            headers: vec!["x-mock-scenario: {\"ttft_ms\":1}".into()],
            ..LoadConfig::default()
        };
        let spec = request_spec(&config).unwrap();
        assert!(spec.stream);
        let body: Value = serde_json::from_slice(&spec.body).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 16);
        assert_eq!(spec.headers[AUTHORIZATION], "Bearer k");
        assert_eq!(spec.headers["x-mock-scenario"], "{\"ttft_ms\":1}");
        let bad = LoadConfig {
            headers: vec!["no colon".into()],
            ..LoadConfig::default()
        };
        assert!(request_spec(&bad).is_err());
    }

    #[test]
    fn settings_are_checked() {
        for config in [
            LoadConfig {
                rate: 0.0,
                ..LoadConfig::default()
            },
            LoadConfig {
                duration: f64::NAN,
                ..LoadConfig::default()
            },
            LoadConfig {
                max_in_flight: 0,
                ..LoadConfig::default()
            },
            LoadConfig {
                warmup: -1.0,
                ..LoadConfig::default()
            },
        ] {
            assert!(matches!(LoadGen::new(config), Err(LoadError::Config(_))));
        }
    }
}

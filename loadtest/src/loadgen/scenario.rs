//! Scenarios kept as files: a TOML description of phases of open-loop
//! traffic (steady, ramped), the privacy mix of the requests, and commands
//! run at given moments (to stop an edge worker mid-run, say). The same
//! file drives the local-process topology or the compose one; only the
//! target URL, `--scale` and the commands' environment differ.
//!
//! ```toml
//! name = "burst"
//! description = "A quiet minute, a burst at three times the rate, quiet again."
//! max_tokens = 16
//! stream = true
//!
//! [mix]                 # weights of the `x-privacy-class` a request carries
//! public = 0.8
//! confidential = 0.2
//!
//! [[phase]]
//! name = "quiet"
//! seconds = 20
//! rate = 2.0            # requests per second (times --scale)
//!
//! [[phase]]
//! name = "burst"
//! seconds = 10
//! rate = 6.0
//! rate_to = 2.0         # optional: the rate moves linearly to this
//!
//! [[event]]
//! at = 25.0             # seconds from the start
//! run = "eval \"$WORKER_LOSS\""   # `sh -c`, with the loadgen's environment
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::report::{Outcome, Route};
use super::schedule::{dispatch, Driver, Sink};
use super::{LoadConfig, LoadError, LoadGen};

/// Longest scenario accepted, in seconds (a day).
const MAX_SECONDS: f64 = 86_400.0;
/// Most requests one scenario may schedule: each keeps a sample in memory.
const MAX_REQUESTS: f64 = 5_000_000.0;
/// The header a request's privacy class travels in.
const CLASS_HEADER: &str = "x-privacy-class";

/// A scenario as written in its file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Model of the built-in request; the command line's otherwise.
    #[serde(default)]
    pub model: Option<String>,
    /// `max_tokens` of the built-in request; the command line's otherwise.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Ask for SSE streams; the command line's otherwise.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The user message of the built-in request.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Weights of the privacy classes requests carry in `x-privacy-class`;
    /// empty: no class header.
    #[serde(default)]
    pub mix: BTreeMap<String, f64>,
    #[serde(rename = "phase")]
    pub phases: Vec<PhaseSpec>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
}

/// One stretch of traffic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    pub seconds: f64,
    /// Requests per second at the phase's start.
    pub rate: f64,
    /// Requests per second at its end; the rate moves linearly. The start
    /// rate throughout when absent.
    #[serde(default)]
    pub rate_to: Option<f64>,
}

/// A shell command run at a moment of the scenario.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Seconds from the start of the first phase.
    pub at: f64,
    /// Run with `sh -c`, in the loadgen's environment.
    pub run: String,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::BodyFile {
            path: path.to_owned(),
            source,
        })?;
        let scenario: Scenario = toml::from_str(&text)
            .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Checks every number and name, so that a run cannot schedule an
    /// unbounded number of requests or send an invalid header.
    pub fn check(&self) -> Result<(), LoadError> {
        let bad = |what: String| Err(LoadError::Config(format!("scenario {}: {what}", self.name)));
        if self.phases.is_empty() {
            return bad("needs at least one [[phase]]".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        for p in &self.phases {
            if !positive(p.seconds) || !positive(p.rate) || p.rate_to.is_some_and(|r| !positive(r))
            {
                return bad(format!(
                    "phase {:?} needs positive seconds, rate and rate_to",
                    p.name
                ));
            }
        }
        let total = self.seconds();
        if total > MAX_SECONDS {
            return bad(format!("lasts {total} s, more than {MAX_SECONDS} s"));
        }
        for (class, weight) in &self.mix {
            let name_ok =
                !class.is_empty() && class.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if !(name_ok && weight.is_finite() && *weight >= 0.0) {
                return bad(format!(
                    "mix entry {class:?} needs a lowercase name and a weight >= 0"
                ));
            }
        }
        if !self.mix.is_empty() && self.mix.values().sum::<f64>() <= 0.0 {
            return bad("the mix's weights sum to 0".into());
        }
        for e in &self.events {
            if !(e.at.is_finite() && (0.0..=total).contains(&e.at)) || e.run.trim().is_empty() {
                return bad(format!(
                    "event at {} s needs a time within the scenario and a command",
                    e.at
                ));
            }
        }
        Ok(())
    }

    /// Seconds of schedule.
    #[must_use]
    pub fn seconds(&self) -> f64 {
        self.phases.iter().map(|p| p.seconds).sum()
    }

    /// Every request's due time from the start and its phase, in order,
    /// with rates multiplied by `scale`.
    pub fn plan(&self, scale: f64) -> Result<Vec<(Duration, usize)>, LoadError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(LoadError::Config("scale must be a positive number".into()));
        }
        let expected: f64 = self
            .phases
            .iter()
            .map(|p| scale * f64::midpoint(p.rate, p.rate_to.unwrap_or(p.rate)) * p.seconds)
            .sum();
        if expected > MAX_REQUESTS {
            return Err(LoadError::Config(format!(
                "scenario {} schedules about {expected:.0} requests, more than {MAX_REQUESTS}",
                self.name
            )));
        }
        let mut plan = Vec::with_capacity(expected.ceil() as usize);
        let mut offset = 0.0;
        for (i, p) in self.phases.iter().enumerate() {
            let (r0, r1) = (p.rate * scale, p.rate_to.unwrap_or(p.rate) * scale);
            // Request k of the phase is due when the integral of the rate
            // reaches k: r0·t + (r1 − r0)·t² / (2·T) = k.
            let a = (r1 - r0) / (2.0 * p.seconds);
            let count = (f64::midpoint(r0, r1) * p.seconds).round() as u64;
            for k in 0..count {
                let k = k as f64;
                let t = if a.abs() < 1e-12 {
                    k / r0
                } else {
                    (-r0 + (r0 * r0 + 4.0 * a * k).sqrt()) / (2.0 * a)
                };
                plan.push((Duration::from_secs_f64(offset + t.min(p.seconds)), i));
            }
            offset += p.seconds;
        }
        Ok(plan)
    }

    /// The privacy classes in the order of [`Sample::class`], with their
    /// weights; one unnamed class when the mix is empty.
    fn classes(&self) -> Vec<(Option<String>, f64)> {
        if self.mix.is_empty() {
            return vec![(None, 1.0)];
        }
        self.mix
            .iter()
            .map(|(c, w)| (Some(c.clone()), *w))
            .collect()
    }
}

/// One request of a scenario run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Due time, from the start.
    pub due: Duration,
    pub phase: usize,
    /// Index into [`ScenarioRun::classes`].
    pub class: usize,
    /// `None` until the request finished; then `Ok(())` or the error kind.
    pub result: Option<Result<(), String>>,
    pub latency: Option<Duration>,
    pub ttft: Option<Duration>,
    pub backend: Option<Box<str>>,
    pub ledger_id: Option<Box<str>>,
}

/// A command of the scenario and how it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRun {
    pub at_s: f64,
    pub run: String,
    /// When it actually started, from the start.
    pub started_s: f64,
    /// Its exit status, or why it could not run.
    pub outcome: String,
}

/// Everything a scenario run measured, before the report is made.
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub target: String,
    pub scale: f64,
    pub stream: bool,
    /// Class names in the order of [`Sample::class`] (`None`: no header).
    pub classes: Vec<Option<String>>,
    pub samples: Vec<Sample>,
    pub events: Vec<EventRun>,
    /// Wall-clock start and end of the schedule, in Unix milliseconds.
    pub started_unix_ms: i64,
    pub ended_unix_ms: i64,
}

struct Samples(Mutex<Vec<Sample>>);

impl Sink for Samples {
    fn dropped(&self, index: usize) {
        self.set(index, |s| s.result = Some(Err("dropped".to_owned())));
    }

    fn record(&self, index: usize, _due: Instant, _lag: Duration, outcome: Outcome) {
        self.set(index, |s| match outcome {
            Outcome::Ok {
                latency,
                ttft,
                route: Route { backend, ledger_id },
            } => {
                s.result = Some(Ok(()));
                s.latency = Some(latency);
                s.ttft = ttft;
                s.backend = backend;
                s.ledger_id = ledger_id;
            }
            Outcome::Failed(kind) => s.result = Some(Err(kind)),
        });
    }
}

impl Samples {
    fn set(&self, index: usize, f: impl FnOnce(&mut Sample)) {
        let mut samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = samples.get_mut(index) {
            f(s);
        }
    }
}

/// Runs `scenario` against `url`: the request of `config` (with the
/// scenario's model, tokens, stream and prompt where it sets them), one
/// variant per privacy class, on the scenario's schedule.
pub async fn run(
    scenario: Scenario,
    config: &LoadConfig,
    url: &str,
    scale: f64,
    seed: u64,
) -> Result<ScenarioRun, LoadError> {
    scenario.check()?;
    let plan = scenario.plan(scale)?;
    let mut config = config.clone();
    if let Some(m) = &scenario.model {
        config.model.clone_from(m);
    }
    if let Some(t) = scenario.max_tokens {
        config.max_tokens = t;
    }
    if let Some(s) = scenario.stream {
        config.stream = s;
    }
    let base = LoadGen::new(config)?;
    let classes = scenario.classes();
    let url = super::endpoint(url)?;
    let mut drivers = Vec::new();
    for (class, _) in &classes {
        let mut spec = base.spec().clone();
        if let Some(prompt) = &scenario.prompt {
            let mut body: Value = serde_json::from_slice(&spec.body)?;
            if let Some(m) = body.pointer_mut("/messages/0/content") {
                *m = Value::String(prompt.clone());
            }
            spec.body = serde_json::to_vec(&body)?.into();
        }
        if let Some(class) = class {
            let value = HeaderValue::try_from(class.as_str())
                .map_err(|_| LoadError::Config(format!("class {class:?} is not a header value")))?;
            spec.headers
                .insert(HeaderName::from_static(CLASS_HEADER), value);
        }
        drivers.push(Arc::new(Driver {
            client: base.client.clone(),
            url: url.clone(),
            spec: Arc::new(spec),
            max_in_flight: base.config.max_in_flight,
        }));
    }

    // Each request's class, drawn up front so the run is repeatable.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let total: f64 = classes.iter().map(|(_, w)| w).sum();
    let draw = |rng: &mut rand::rngs::SmallRng| {
        let mut x = rng.random::<f64>() * total;
        for (i, (_, w)) in classes.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        classes.len() - 1
    };
    let samples: Vec<Sample> = plan
        .iter()
        .map(|&(due, phase)| Sample {
            due,
            phase,
            class: draw(&mut rng),
            ..Sample::default()
        })
        .collect();
    let routes: Vec<(Duration, usize)> = plan
        .iter()
        .zip(&samples)
        .map(|(&(due, _), s)| (due, s.class))
        .collect();
    let sink = Arc::new(Samples(Mutex::new(samples)));

    let started_unix_ms = unix_ms();
    let clock = Instant::now();
    let events = tokio::spawn(run_events(scenario.events.clone(), clock));
    dispatch(drivers, routes.into_iter(), sink.clone()).await?;
    let events = events.await?;
    let ended_unix_ms = unix_ms();
    let samples = std::mem::take(&mut *sink.0.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(ScenarioRun {
        stream: base.spec().stream,
        scenario,
        target: url.to_string(),
        scale,
        classes: classes.into_iter().map(|(c, _)| c).collect(),
        samples,
        events,
        started_unix_ms,
        ended_unix_ms,
    })
}

async fn run_events(events: Vec<EventSpec>, clock: Instant) -> Vec<EventRun> {
    let mut runs = Vec::new();
    let mut events = events;
    events.sort_by(|a, b| a.at.total_cmp(&b.at));
    for e in events {
        tokio::time::sleep_until((clock + Duration::from_secs_f64(e.at)).into()).await;
        let started_s = clock.elapsed().as_secs_f64();
        let outcome = match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&e.run)
            .status()
            .await
        {
            Ok(status) => status.to_string(),
            Err(error) => format!("could not run: {error}"),
        };
        tracing::info!(at = e.at, %outcome, "scenario event ran");
        runs.push(EventRun {
            at_s: e.at,
            run: e.run,
            started_s,
            outcome,
        });
    }
    runs
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, LoadError> {
        let s: Scenario = toml::from_str(text).map_err(|e| LoadError::Config(e.to_string()))?;
        s.check().map(|()| s)
    }

    #[test]
    fn a_ramp_schedules_its_mean_rate_and_speeds_up() {
        let s = parse(
            "name = 'r'\n[[phase]]\nname = 'flat'\nseconds = 2\nrate = 5\n\
             [[phase]]\nname = 'ramp'\nseconds = 10\nrate = 1\nrate_to = 9",
        )
        .unwrap();
        let plan = s.plan(1.0).unwrap();
        let flat: Vec<_> = plan.iter().filter(|p| p.1 == 0).collect();
        let ramp: Vec<_> = plan.iter().filter(|p| p.1 == 1).map(|p| p.0).collect();
        assert_eq!((flat.len(), ramp.len()), (10, 50));
        assert_eq!(flat[1].0, Duration::from_millis(200));
        assert_eq!(ramp[0], Duration::from_secs(2));
        // The second request is due when t + 0.4·t² = 1 (the rate grows
        // from 1/s by 0.8/s each second); the last gaps near 1/9 s.
        let gap = |i: usize| ramp[i + 1].as_secs_f64() - ramp[i].as_secs_f64();
        let t1 = (-1.0 + 2.6f64.sqrt()) / 0.8;
        assert!((gap(0) - t1).abs() < 1e-6, "{} {t1}", gap(0));
        assert!(gap(48) > 0.1 && gap(48) < 0.12, "{}", gap(48));
        assert!(plan.windows(2).all(|w| w[0].0 <= w[1].0));
        // Twice the scale, twice the requests.
        assert_eq!(s.plan(2.0).unwrap().len(), 120);
    }

    #[test]
    fn bad_scenarios_are_refused_with_their_name() {
        let cases = [
            "name = 'x'\nphase = []",
            "name = 'x'\n[[phase]]\nname = 'p'\nseconds = 0\nrate = 1",
            "name = 'x'\n[[phase]]\nname = 'p'\nseconds = 1\nrate = 1\nrate_to = -1",
            "name = 'x'\n[[phase]]\nname = 'p'\nseconds = 100000\nrate = 1",
            "name = 'x'\n[mix]\n'Bad Class' = 1\n[[phase]]\nname = 'p'\nseconds = 1\nrate = 1",
            "name = 'x'\n[mix]\npublic = 0\n[[phase]]\nname = 'p'\nseconds = 1\nrate = 1",
            "name = 'x'\n[[phase]]\nname = 'p'\nseconds = 1\nrate = 1\n[[event]]\nat = 5\nrun = 'true'",
        ];
        for text in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("scenario x"), "{text}: {e}");
        }
        assert!(
            parse("name = 'x'\nunknown = 1\n[[phase]]\nname = 'p'\nseconds = 1\nrate = 1").is_err()
        );
        let huge = parse("name = 'x'\n[[phase]]\nname = 'p'\nseconds = 86400\nrate = 100").unwrap();
        assert!(huge.plan(1.0).is_err());
        assert!(huge.plan(f64::NAN).is_err());
    }
}

//! A scenario run's report: figures per phase and per time window, written
//! as Markdown with SVG plots, JSON and one CSV line per request.
//!
//! What the responses say (latency, TTFT, errors, `x-gateway-backend`)
//! is always there. Where the run went through the gateway and an admin
//! token was given, each request is also joined with its ledger row (by
//! `x-gateway-ledger-id`, over the admin API): its zone, joules, USD and
//! the privacy class the gateway settled on, so the report can show the
//! edge/cloud split, energy and cost per request, and count confidential
//! requests that ran in the cloud (which must be none).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::plot::{chart, Kind, Marker, Series};
use super::scenario::{Sample, ScenarioRun};
use super::LoadError;

/// Most ledger pages fetched (of 1000 rows each).
const MAX_PAGES: usize = 10_000;

/// What the gateway's ledger says about the run's requests.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Backend name → zone (`on_prem` or `cloud`).
    pub zones: HashMap<String, String>,
    /// Ledger id → row.
    pub rows: HashMap<String, Row>,
}

/// The part of a ledger row the report uses.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    pub backend: Option<String>,
    pub class: Option<String>,
    pub joules: Option<f64>,
    pub usd: Option<f64>,
}

/// Reads the backends' zones and the ledger rows written between `since`
/// and `until` (Unix ms) from the gateway serving `target`, with an admin
/// token.
pub async fn fetch_ledger(
    client: &reqwest::Client,
    target: &str,
    token: &str,
    since: i64,
    until: i64,
) -> Result<Ledger, LoadError> {
    let base = reqwest::Url::parse(target).map_err(|e| LoadError::Url(format!("{target}: {e}")))?;
    let get = |path: &str, query: Vec<(&'static str, String)>| {
        let url = base.join(path);
        let client = client.clone();
        async move {
            let url = url.map_err(|e| LoadError::Url(e.to_string()))?;
            let response = client
                .get(url)
                .query(&query)
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?;
            Ok::<Value, LoadError>(response.json().await?)
        }
    };
    let mut ledger = Ledger::default();
    let backends = get("/admin/api/backends", Vec::new()).await?;
    for b in backends["data"].as_array().into_iter().flatten() {
        if let (Some(name), Some(zone)) = (b["name"].as_str(), b["zone"].as_str()) {
            ledger.zones.insert(name.to_owned(), zone.to_owned());
        }
    }
    // Newest first, 1000 at a time: each page ends where the last one's
    // oldest row was (inclusive, so rows of the same millisecond are not
    // skipped; the map drops the repeats).
    let mut before = until + 1;
    for _ in 0..MAX_PAGES {
        let page = get(
            "/admin/api/ledger",
            vec![
                ("since", since.to_string()),
                ("until", before.to_string()),
                ("limit", "1000".to_owned()),
            ],
        )
        .await?;
        let rows = page["data"].as_array().cloned().unwrap_or_default();
        let mut new = 0;
        for r in &rows {
            let Some(id) = r["id"].as_str() else { continue };
            before = before.min(r["created_at"].as_i64().unwrap_or(before) + 1);
            let row = Row {
                backend: r["backend"].as_str().map(str::to_owned),
                class: r["privacy_class"].as_str().map(str::to_owned),
                joules: r["joules"].as_f64(),
                usd: r["usd"].as_f64(),
            };
            if ledger.rows.insert(id.to_owned(), row).is_none() {
                new += 1;
            }
        }
        if rows.len() < 1000 || new == 0 {
            break;
        }
    }
    Ok(ledger)
}

/// Nearest-rank percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Pct {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Pct {
    fn of(mut v: Vec<Duration>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1].as_secs_f64() * 1000.0
        };
        Some(Self {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
        })
    }
}

/// The figures of a set of requests (a phase, a window, the whole run).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub sent: u64,
    pub ok: u64,
    /// Failures by kind (an HTTP status, `timeout`, `incomplete_stream`,
    /// `dropped`…).
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: Option<Pct>,
    pub ttft_ms: Option<Pct>,
    /// Answered requests by where they ran: `edge` or `cloud` when the
    /// ledger gave the zone, else `backend <name>`, else `unknown`.
    pub placed: BTreeMap<String, u64>,
    /// Share of answered requests with a known zone that ran on the edge.
    pub edge_share: Option<f64>,
    pub joules_per_request: Option<f64>,
    pub usd_per_request: Option<f64>,
    /// Requests the gateway classed confidential (or tagged so, without a
    /// ledger row) that ran in the cloud. Must be 0.
    pub confidential_in_cloud: u64,
}

impl Figures {
    fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One time window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start_s: f64,
    pub end_s: f64,
    #[serde(flatten)]
    pub figures: Figures,
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    pub name: String,
    pub seconds: f64,
    pub rate: f64,
    pub rate_to: Option<f64>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Digest {
    pub scenario: String,
    pub description: String,
    pub target: String,
    pub started_unix_ms: i64,
    pub seconds: f64,
    pub scale: f64,
    pub stream: bool,
    pub cpu: String,
    /// Whether ledger rows were joined (zones, energy, cost).
    pub ledger_joined: bool,
    /// Answered requests whose ledger row was not found (with the ledger
    /// joined). Every admitted request should have one.
    pub ledger_missing: u64,
    pub total: Figures,
    pub phases: Vec<PhaseFigures>,
    pub windows: Vec<Window>,
    pub events: Vec<super::scenario::EventRun>,
}

/// Where a request ran, and its ledger row when known.
fn placement<'a>(s: &Sample, ledger: Option<&'a Ledger>) -> (String, Option<&'a Row>) {
    let row = ledger.and_then(|l| s.ledger_id.as_deref().and_then(|id| l.rows.get(id)));
    let backend = row
        .and_then(|r| r.backend.as_deref())
        .or(s.backend.as_deref());
    let zone = ledger.and_then(|l| backend.and_then(|b| l.zones.get(b)));
    let place = match (zone.map(String::as_str), backend) {
        (Some("on_prem"), _) => "edge".to_owned(),
        (Some("cloud"), _) => "cloud".to_owned(),
        (_, Some(b)) => format!("backend {b}"),
        _ => "unknown".to_owned(),
    };
    (place, row)
}

fn figures<'s>(
    samples: impl Iterator<Item = &'s Sample>,
    classes: &[Option<String>],
    ledger: Option<&Ledger>,
) -> Figures {
    let mut f = Figures::default();
    let (mut latencies, mut ttfts) = (Vec::new(), Vec::new());
    let (mut joules, mut usd) = (Vec::new(), Vec::new());
    let (mut edge, mut zoned) = (0u64, 0u64);
    for s in samples {
        match &s.result {
            Some(Ok(())) => {
                f.sent += 1;
                f.ok += 1;
                latencies.extend(s.latency);
                ttfts.extend(s.ttft);
                let (place, row) = placement(s, ledger);
                if place == "edge" || place == "cloud" {
                    zoned += 1;
                    edge += u64::from(place == "edge");
                }
                let class = row
                    .and_then(|r| r.class.as_deref())
                    .or(classes.get(s.class).and_then(Option::as_deref));
                if place == "cloud" && class == Some("confidential") {
                    f.confidential_in_cloud += 1;
                }
                if let Some(r) = row {
                    joules.extend(r.joules);
                    usd.extend(r.usd);
                }
                *f.placed.entry(place).or_insert(0) += 1;
            }
            Some(Err(kind)) => {
                f.sent += u64::from(kind != "dropped");
                *f.errors.entry(kind.clone()).or_insert(0) += 1;
            }
            None => {}
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    f.latency_ms = Pct::of(latencies);
    f.ttft_ms = Pct::of(ttfts);
    f.edge_share = (zoned > 0).then(|| edge as f64 / zoned as f64);
    f.joules_per_request = mean(&joules);
    f.usd_per_request = mean(&usd);
    f
}

/// The width of the report's time windows: one second, or more so that a
/// long run has at most 120 of them.
fn window_width(seconds: f64) -> f64 {
    (seconds / 120.0).ceil().max(1.0)
}

impl Digest {
    /// Builds the report from a run and, when fetched, its ledger rows.
    #[must_use]
    pub fn of(run: &ScenarioRun, ledger: Option<&Ledger>) -> Self {
        let seconds = run.scenario.seconds();
        let width = window_width(seconds);
        let n = (seconds / width).ceil().max(1.0) as usize;
        let mut by_window: Vec<Vec<&Sample>> = vec![Vec::new(); n];
        for s in &run.samples {
            let i = ((s.due.as_secs_f64() / width) as usize).min(n - 1);
            by_window[i].push(s);
        }
        let windows = by_window
            .iter()
            .enumerate()
            .map(|(i, samples)| Window {
                start_s: i as f64 * width,
                end_s: ((i + 1) as f64 * width).min(seconds),
                figures: figures(samples.iter().copied(), &run.classes, ledger),
            })
            .collect();
        let phases = run
            .scenario
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| PhaseFigures {
                name: p.name.clone(),
                seconds: p.seconds,
                rate: p.rate * run.scale,
                rate_to: p.rate_to.map(|r| r * run.scale),
                figures: figures(
                    run.samples.iter().filter(|s| s.phase == i),
                    &run.classes,
                    ledger,
                ),
            })
            .collect();
        Digest {
            scenario: run.scenario.name.clone(),
            description: run.scenario.description.clone(),
            target: run.target.clone(),
            started_unix_ms: run.started_unix_ms,
            seconds,
            scale: run.scale,
            stream: run.stream,
            cpu: cpu(),
            ledger_joined: ledger.is_some(),
            ledger_missing: ledger.map_or(0, |l| {
                run.samples
                    .iter()
                    .filter_map(|s| s.ledger_id.as_deref())
                    .filter(|id| !l.rows.contains_key(*id))
                    .count() as u64
            }),
            total: figures(run.samples.iter(), &run.classes, ledger),
            phases,
            windows,
            events: run.events.clone(),
        }
    }

    /// Writes `report.md`, `report.json`, `samples.csv` and the plots into
    /// `dir`, creating it.
    pub fn write(
        &self,
        run: &ScenarioRun,
        ledger: Option<&Ledger>,
        dir: &Path,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)?;
        std::fs::write(dir.join("samples.csv"), samples_csv(run, ledger))?;
        for (file, svg) in self.plots() {
            std::fs::write(dir.join(file), svg)?;
        }
        std::fs::write(dir.join("report.md"), self.markdown())
    }

    fn markers(&self) -> Vec<Marker> {
        let mut markers = Vec::new();
        let mut at = 0.0;
        for p in self.phases.iter().take(self.phases.len().saturating_sub(1)) {
            at += p.seconds;
            markers.push(Marker {
                x: at,
                label: String::new(),
            });
        }
        for (i, e) in self.events.iter().enumerate() {
            markers.push(Marker {
                x: e.started_s,
                label: format!("event {}", i + 1),
            });
        }
        markers
    }

    /// The plots as (file name, SVG).
    #[must_use]
    pub fn plots(&self) -> Vec<(&'static str, String)> {
        let xs: Vec<f64> = self.windows.iter().map(|w| w.end_s).collect();
        let markers = self.markers();
        let mut plots = vec![
            (
                "latency.svg",
                chart(
                    "End-to-end latency",
                    "ms",
                    Kind::Lines,
                    &xs,
                    &self.latency_series(),
                    &markers,
                ),
            ),
            (
                "split.svg",
                chart(
                    "Requests by where they ran, and failures",
                    "requests/s",
                    Kind::Stacked,
                    &xs,
                    &self.split_series(),
                    &markers,
                ),
            ),
        ];
        if self.ledger_joined {
            let energy = [Series {
                label: "J/request",
                color: "#12b76a",
                values: self.pick(|f| f.joules_per_request),
            }];
            let cost = [Series {
                label: "USD/request",
                color: "#2e90fa",
                values: self.pick(|f| f.usd_per_request),
            }];
            plots.push((
                "energy.svg",
                chart(
                    "Energy per request",
                    "J",
                    Kind::Lines,
                    &xs,
                    &energy,
                    &markers,
                ),
            ));
            plots.push((
                "cost.svg",
                chart("Cost per request", "USD", Kind::Lines, &xs, &cost, &markers),
            ));
        }
        plots
    }

    /// One figure of every window.
    fn pick(&self, f: fn(&Figures) -> Option<f64>) -> Vec<Option<f64>> {
        self.windows.iter().map(|w| f(&w.figures)).collect()
    }

    fn latency_series(&self) -> Vec<Series<'static>> {
        let mut latency = vec![
            Series {
                label: "p50",
                color: "#2e90fa",
                values: self.pick(|f| f.latency_ms.map(|p| p.p50)),
            },
            Series {
                label: "p95",
                color: "#f79009",
                values: self.pick(|f| f.latency_ms.map(|p| p.p95)),
            },
            Series {
                label: "p99",
                color: "#d92d20",
                values: self.pick(|f| f.latency_ms.map(|p| p.p99)),
            },
        ];
        if self.stream {
            latency.push(Series {
                label: "TTFT p95",
                color: "#7a5af8",
                values: self.pick(|f| f.ttft_ms.map(|p| p.p95)),
            });
        }
        latency
    }

    /// Requests per second by where they ran (edge and cloud first), then
    /// failures.
    fn split_series(&self) -> Vec<Series<'_>> {
        let per_second = |w: &Window, n: u64| Some(n as f64 / (w.end_s - w.start_s).max(1e-9));
        let mut places: Vec<&str> = Vec::new();
        for w in &self.windows {
            for p in w.figures.placed.keys() {
                if !places.contains(&p.as_str()) {
                    places.push(p);
                }
            }
        }
        places.sort_by_key(|p| (*p != "edge", *p != "cloud", *p));
        let others = ["#98a2b3", "#f79009", "#7a5af8", "#0e9384"];
        let mut split: Vec<Series<'_>> = places
            .iter()
            .enumerate()
            .map(|(i, p)| Series {
                label: p,
                color: match *p {
                    "edge" => "#12b76a",
                    "cloud" => "#2e90fa",
                    _ => others[i % others.len()],
                },
                values: self
                    .windows
                    .iter()
                    .map(|w| per_second(w, *w.figures.placed.get(*p).unwrap_or(&0)))
                    .collect(),
            })
            .collect();
        split.push(Series {
            label: "failed",
            color: "#d92d20",
            values: self
                .windows
                .iter()
                .map(|w| per_second(w, w.figures.errors_total()))
                .collect(),
        });
        split
    }

    /// The report as Markdown.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Scenario `{}`\n", self.scenario);
        if !self.description.is_empty() {
            let _ = writeln!(md, "{}\n", self.description);
        }
        let _ = writeln!(md, "- target: `{}`", self.target);
        let _ = writeln!(md, "- started: {} UTC", utc(self.started_unix_ms));
        let _ = writeln!(
            md,
            "- {} s of schedule, rates × {}, {}",
            self.seconds,
            self.scale,
            if self.stream {
                "streaming"
            } else {
                "not streaming"
            }
        );
        let _ = writeln!(md, "- load generator's CPU: {}", self.cpu);
        if self.ledger_joined {
            let _ = writeln!(
                md,
                "- answered requests without a ledger row: {}",
                self.ledger_missing
            );
        } else {
            let _ = writeln!(
                md,
                "- no ledger rows joined (give `--admin-token`): no zones, energy or cost"
            );
        }
        md.push_str(
            "\n| phase | s | rate/s | sent | ok | failed | p50 ms | p95 ms | p99 ms | TTFT p95 ms | edge share | J/request | USD/request | confidential in cloud |\n",
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let rows = self
            .phases
            .iter()
            .map(|p| {
                let rate = match p.rate_to {
                    Some(to) => format!("{} → {}", trim(p.rate), trim(to)),
                    None => trim(p.rate),
                };
                (p.name.as_str(), trim(p.seconds), rate, &p.figures)
            })
            .chain([("**all**", trim(self.seconds), String::new(), &self.total)]);
        for (name, seconds, rate, f) in rows {
            let pct = |p: Option<Pct>, g: fn(Pct) -> f64| {
                p.map_or("–".into(), |p| format!("{:.0}", g(p)))
            };
            let _ = writeln!(
                md,
                "| {name} | {seconds} | {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.sent,
                f.ok,
                failures(f),
                pct(f.latency_ms, |p| p.p50),
                pct(f.latency_ms, |p| p.p95),
                pct(f.latency_ms, |p| p.p99),
                pct(f.ttft_ms, |p| p.p95),
                f.edge_share.map_or("–".into(), |s| format!("{:.0}%", s * 100.0)),
                f.joules_per_request.map_or("–".into(), |j| format!("{j:.2}")),
                f.usd_per_request.map_or("–".into(), |u| format!("{u:.6}")),
                if self.ledger_joined { f.confidential_in_cloud.to_string() } else { "–".into() },
            );
        }
        if !self.events.is_empty() {
            md.push_str(
                "\n| event | due s | ran at s | command | outcome |\n|---|---|---|---|---|\n",
            );
            for (i, e) in self.events.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | `{}` | {} |",
                    i + 1,
                    trim(e.at_s),
                    e.started_s,
                    e.run.replace('|', "\\|").replace('`', "'"),
                    e.outcome
                );
            }
        }
        md.push_str("\nPercentiles are of answered requests, from each request's scheduled send time (open loop). Dashed lines mark phase changes and events.\n\n");
        for (file, _) in self.plots() {
            let _ = writeln!(md, "![{file}]({file})\n");
        }
        md
    }
}

fn failures(f: &Figures) -> String {
    if f.errors.is_empty() {
        return "0".into();
    }
    let kinds: Vec<String> = f.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
    kinds.join(", ")
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn samples_csv(run: &ScenarioRun, ledger: Option<&Ledger>) -> String {
    let mut csv = String::from(
        "due_s,phase,class,result,latency_ms,ttft_ms,placed,backend,ledger_id,joules,usd\n",
    );
    let ms = |d: Option<Duration>| {
        d.map_or(String::new(), |d| {
            format!("{:.3}", d.as_secs_f64() * 1000.0)
        })
    };
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for s in &run.samples {
        let (place, row) = placement(s, ledger);
        let result = match &s.result {
            Some(Ok(())) => "ok",
            Some(Err(kind)) => kind.as_str(),
            None => "",
        };
        let _ = writeln!(
            csv,
            "{:.4},{},{},{},{},{},{},{},{},{},{}",
            s.due.as_secs_f64(),
            run.scenario
                .phases
                .get(s.phase)
                .map_or("", |p| p.name.as_str()),
            run.classes
                .get(s.class)
                .and_then(Option::as_deref)
                .unwrap_or(""),
            result,
            ms(s.latency),
            ms(s.ttft),
            if s.result == Some(Ok(())) {
                place.as_str()
            } else {
                ""
            },
            s.backend.as_deref().unwrap_or(""),
            s.ledger_id.as_deref().unwrap_or(""),
            opt(row.and_then(|r| r.joules)),
            opt(row.and_then(|r| r.usd)),
        );
    }
    csv
}

/// The CPU model and its widest SIMD, as `/proc/cpuinfo` says.
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let simd = if has("avx512f") {
        "AVX-512"
    } else if has("avx2") {
        "AVX2"
    } else {
        "no AVX2"
    };
    format!(
        "{model} ({simd}, {} cores)",
        std::thread::available_parallelism().map_or(0, usize::from)
    )
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time in ms (proleptic Gregorian).
fn utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::super::scenario::{PhaseSpec, Scenario};
    use super::*;

    fn sample(
        due_ms: u64,
        phase: usize,
        class: usize,
        ok: bool,
        backend: &str,
        id: &str,
    ) -> Sample {
        Sample {
            due: Duration::from_millis(due_ms),
            phase,
            class,
            result: Some(if ok { Ok(()) } else { Err("503".into()) }),
            latency: ok.then(|| Duration::from_millis(100 + due_ms / 10)),
            ttft: None,
            backend: ok.then(|| backend.into()),
            ledger_id: ok.then(|| id.into()),
        }
    }

    fn run() -> ScenarioRun {
        let phase = |name: &str| PhaseSpec {
            name: name.into(),
            seconds: 2.0,
            rate: 2.0,
            rate_to: None,
        };
        ScenarioRun {
            scenario: Scenario {
                name: "t".into(),
                description: String::new(),
                model: None,
                max_tokens: None,
                stream: Some(false),
                prompt: None,
                mix: BTreeMap::new(),
                phases: vec![phase("a"), phase("b")],
                events: Vec::new(),
            },
            target: "http://gw/v1/chat/completions".into(),
            scale: 1.0,
            stream: false,
            classes: vec![Some("public".into()), Some("confidential".into())],
            samples: vec![
                sample(0, 0, 0, true, "edge-1", "r1"),
                sample(500, 0, 1, true, "edge-1", "r2"),
                sample(1000, 0, 0, true, "cloud", "r3"),
                sample(1500, 0, 0, false, "", ""),
                sample(2000, 1, 0, true, "cloud", "r4"),
                // Tagged public, classed confidential by the gateway, and
                // (in this made-up ledger) run in the cloud.
                sample(2500, 1, 0, true, "cloud", "r5"),
            ],
            events: Vec::new(),
            started_unix_ms: 0,
            ended_unix_ms: 4000,
        }
    }

    fn ledger() -> Ledger {
        let row = |backend: &str, class: &str, joules: f64, usd: f64| Row {
            backend: Some(backend.into()),
            class: Some(class.into()),
            joules: Some(joules),
            usd: Some(usd),
        };
        Ledger {
            zones: [("edge-1", "on_prem"), ("cloud", "cloud")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
            rows: [
                ("r1", row("edge-1", "public", 1.0, 0.0)),
                ("r2", row("edge-1", "confidential", 3.0, 0.0)),
                ("r3", row("cloud", "public", 5.0, 0.002)),
                ("r4", row("cloud", "public", 5.0, 0.002)),
                ("r5", row("cloud", "confidential", 5.0, 0.004)),
            ]
            .into_iter()
            .map(|(id, r)| (id.to_owned(), r))
            .collect(),
        }
    }

    #[test]
    fn phases_and_windows_count_placement_energy_and_leaks() {
        let (run, ledger) = (run(), ledger());
        let d = Digest::of(&run, Some(&ledger));
        let a = &d.phases[0].figures;
        assert_eq!((a.sent, a.ok, a.errors.get("503")), (4, 3, Some(&1)));
        assert_eq!(a.placed.get("edge"), Some(&2));
        assert!((a.edge_share.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((a.joules_per_request.unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(a.confidential_in_cloud, 0);
        let b = &d.phases[1].figures;
        assert_eq!(b.confidential_in_cloud, 1);
        assert_eq!(b.edge_share, Some(0.0));
        assert_eq!(d.total.confidential_in_cloud, 1);
        assert_eq!(d.windows.len(), 4);
        assert_eq!(d.windows[1].figures.errors.get("503"), Some(&1));
        // Nearest rank: p50 of 100, 150 ms is 100.
        assert_eq!(d.windows[0].figures.latency_ms.unwrap().p50, 100.0);
        let md = d.markdown();
        assert!(md.contains("| a | 2 | 2 | 4 | 3 | 1 503 | "), "{md}");
        assert!(md.contains("![split.svg](split.svg)") && md.contains("![cost.svg](cost.svg)"));
        assert_eq!(d.plots().len(), 4);
    }

    #[test]
    fn without_the_ledger_requests_are_placed_by_backend_name() {
        let run = run();
        let d = Digest::of(&run, None);
        assert_eq!(d.total.placed.get("backend edge-1"), Some(&2));
        assert_eq!(d.total.placed.get("backend cloud"), Some(&3));
        assert_eq!(d.total.edge_share, None);
        assert_eq!(d.total.joules_per_request, None);
        assert_eq!(d.plots().len(), 2);
        assert!(d.markdown().contains("no ledger rows joined"));
        let csv = samples_csv(&run, None);
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.lines().nth(4).unwrap().contains(",503,"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_212_800_000), "2026-12-02 12:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}

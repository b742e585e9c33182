//! The fleet page: every backend this gateway routes to (stored ones and
//! self-registered workers) with health, load, speed and zone, and how
//! traffic split between the edge and the cloud over the last hour.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

use super::charts::{self, Stack};
use super::format;
use super::layout::{self, stat};
use super::Session;
use crate::http::admin::AdminApiError;
use crate::live::BackendLive;
use crate::routing::{Backend, Zone};
use crate::state::AppState;
use crate::store::{now_ms, LedgerFilter};

/// The window and bucket of the traffic chart.
const WINDOW_MS: i64 = 3600 * 1000;
const BUCKET_MS: i64 = 120 * 1000;

fn health(app: &AppState, b: &Backend, live: &BackendLive) -> (&'static str, &'static str) {
    if !b.enabled {
        return ("off", "disabled");
    }
    if let Some(l) = &live.load {
        if l.draining {
            return ("warn", "draining");
        }
        if !l.ready {
            return ("warn", "loading");
        }
    }
    if live.failures >= app.config.unhealthy_after {
        return if live.retry_at.is_some_and(|t| t <= Instant::now()) {
            ("warn", "half-open")
        } else {
            ("bad", "resting")
        };
    }
    ("ok", "healthy")
}

fn card(app: &AppState, b: &Backend) -> Markup {
    let live = app.live.get(&b.id);
    let (tone, label) = health(app, b, &live);
    let in_flight = app.live.in_flight(&b.id);
    let zone = match b.zone {
        Zone::OnPrem => "on-prem",
        Zone::Cloud => "cloud",
    };
    let load = live.load.as_ref();
    let (used, capacity) = load.map_or((in_flight, b.max_concurrency), |l| {
        (
            l.active_sequences + l.waiting_sequences,
            l.max_running_sequences + l.max_waiting_sequences,
        )
    });
    let fill = if capacity > 0 {
        f64::from(used) / f64::from(capacity)
    } else {
        0.0
    };
    html! {
        article.worker data-backend=(b.name) {
            header {
                span class={ "dot " (tone) } title=(label) {}
                h3 { (b.name) }
                span class={ "pill " (zone) } { (zone) }
            }
            div.kv {
                span { "health" } strong { (label) }
                @if let Some(l) = load {
                    span { "running" } strong { (l.active_sequences) " / " (l.max_running_sequences) }
                    span { "waiting" } strong { (l.waiting_sequences) " / " (l.max_waiting_sequences) }
                    span { "decode" } strong { (format::opt(l.decode_tokens_per_s, |v| format!("{v:.1} tok/s"))) }
                    span { "prefill" } strong { (format::opt(l.prefill_tokens_per_s, |v| format!("{v:.0} tok/s"))) }
                    span { "energy" } strong { (format::opt(l.joules_per_output_token, |v| format!("{v:.3} J/tok"))) }
                    @if l.joules_at_running.iter().any(|j| j.output.is_some()) {
                        span { "energy by load" } strong title="J per output token, by requests running" { (by_load(&l.joules_at_running)) }
                    }
                    span { "model" } strong { (l.model.as_deref().unwrap_or("—")) }
                } @else {
                    span { "in flight" } strong { (in_flight) }
                    span { "decode" } strong { (format!("{:.0} tok/s", b.decode_tps)) " " small { "nominal" } }
                    span { "price" } strong { (format::usd(b.price_out_per_1k)) " /1k out" }
                }
            }
            @if capacity > 0 {
                svg.meter viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="load" {
                    rect.track x="0" y="0" width="100" height="6" rx="3" {}
                    rect class={ "fill " (if fill > 0.85 { "bad" } else if fill > 0.5 { "warn" } else { "ok" }) }
                        x="0" y="0" width=(format!("{:.1}", (fill * 100.0).min(100.0))) height="6" rx="3" {}
                }
            }
            footer.muted { (b.base_url) }
        }
    }
}

pub async fn page(State(app): State<AppState>, Extension(s): Extension<Session>) -> Response {
    match body(&app).await {
        Ok(b) => layout::page(&s, "/admin/fleet", "Fleet", &b),
        Err(e) => e.into_response(),
    }
}

async fn body(app: &AppState) -> Result<Markup, AdminApiError> {
    let snapshot = app.catalog.snapshot().await.map_err(|e| {
        tracing::warn!(error = %e, "dashboard: no settings snapshot");
        AdminApiError::Unavailable
    })?;
    let now = now_ms();
    let filter = LedgerFilter {
        since: Some(now - WINDOW_MS),
        ..LedgerFilter::default()
    };
    let series = app.store.ledger_series(&filter, BUCKET_MS).await?;
    let recent = app
        .store
        .ledger_totals(&LedgerFilter {
            since: Some(now - 5 * 60 * 1000),
            ..LedgerFilter::default()
        })
        .await?;
    let zone_requests = |z: &str| recent.by_zone.get(z).map_or(0, |t| t.requests);
    let (edge, cloud) = (zone_requests("on_prem"), zone_requests("cloud"));
    let share = if edge + cloud > 0 {
        format!("{:.0}%", 100.0 * edge as f64 / (edge + cloud) as f64)
    } else {
        "—".to_owned()
    };
    let tokens: u64 = recent.by_zone.values().map(|t| t.completion_tokens).sum();
    let stacks: Vec<Stack> = series
        .iter()
        .map(|p| Stack {
            label: format::clock(p.at)[..5].to_owned(),
            parts: vec![
                (
                    "s-edge",
                    p.by_zone.get("on_prem").map_or(0.0, |t| t.requests as f64),
                ),
                (
                    "s-cloud",
                    p.by_zone.get("cloud").map_or(0.0, |t| t.requests as f64),
                ),
                (
                    "s-none",
                    ["none", "unknown"]
                        .iter()
                        .filter_map(|z| p.by_zone.get(*z))
                        .map(|t| t.requests as f64)
                        .sum(),
                ),
            ],
        })
        .collect();
    let (stored, registered): (Vec<&Backend>, Vec<&Backend>) = snapshot
        .backends
        .iter()
        .partition(|b| !b.name.starts_with("worker:"));
    Ok(html! {
        section #live data-refresh="3000" {
            div.stats {
                (stat("Requests, last 5 min", &format::count(recent.all.requests), None))
                (stat("Served on the edge", &share, Some("of routed requests, last 5 min")))
                (stat("Output tokens/s", &format!("{:.1}", tokens as f64 / 300.0), Some("average, last 5 min")))
                (stat("Backends", &snapshot.backends.len().to_string(), Some(&format!("{} self-registered", registered.len()))))
            }
            h2 { "Workers and backends" }
            @if snapshot.backends.is_empty() {
                p.empty { "No backends yet. Add one on the Backends page, or start an edge worker with --gateway-url." }
            }
            div.grid {
                @for b in registered.iter().chain(stored.iter()) { (card(app, b)) }
            }
            h2 { "Edge / cloud split, last hour" }
            (charts::stacked(
                "Requests per 2 minutes by where they ran",
                &stacks,
                &[("s-edge", "Edge (on-prem)"), ("s-cloud", "Cloud"), ("s-none", "Not routed")],
                format::tick,
            ))
        }
    })
}

/// Joules per output token at each number of requests running, as
/// `1: 0.096 · 2: 0.121` (a dash where none was measured yet).
fn by_load(at: &[wire::load::JoulesPerToken]) -> String {
    at.iter()
        .enumerate()
        .map(|(i, j)| {
            let v = j
                .output
                .map_or_else(|| "—".to_owned(), |v| format!("{v:.3}"));
            format!("{}: {v}", i + 1)
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use wire::load::JoulesPerToken;

    #[test]
    fn energy_by_load_lists_every_slot() {
        let at = [
            JoulesPerToken {
                prompt: Some(0.01),
                output: Some(0.0961),
            },
            JoulesPerToken::default(),
            JoulesPerToken {
                prompt: None,
                output: Some(0.121),
            },
        ];
        assert_eq!(super::by_load(&at), "1: 0.096 · 2: — · 3: 0.121");
    }
}

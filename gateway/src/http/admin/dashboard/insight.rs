//! The pages that read the ledger: the latest routing decisions, the
//! savings against an all-cloud deployment, and the what-if re-scoring of
//! recorded decisions under other policy weights.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

use super::charts::{self, Series};
use super::format;
use super::layout::{self, notice, stat};
use super::Session;
use crate::http::admin::api::ledger_filter;
use crate::http::admin::AdminApiError;
use crate::routing::{rechoose, Decision, Policy, Zone};
use crate::state::AppState;
use crate::store::{now_ms, LedgerEntry, LedgerStatus};

/// Rows the decisions page shows.
const DECISIONS: u32 = 50;

/// Grams of CO₂ per kWh used to turn joules into emissions: a grid
/// average (roughly the EU's), since the ledger knows energy, not the
/// carbon intensity of where it was drawn.
const GRID_G_CO2_PER_KWH: f64 = 300.0;

fn query<T: for<'de> Deserialize<'de> + Default>(uri: &Uri) -> (T, Option<String>) {
    match Query::<T>::try_from_uri(uri) {
        Ok(q) => (q.0, None),
        Err(e) => (
            T::default(),
            Some(format!("Ignored a bad filter: {}", e.body_text())),
        ),
    }
}

fn decision_of(e: &LedgerEntry) -> Option<Decision> {
    e.decision
        .as_ref()
        .and_then(|d| serde_json::from_str(d.as_str()).ok())
}

async fn tenant_names(app: &AppState) -> Result<HashMap<String, String>, AdminApiError> {
    Ok(app
        .store
        .list_tenants()
        .await?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect())
}

fn zone_label(z: Zone) -> &'static str {
    match z {
        Zone::OnPrem => "on-prem",
        Zone::Cloud => "cloud",
    }
}

#[derive(Deserialize, Default)]
pub struct DecisionFilter {
    tenant: Option<String>,
    class: Option<String>,
    backend: Option<String>,
    status: Option<String>,
}

pub async fn decisions(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    let (q, problem) = query::<DecisionFilter>(&uri);
    match decisions_body(&app, &q, problem).await {
        Ok(b) => layout::page(&s, "/admin/decisions", "Routing decisions", &b),
        Err(e) => e.into_response(),
    }
}

fn select(name: &str, label: &str, current: Option<&str>, options: &[(String, String)]) -> Markup {
    html! {
        label { (label)
            select name=(name) {
                option value="" { "any" }
                @for (value, text) in options {
                    option value=(value) selected[current == Some(value.as_str())] { (text) }
                }
            }
        }
    }
}

async fn decisions_body(
    app: &AppState,
    q: &DecisionFilter,
    problem: Option<String>,
) -> Result<Markup, AdminApiError> {
    let names = tenant_names(app).await?;
    let (filter, problem) = match ledger_filter(
        app,
        q.tenant.as_deref(),
        q.backend.as_deref(),
        q.class.as_deref(),
        q.status.as_deref(),
    )
    .await
    {
        Ok(f) => (f, problem),
        Err(AdminApiError::BadRequest { message, .. } | AdminApiError::NotFound(message)) => {
            (crate::store::LedgerFilter::default(), Some(message))
        }
        Err(e) => return Err(e),
    };
    let rows = app.store.query_ledger(&filter, DECISIONS).await?;
    let mut tenants: Vec<(String, String)> =
        names.values().map(|n| (n.clone(), n.clone())).collect();
    tenants.sort();
    let backends: Vec<(String, String)> = app
        .store
        .list_backends()
        .await?
        .into_iter()
        .map(|b| (b.name.clone(), b.name))
        .collect();
    let classes: Vec<(String, String)> = ["public", "internal", "confidential"]
        .iter()
        .map(|c| ((*c).to_owned(), (*c).to_owned()))
        .collect();
    let statuses: Vec<(String, String)> = LedgerStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), s.as_str().to_owned()))
        .collect();
    Ok(html! {
        @if let Some(p) = &problem { (notice("warn", p)) }
        form.filters method="get" action="/admin/decisions" {
            (select("tenant", "Tenant", q.tenant.as_deref(), &tenants))
            (select("class", "Class", q.class.as_deref(), &classes))
            (select("backend", "Backend", q.backend.as_deref(), &backends))
            (select("status", "Status", q.status.as_deref(), &statuses))
            button type="submit" { "Filter" }
        }
        p.muted { "The latest " (DECISIONS) " requests, newest first. Open one to see every candidate the cost model scored." }
        @if rows.is_empty() { p.empty { "No requests match." } }
        div.decisions {
            div.drow.dhead {
                span { "time (UTC)" } span { "tenant" } span { "class" } span { "model" }
                span { "ran on" } span { "reason" } span { "latency pred. → actual" }
                span { "energy pred. → actual" } span { "cost pred. → actual" } span { "status" }
            }
            @for e in &rows { (decision_row(e, &names)) }
        }
    })
}

fn decision_row(e: &LedgerEntry, names: &HashMap<String, String>) -> Markup {
    let d = decision_of(e);
    let tenant = names.get(&e.tenant_id).map_or("(removed)", String::as_str);
    html! {
        details.decision data-id=(e.id) {
            summary.drow {
                span { (format::clock(e.created_at)) }
                span { (tenant) }
                span { span class={ "pill " (e.privacy_class.as_str()) } { (e.privacy_class.as_str()) } }
                span { (e.requested_model) }
                span { (e.backend.as_deref().unwrap_or("—")) }
                span { (e.route_reason.as_deref().unwrap_or("—")) }
                span { (format::opt(e.predicted_latency_ms, format::ms)) " → " (format::opt(e.latency_ms, format::ms)) }
                span { (format::opt(e.predicted_energy_j, format::joules)) " → " (format::opt(e.joules, format::joules)) }
                span { (format::opt(e.predicted_cost_usd, format::usd)) " → " (format::opt(e.usd, format::usd)) }
                span { span class={ "status " (e.status.as_str()) } { (e.status.as_str()) } }
            }
            div.detail {
                @if let Some(d) = &d {
                    p.muted {
                        (d.prompt_tokens) " prompt tokens, " (d.output_tokens) " output tokens assumed"
                        @if let Some(a) = d.answer_tokens.filter(|&a| a != d.output_tokens) {
                            " for latency, " (a) " for energy and cost (the mean answer so far)"
                        }
                        ". Weights: latency "
                        (d.policy.w_latency) ", energy " (d.policy.w_energy) ", cost " (d.policy.w_cost)
                        "; SLO " (format::ms(d.policy.latency_slo_ms)) "."
                    }
                    table {
                        thead { tr { th { "candidate" } th { "zone" } th { "score" } th { "keeps SLO" } th { "pred. latency" } th { "queue" } th { "pred. energy" } th { "pred. cost" } th { "role" } } }
                        tbody {
                            @for c in d.candidates() {
                                tr class=[(c.backend == d.chosen.backend).then_some("chosen")] {
                                    td { (c.backend) }
                                    td { (zone_label(c.zone)) }
                                    td { (format!("{:.3}", c.score)) }
                                    td { @if c.meets_slo { "yes" } @else { "no" } }
                                    td { (format::ms(c.prediction.latency_ms)) }
                                    td { (format::ms(c.prediction.queue_ms)) }
                                    td { (format::joules(c.prediction.energy_j)) }
                                    td { (format::usd(c.prediction.cost_usd)) }
                                    td { (c.reason.as_str()) }
                                }
                            }
                        }
                    }
                    @if !d.excluded.is_empty() {
                        p.muted { "Left out: "
                            @for (i, x) in d.excluded.iter().enumerate() {
                                @if i > 0 { ", " }
                                (x.backend) " (" (serde_json::to_value(x.why).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) ")"
                            }
                        }
                    }
                } @else {
                    p.muted { "No routing decision was recorded (refused before routing: "
                        (e.error_code.as_deref().unwrap_or("no code")) ")." }
                }
                @if !e.detectors.is_empty() {
                    p.muted { "Privacy detectors that fired: " (e.detectors.join(", ")) }
                }
            }
        }
    }
}

/// The all-cloud counterfactual of one served row: what it would have
/// cost in USD and joules had it run in the cloud.
///
/// The ledger's own columns (`allcloud_usd`, `allcloud_joules`: the row's
/// tokens at the cloud's rates, written with the row) come first. Rows
/// written before those columns existed fall back to the decision's
/// `all_cloud` record (priced at the row's tokens where its rates are there,
/// else its prediction), and older ones to the best cloud candidate the
/// decision scored.
fn all_cloud(e: &LedgerEntry) -> Option<(f64, f64)> {
    if let (Some(usd), Some(joules)) = (e.placement.allcloud_usd, e.placement.allcloud_joules) {
        return Some((usd, joules));
    }
    let decision = e.decision.as_ref()?.value()?;
    let recorded = decision.get("all_cloud");
    if let (Some(rates), Some(prompt), Some(completion)) = (
        recorded.and_then(|a| a.get("rates")),
        e.prompt_tokens,
        e.completion_tokens,
    ) {
        let rate = |k: &str| {
            rates
                .get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        let (prompt, completion) = (f64::from(prompt), f64::from(completion));
        let usd = prompt / 1000.0 * rate("price_in_per_1k")
            + completion / 1000.0 * rate("price_out_per_1k");
        let joules =
            prompt * rate("joules_per_prompt_token") + completion * rate("joules_per_output_token");
        return Some((usd, joules));
    }
    if let Some(prediction) = recorded.and_then(|a| a.get("prediction")) {
        let figure = |k: &str| prediction.get(k).and_then(serde_json::Value::as_f64);
        if let (Some(usd), Some(joules)) = (figure("cost_usd"), figure("energy_j")) {
            return Some((usd, joules));
        }
    }
    let decision = decision_of(e)?;
    decision
        .candidates()
        .filter(|c| c.zone == Zone::Cloud)
        .min_by(|a, b| a.score.total_cmp(&b.score))
        .map(|c| (c.prediction.cost_usd, c.prediction.energy_j))
}

fn co2_grams(joules: f64) -> f64 {
    joules / 3.6e6 * GRID_G_CO2_PER_KWH
}

#[derive(Deserialize, Default)]
pub struct SavingsQuery {
    hours: Option<u32>,
    tenant: Option<String>,
}

/// Per bucket: actual USD, all-cloud USD, actual J, all-cloud J.
#[derive(Default, Clone, Copy)]
struct Bucket {
    usd: f64,
    cloud_usd: f64,
    joules: f64,
    cloud_joules: f64,
}

pub async fn savings(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    let (q, problem) = query::<SavingsQuery>(&uri);
    match savings_body(&app, &q, problem).await {
        Ok(b) => layout::page(&s, "/admin/savings", "Savings against all-cloud", &b),
        Err(e) => e.into_response(),
    }
}

async fn savings_body(
    app: &AppState,
    q: &SavingsQuery,
    problem: Option<String>,
) -> Result<Markup, AdminApiError> {
    let hours = q.hours.unwrap_or(24).clamp(1, 24 * 30);
    let bucket_ms: i64 = if hours <= 6 {
        10 * 60_000
    } else if hours <= 48 {
        3_600_000
    } else {
        86_400_000
    };
    let now = now_ms();
    let start = (now - i64::from(hours) * 3_600_000).div_euclid(bucket_ms) * bucket_ms;
    let tenant_id = match q.tenant.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(crate::admin_cli::ops::tenant_of(&app.store, t).await?.id),
        None => None,
    };
    let rows = app
        .store
        .ledger_window(start, tenant_id.as_deref(), crate::store::MAX_WINDOW_ROWS)
        .await?;
    let n = usize::try_from((now - start) / bucket_ms + 1).unwrap_or(1);
    let mut buckets = vec![Bucket::default(); n];
    let (mut served, mut priced) = (0u64, 0u64);
    for e in rows
        .iter()
        .filter(|e| e.backend.is_some() && e.status != LedgerStatus::Rejected)
    {
        served += 1;
        let Some((cloud_usd, cloud_joules)) = all_cloud(e) else {
            continue;
        };
        priced += 1;
        let i = usize::try_from((e.created_at - start) / bucket_ms)
            .unwrap_or(0)
            .min(n - 1);
        let b = &mut buckets[i];
        b.usd += e.usd.unwrap_or(0.0);
        b.joules += e.joules.unwrap_or(0.0);
        b.cloud_usd += cloud_usd;
        b.cloud_joules += cloud_joules;
    }
    let total = buckets.iter().fold(Bucket::default(), |a, b| Bucket {
        usd: a.usd + b.usd,
        cloud_usd: a.cloud_usd + b.cloud_usd,
        joules: a.joules + b.joules,
        cloud_joules: a.cloud_joules + b.cloud_joules,
    });
    let labels: Vec<String> = (0..n)
        .map(|i| {
            let at = start + bucket_ms * i64::try_from(i).unwrap_or(0);
            if bucket_ms >= 86_400_000 {
                format!("day {}", i + 1)
            } else {
                format::clock(at)[..5].to_owned()
            }
        })
        .collect();
    let pick = |f: fn(&Bucket) -> f64| buckets.iter().map(f).collect::<Vec<f64>>();
    let truncated = rows.len() >= crate::store::MAX_WINDOW_ROWS as usize;
    Ok(html! {
        @if let Some(p) = &problem { (notice("warn", p)) }
        form.filters method="get" action="/admin/savings" {
            label { "Window"
                select name="hours" {
                    @for (h, l) in [(1u32, "1 hour"), (6, "6 hours"), (24, "24 hours"), (168, "7 days"), (720, "30 days")] {
                        option value=(h) selected[h == hours] { (l) }
                    }
                }
            }
            label { "Tenant" input type="text" name="tenant" value=[q.tenant.as_deref()] placeholder="all"; }
            button type="submit" { "Show" }
        }
        div.stats {
            (stat("Money saved", &format::usd(total.cloud_usd - total.usd), Some(&format!("{} spent, {} all-cloud", format::usd(total.usd), format::usd(total.cloud_usd)))))
            (stat("Energy saved", &format::joules(total.cloud_joules - total.joules), Some(&format!("{} used, {} all-cloud", format::joules(total.joules), format::joules(total.cloud_joules)))))
            (stat("CO₂ avoided", &format::grams(co2_grams(total.cloud_joules - total.joules)), Some(&format!("at {GRID_G_CO2_PER_KWH:.0} g/kWh"))))
            (stat("Requests priced", &format!("{} / {}", format::count(priced), format::count(served)), Some("served requests with a cloud alternative on record")))
        }
        @if truncated { (notice("warn", "Only the newest 10,000 requests of this window are counted.")) }
        (charts::lines("USD per bucket", &labels, &[
            Series { class: "s-cloud", label: "all-cloud", points: pick(|b| b.cloud_usd) },
            Series { class: "s-edge", label: "actual", points: pick(|b| b.usd) },
        ], format::usd))
        (charts::lines("Energy per bucket (J)", &labels, &[
            Series { class: "s-cloud", label: "all-cloud", points: pick(|b| b.cloud_joules) },
            Series { class: "s-edge", label: "actual", points: pick(|b| b.joules) },
        ], format::joules))
        (charts::lines("CO₂ per bucket (g)", &labels, &[
            Series { class: "s-cloud", label: "all-cloud", points: pick(|b| co2_grams(b.cloud_joules)) },
            Series { class: "s-edge", label: "actual", points: pick(|b| co2_grams(b.joules)) },
        ], format::grams))
        p.muted {
            "All-cloud: what each served request would have cost on the cloud backend the router "
            "would have used for it, from the ledger's routing decisions. Energy of cloud backends is "
            "what their configuration declares (joules per token)."
        }
    })
}

#[derive(Deserialize, Default)]
pub struct WhatIfQuery {
    n: Option<u32>,
    tenant: Option<String>,
    w_latency: Option<f64>,
    w_energy: Option<f64>,
    w_cost: Option<f64>,
    slo_ms: Option<f64>,
}

/// Sums over the rows re-scored.
#[derive(Default)]
struct Outcome {
    latency_ms: f64,
    joules: f64,
    usd: f64,
    edge: u64,
    cloud: u64,
}

impl Outcome {
    fn add(&mut self, zone: Zone, p: &crate::routing::Prediction) {
        self.latency_ms += p.latency_ms;
        self.joules += p.energy_j;
        self.usd += p.cost_usd;
        match zone {
            Zone::OnPrem => self.edge += 1,
            Zone::Cloud => self.cloud += 1,
        }
    }
}

pub async fn whatif(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    let (q, problem) = query::<WhatIfQuery>(&uri);
    match whatif_body(&app, &q, problem).await {
        Ok(b) => layout::page(&s, "/admin/whatif", "What-if: other policy weights", &b),
        Err(e) => e.into_response(),
    }
}

async fn whatif_body(
    app: &AppState,
    q: &WhatIfQuery,
    mut problem: Option<String>,
) -> Result<Markup, AdminApiError> {
    let n = q.n.unwrap_or(200).clamp(1, crate::store::MAX_LEDGER_ROWS);
    let filter = ledger_filter(app, q.tenant.as_deref(), None, None, None).await?;
    let rows = app.store.query_ledger(&filter, n).await?;
    let decided: Vec<(&LedgerEntry, Decision)> = rows
        .iter()
        .filter_map(|e| decision_of(e).map(|d| (e, d)))
        .collect();
    let base = decided
        .first()
        .map_or_else(Policy::default, |(_, d)| d.policy.clone());
    let asked = Policy {
        w_latency: q.w_latency.unwrap_or(base.w_latency),
        w_energy: q.w_energy.unwrap_or(base.w_energy),
        w_cost: q.w_cost.unwrap_or(base.w_cost),
        latency_slo_ms: q.slo_ms.unwrap_or(base.latency_slo_ms),
        ..base.clone()
    };
    if let Err(e) = asked.validate() {
        problem = Some(e.to_string());
    }
    let (mut recorded, mut what_if) = (Outcome::default(), Outcome::default());
    let mut changed = Vec::new();
    if problem.is_none() {
        for (e, d) in &decided {
            // Each row keeps its own references; only the weights (and
            // the SLO, if asked) change.
            let policy = Policy {
                w_latency: asked.w_latency,
                w_energy: asked.w_energy,
                w_cost: asked.w_cost,
                latency_slo_ms: q.slo_ms.unwrap_or(d.policy.latency_slo_ms),
                ..d.policy.clone()
            };
            let r = rechoose(d, &policy);
            recorded.add(d.chosen.zone, &d.chosen.prediction);
            what_if.add(r.zone, &r.prediction);
            if r.backend != d.chosen.backend {
                changed.push((*e, d.chosen.backend.clone(), r));
            }
        }
    }
    let count = decided.len().max(1) as f64;
    Ok(html! {
        @if let Some(p) = &problem { (notice("warn", p)) }
        form.filters method="get" action="/admin/whatif" {
            label { "Last N requests" input type="number" name="n" min="1" max="1000" value=(n); }
            label { "Tenant" input type="text" name="tenant" value=[q.tenant.as_deref()] placeholder="all"; }
            label { "w latency" input type="number" step="any" min="0" name="w_latency" value=(asked.w_latency); }
            label { "w energy" input type="number" step="any" min="0" name="w_energy" value=(asked.w_energy); }
            label { "w cost" input type="number" step="any" min="0" name="w_cost" value=(asked.w_cost); }
            label { "SLO (ms)" input type="number" step="any" min="1" name="slo_ms" value=(asked.latency_slo_ms); }
            button.primary type="submit" { "Re-score" }
        }
        p.muted {
            "Re-scores the " (decided.len()) " most recent routed requests with these weights, using the "
            "predictions the router recorded for every candidate. Health and privacy exclusions stay as they were."
        }
        div.stats {
            (stat("Choices that change", &format!("{} / {}", changed.len(), decided.len()), None))
            (stat("Edge share", &format!("{:.0}% → {:.0}%", 100.0 * recorded.edge as f64 / count, 100.0 * what_if.edge as f64 / count), None))
        }
        div.row3 {
            (charts::compare("Mean predicted latency", &[("s-edge", "as routed", recorded.latency_ms / count), ("s-whatif", "what-if", what_if.latency_ms / count)], format::ms))
            (charts::compare("Predicted energy, total", &[("s-edge", "as routed", recorded.joules), ("s-whatif", "what-if", what_if.joules)], format::joules))
            (charts::compare("Predicted cost, total", &[("s-edge", "as routed", recorded.usd), ("s-whatif", "what-if", what_if.usd)], format::usd))
        }
        @if !changed.is_empty() {
            h2 { "Requests that would go elsewhere" }
            table.whatif {
                thead { tr { th { "time (UTC)" } th { "model" } th { "as routed" } th { "what-if" } th { "latency" } th { "energy" } th { "cost" } } }
                tbody {
                    @for (e, was, r) in changed.iter().take(20) {
                        tr {
                            td { (format::clock(e.created_at)) }
                            td { (e.requested_model) }
                            td { (was) }
                            td { strong { (r.backend) } " " span class={ "pill " (zone_label(r.zone)) } { (zone_label(r.zone)) } }
                            td { (format::ms(r.prediction.latency_ms)) }
                            td { (format::joules(r.prediction.energy_j)) }
                            td { (format::usd(r.prediction.cost_usd)) }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(extra: &serde_json::Value) -> LedgerEntry {
        let mut v = serde_json::json!({
            "id": "r", "tenant_id": "t", "key_id": "k", "requested_model": "m",
            "privacy_class": "public", "detectors": [], "status": "ok", "stream": false,
            "created_at": 0, "prompt_tokens": 1000, "completion_tokens": 1000,
            "decision": {"all_cloud": {"rates": {"price_in_per_1k": 1.0, "price_out_per_1k": 2.0,
                "joules_per_prompt_token": 0.5, "joules_per_output_token": 1.0}}}
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_ledger_columns_come_before_the_decision_record() {
        // Older rows: priced from the decision's rates at the row's tokens.
        assert_eq!(all_cloud(&row(&serde_json::json!({}))), Some((3.0, 1500.0)));
        let stored = row(&serde_json::json!({
            "placement": {"allcloud_usd": 0.25, "allcloud_joules": 40.0}
        }));
        assert_eq!(all_cloud(&stored), Some((0.25, 40.0)));
    }
}

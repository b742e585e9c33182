//! One admitted request's ledger row, as a guard.
//!
//! The handler fills the row in as the request proceeds (class, decision,
//! backend, usage, first token) and calls [`Record::finish`] with the
//! outcome. If the guard is dropped without `finish`, the client went away
//! (axum drops the handler future or the response body), and the row is
//! recorded as `cancelled` with what was known by then. Either way `Drop`
//! sends the row exactly once and records the request's metrics.

use std::sync::Arc;
use std::time::Instant;

use super::Sink;
use crate::limits::{BudgetHold, KeyPermit};
use crate::live::lengths::{Lengths, Seen};
use crate::privacy::{Class, Classification};
use crate::routing::{CloudRates, Decision, NoRoute, Scored, Zone};
use crate::store::{DecisionJson, LedgerEntry, LedgerStatus};
use crate::traces::RequestTrace;

/// What a row starts with, known at admission.
#[derive(Debug, Clone)]
pub struct RecordInit {
    pub id: String,
    pub tenant_id: String,
    pub key_id: String,
    pub requested_model: String,
    pub stream: bool,
    pub created_at: i64,
}

/// Prices and energy rates of the backend that served, to turn tokens into
/// USD and joules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pricing {
    pub price_in_per_1k: f64,
    pub price_out_per_1k: f64,
    pub joules_per_prompt_token: f64,
    pub joules_per_output_token: f64,
}

pub struct Record {
    entry: LedgerEntry,
    /// The request's spans; they end with the row (for a stream, when the
    /// stream does).
    trace: RequestTrace,
    sink: Option<Sink>,
    started: Instant,
    pricing: Option<Pricing>,
    /// Where the serving backend runs, for the metrics' `zone` label.
    zone: Option<Zone>,
    /// The request's own prompt estimate, used when the upstream reported
    /// no usage (a cancelled or broken stream).
    prompt_estimate: Option<u32>,
    /// Content chunks seen in a stream: one token each, the count used when
    /// no usage chunk arrived.
    chunks: u32,
    energy_reported: Option<f64>,
    finished: bool,
    /// The budget held at admission, settled with the row's cost when the
    /// row is finished.
    hold: Option<BudgetHold>,
    /// The all-cloud counterfactual's backend figures, to price the
    /// request's actual tokens there when it is done.
    all_cloud: Option<CloudRates>,
    /// The key's slot among its requests in flight, given back when the
    /// request ends.
    key_slot: Option<KeyPermit>,
    /// USD and joules spent by the request's other attempts (a hedge's
    /// loser, a cascade's first answer), added to the row's own.
    others: (f64, f64),
    /// Where the answer's length and the prompt's overhead go when the row
    /// is done, for the predictions of the tenant's next requests.
    lengths: Option<Arc<Lengths>>,
}

impl Record {
    pub(crate) fn new(init: RecordInit, sink: Option<Sink>) -> Record {
        Record {
            entry: LedgerEntry::new(
                init.id,
                init.tenant_id,
                init.key_id,
                init.requested_model,
                init.stream,
                init.created_at,
            ),
            trace: RequestTrace::default(),
            sink,
            started: Instant::now(),
            pricing: None,
            zone: None,
            prompt_estimate: None,
            chunks: 0,
            energy_reported: None,
            finished: false,
            hold: None,
            all_cloud: None,
            others: (0.0, 0.0),
            key_slot: None,
            lengths: None,
        }
    }

    /// Has the answer's length and the prompt's overhead, when the request
    /// succeeds, count towards the means of its tenant and requested model.
    pub fn learn_lengths(&mut self, lengths: Arc<Lengths>) {
        self.lengths = Some(lengths);
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// Gives the row the request's spans, to end when it is sent.
    pub fn set_trace(&mut self, trace: RequestTrace) {
        self.trace = trace;
    }

    pub fn trace(&mut self) -> &mut RequestTrace {
        &mut self.trace
    }

    pub fn set_class(&mut self, c: &Classification, prompt_estimate: u32) {
        self.entry.privacy_class = c.class;
        self.entry.detectors.clone_from(&c.fired);
        self.prompt_estimate = Some(prompt_estimate);
    }

    #[must_use]
    pub fn class(&self) -> Class {
        self.entry.privacy_class
    }

    pub fn set_decision(&mut self, d: &Decision) {
        self.entry.decision = DecisionJson::new(d);
        if let Some(c) = &d.all_cloud {
            self.entry.placement.allcloud_backend = Some(c.backend.clone());
            self.all_cloud = Some(c.rates);
        }
    }

    /// Adds `value` under `key` to the row's decision: what a hedge or a
    /// cascade did, so that every attempt of the request is in its row.
    pub fn note_in_decision(&mut self, key: &str, value: serde_json::Value) {
        if let Some(d) = &mut self.entry.decision {
            d.insert(key, value);
        }
    }

    /// The wait for a running slot the edge worker measured (ms).
    pub fn set_actual_wait(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.entry.placement.actual_wait_ms = Some(ms);
        }
    }

    /// Why no backend could take the request, in place of a decision.
    pub fn set_no_route(&mut self, r: &NoRoute) {
        self.entry.decision = DecisionJson::new(r);
    }

    /// Gives the row the key's slot among its requests in flight, to give
    /// back when the request ends.
    pub fn hold_key_slot(&mut self, slot: KeyPermit) {
        self.key_slot = Some(slot);
    }

    /// Gives the row the request's budget hold, to settle when it is done.
    pub fn hold_budget(&mut self, hold: BudgetHold) {
        self.hold = Some(hold);
    }

    /// The candidate now being tried; a failover overwrites the previous.
    pub fn set_backend(&mut self, s: &Scored, zone: Zone, reason: &'static str, pricing: Pricing) {
        self.entry.backend = Some(s.backend.clone());
        self.entry.resolved_model = Some(s.model.clone());
        self.entry.route_reason = Some(reason.to_owned());
        self.entry.predicted_latency_ms = Some(s.prediction.latency_ms);
        self.entry.predicted_energy_j = Some(s.prediction.energy_j);
        self.entry.predicted_cost_usd = Some(s.prediction.cost_usd);
        self.entry.placement.predicted_wait_ms = Some(s.prediction.queue_ms);
        // A failover's answer comes from another backend: the previous
        // attempt's wait is not this one's.
        self.entry.placement.actual_wait_ms = None;
        self.pricing = Some(pricing);
        self.zone = Some(zone);
    }

    /// Marks the first token (or whole answer) reaching the gateway.
    pub fn first_token(&mut self) {
        if self.entry.ttft_ms.is_none() {
            self.entry.ttft_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        }
    }

    pub fn content_chunk(&mut self) {
        self.first_token();
        self.chunks = self.chunks.saturating_add(1);
    }

    pub fn set_usage(&mut self, prompt: u32, completion: u32, energy_j: Option<f64>) {
        self.entry.prompt_tokens = Some(prompt);
        self.entry.completion_tokens = Some(completion);
        self.energy_reported = energy_j.filter(|j| j.is_finite() && *j >= 0.0);
    }

    /// Adds what another attempt of the request spent (a hedge's loser, a
    /// cascade's first answer) to the row's cost and energy, and so to
    /// what its budget is charged: `prompt` and `completion` tokens at
    /// `pricing`, or the energy the backend reported. Returns the USD and
    /// joules added.
    pub fn add_other_attempt(
        &mut self,
        pricing: Pricing,
        prompt: u32,
        completion: u32,
        energy_j: Option<f64>,
    ) -> (f64, f64) {
        let (usd, joules) = pricing.price(prompt, completion);
        let joules = energy_j
            .filter(|j| j.is_finite() && *j >= 0.0)
            .unwrap_or(joules);
        self.others.0 += usd;
        self.others.1 += joules;
        (usd, joules)
    }

    /// Records the outcome; the row is sent when the guard drops.
    pub fn finish(mut self, status: LedgerStatus, http_status: u16, error_code: Option<&str>) {
        self.entry.status = status;
        self.entry.http_status = Some(http_status);
        self.entry.error_code = error_code.map(str::to_owned);
        self.finished = true;
    }

    fn complete_numbers(&mut self) {
        self.complete_own_numbers();
        let (usd, joules) = self.others;
        if usd > 0.0 || joules > 0.0 {
            let e = &mut self.entry;
            e.usd = Some(e.usd.unwrap_or(0.0) + usd);
            e.joules = Some(e.joules.unwrap_or(0.0) + joules);
        }
    }

    /// The serving attempt's figures.
    fn complete_own_numbers(&mut self) {
        let e = &mut self.entry;
        e.latency_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        let Some(p) = self.pricing else {
            return;
        };
        if e.prompt_tokens.is_none() && e.backend.is_some() && e.status != LedgerStatus::Error {
            e.prompt_tokens = self.prompt_estimate;
            e.completion_tokens = Some(self.chunks);
            e.usage_estimated = true;
        }
        let (Some(prompt), Some(completion)) = (e.prompt_tokens, e.completion_tokens) else {
            return;
        };
        if let Some(cloud) = self.all_cloud {
            let (latency, joules, usd) = cloud.price(prompt, completion);
            e.placement.allcloud_latency_ms = Some(latency);
            e.placement.allcloud_joules = Some(joules);
            e.placement.allcloud_usd = Some(usd);
        }
        let (usd, joules) = p.price(prompt, completion);
        e.usd = Some(usd);
        e.joules = Some(self.energy_reported.unwrap_or(joules));
    }
}

impl Pricing {
    /// USD and joules of `prompt` and `completion` tokens.
    #[must_use]
    pub fn price(&self, prompt: u32, completion: u32) -> (f64, f64) {
        let (prompt, completion) = (f64::from(prompt), f64::from(completion));
        (
            prompt / 1000.0 * self.price_in_per_1k + completion / 1000.0 * self.price_out_per_1k,
            prompt * self.joules_per_prompt_token + completion * self.joules_per_output_token,
        )
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.finished && std::thread::panicking() {
            // The handler panicked: the client gets the panic layer's 500.
            self.entry.http_status = Some(500);
            self.entry.status = LedgerStatus::Error;
            self.entry.error_code = Some("internal_error".to_owned());
        } else if !self.finished {
            // Nginx's "client closed request": the client never saw a status.
            self.entry.http_status = Some(499);
            self.entry.status = LedgerStatus::Cancelled;
        }
        self.complete_numbers();
        if let (Some(lengths), LedgerStatus::Ok, Some(completion_tokens)) = (
            self.lengths.take(),
            self.entry.status,
            self.entry.completion_tokens,
        ) {
            let e = &self.entry;
            // Estimated usage is the estimate itself: no overhead to learn.
            let prompt_overhead = match (e.usage_estimated, e.prompt_tokens, self.prompt_estimate) {
                (false, Some(reported), Some(estimate)) => {
                    Some(f64::from(reported) - f64::from(estimate))
                }
                _ => None,
            };
            let seen = Seen {
                completion_tokens,
                prompt_overhead,
            };
            lengths.observe(&e.tenant_id, &e.requested_model, seen, Instant::now());
        }
        if let Some(hold) = self.hold.take() {
            hold.settle(self.entry.usd.unwrap_or(0.0));
        }
        let e = &self.entry;
        let backend = e.backend.clone().unwrap_or_else(|| "none".to_owned());
        let reason = e.route_reason.clone().unwrap_or_else(|| "none".to_owned());
        let status = e.status.as_str();
        let class = e.privacy_class.as_str();
        let zone = self.zone.map_or("none", Zone::as_str);
        // class × zone is what shows, after the fact and from the outside,
        // that confidential requests stayed on premises.
        metrics::counter!("gateway_requests_total", "status" => status, "backend" => backend.clone(),
            "reason" => reason, "class" => class, "zone" => zone)
        .increment(1);
        if let Some(ms) = e.latency_ms {
            metrics::histogram!("gateway_request_duration_seconds", "status" => status, "backend" => backend.clone())
                .record(ms / 1000.0);
        }
        if let Some(ms) = e.ttft_ms {
            metrics::histogram!("gateway_ttft_seconds", "backend" => backend.clone())
                .record(ms / 1000.0);
        }
        // Integer counters in small units: the metrics facade's counters
        // are u64, and a request's joules or dollars are fractions.
        if let Some(j) = e.joules {
            metrics::counter!("gateway_energy_millijoules_total", "backend" => backend.clone(), "zone" => zone)
                .increment(to_units(j, 1e3));
        }
        if let Some(usd) = e.usd {
            metrics::counter!("gateway_cost_microusd_total", "backend" => backend, "zone" => zone)
                .increment(to_units(usd, 1e6));
        }
        record_savings(e, zone);
        self.trace.finish(&self.entry);
        // The record ends here: its row moves out rather than being cloned
        // (an empty one, which allocates nothing, takes its place).
        let blank = LedgerEntry::new(
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            false,
            0,
        );
        let entry = std::mem::replace(&mut self.entry, blank);
        if let Some(sink) = &self.sink {
            sink.send(entry);
        } else {
            tracing::error!(id = %entry.id, "ledger closed; row not recorded");
        }
    }
}

/// What rows with an all-cloud counterfactual cost, and what all-cloud
/// would have cost for them: the difference is what the edge saved (CO2 is
/// joules times `gateway_grid_gco2_per_kwh`).
fn record_savings(e: &LedgerEntry, zone: &'static str) {
    let p = &e.placement;
    let (Some(cloud_usd), Some(cloud_j), Some(usd), Some(joules)) =
        (p.allcloud_usd, p.allcloud_joules, e.usd, e.joules)
    else {
        return;
    };
    metrics::counter!("gateway_allcloud_cost_microusd_total", "zone" => zone)
        .increment(to_units(cloud_usd, 1e6));
    metrics::counter!("gateway_allcloud_energy_millijoules_total", "zone" => zone)
        .increment(to_units(cloud_j, 1e3));
    metrics::counter!("gateway_counterfactual_actual_cost_microusd_total", "zone" => zone)
        .increment(to_units(usd, 1e6));
    metrics::counter!("gateway_counterfactual_actual_energy_millijoules_total", "zone" => zone)
        .increment(to_units(joules, 1e3));
}

/// `value × scale`, rounded, as a counter increment (0 for NaN or negative).
fn to_units(value: f64, scale: f64) -> u64 {
    // `as` saturates: NaN and negatives become 0, overflow u64::MAX.
    (value * scale).round() as u64
}

//! Edge and cloud on one request, beyond failover: hedging and cascade.
//!
//! Both are per policy, for the first choice only, when it is on the
//! premises and a cloud candidate follows it; never for a confidential
//! request (routing gives those no cloud candidate, and [`partner`] checks
//! the class again). Every attempt is in the request's one ledger row: the
//! row describes the answer the client got, the decision column says what
//! the hedge or cascade did (`hedge`, `cascade`), and the row's cost and
//! energy (so what the key's budget is charged) add those of the attempt
//! the client did not get: a hedge's cancelled loser (its prompt, as
//! estimated), a cascade's edge answer (its usage).
//!
//! - **Hedging.** When the edge worker has not started answering by its
//!   predicted first byte (for a stream: queue wait, round trip and
//!   prefill; otherwise the whole predicted answer) plus the policy's
//!   `hedge_margin_ms`, the same request also starts in the cloud. The
//!   first to answer (a stream's first token, a JSON answer's end) wins;
//!   the other is cancelled by dropping it, which closes its connection
//!   (the edge worker then stops generating). A hedge is a retry: it needs
//!   the retry budget, so a slow fleet is not sent twice its load.
//! - **Cascade.** A non-streaming request is answered on the edge first,
//!   with token log-probabilities requested. Its confidence is the mean
//!   log-probability of the answer's tokens (the log of their geometric
//!   mean probability: −0.1 ≈ 0.90, −0.5 ≈ 0.61, −1.0 ≈ 0.37). Below the
//!   policy's `cascade_min_logprob` the request is asked of the cloud,
//!   whose answer the client gets; if the cloud fails, the edge's answer is
//!   returned. Log-probabilities the client did not ask for are removed.
//!   Streams are not cascaded: the edge's tokens would already be with the
//!   client.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::relay::{context_length, pricing, Answer, Answered, Attempt, Failed, Target};
use super::request::ChatRequest;
use crate::catalog::Snapshot;
use crate::ledger::Record;
use crate::privacy::Class;
use crate::routing::{Backend, Decision, Scored, Zone};
use crate::state::AppState;

/// The first attempt of a request, with what hedging or a cascade needs.
pub(super) struct First<'a, 'r> {
    pub app: &'r AppState,
    pub decision: &'a Decision,
    pub snapshot: &'a Snapshot,
    pub req: &'r mut ChatRequest,
    pub record: &'r mut Record,
    pub attempts: &'r mut u32,
}

impl<'a> First<'a, '_> {
    /// Runs `primary`, hedged or cascaded as the policy says.
    pub(super) async fn run(
        &mut self,
        primary: Attempt<'a>,
    ) -> Result<Answered<'a>, Vec<Failed<'a>>> {
        let policy = &self.decision.policy;
        let (cascade, hedge) = (policy.cascade_min_logprob, policy.hedge_margin_ms);
        if let Some(partner) = self.partner(primary.target) {
            if let (Some(threshold), false) = (cascade, self.req.stream) {
                return self.cascade(primary, partner, threshold).await;
            }
            if let Some(margin) = hedge {
                return self.hedge(primary, partner, margin).await;
            }
        }
        primary.run(self.app, self.req).await.map_err(|f| vec![f])
    }

    /// The cloud candidate that may take over from an on-premises first
    /// choice: the best-ranked cloud fallback. `None` for a confidential
    /// request, a first choice in the cloud, or no cloud candidate.
    fn partner(&self, (first, _, _): Target<'a>) -> Option<(&'a Backend, &'a Scored)> {
        if self.decision.class >= Class::Confidential || first.zone != Zone::OnPrem {
            return None;
        }
        let cand = self
            .decision
            .fallbacks
            .iter()
            .find(|c| c.zone == Zone::Cloud)?;
        let backend = self
            .snapshot
            .backends
            .iter()
            .find(|b| b.id == cand.backend_id && b.zone == Zone::Cloud)?;
        Some((backend, cand))
    }

    async fn hedge(
        &mut self,
        primary: Attempt<'a>,
        (backend, cand): (&'a Backend, &'a Scored),
        margin_ms: f64,
    ) -> Result<Answered<'a>, Vec<Failed<'a>>> {
        let (edge, edge_cand, _) = primary.target;
        let after = predicted_first_byte(self.decision, edge, edge_cand, self.req.stream)
            + Duration::from_secs_f64(margin_ms / 1000.0);
        let context = context_length(self.app, backend);
        let hedge = Attempt::prepare(
            self.app,
            self.req,
            (backend, cand, "hedge"),
            context,
            self.record,
            *self.attempts + 1,
        );
        let (app, req) = (self.app, &*self.req);
        let first = primary.run(app, req);
        tokio::pin!(first);
        tokio::select! {
            biased;
            r = &mut first => return r.map_err(|f| vec![f]),
            () = tokio::time::sleep(after) => {}
        }
        let after_ms = after.as_secs_f64() * 1000.0;
        if !may_try(app, backend) {
            metrics::counter!("gateway_hedges_total", "outcome" => "not_started").increment(1);
            self.record.note_in_decision(
                "hedge",
                json!({"backend": backend.name, "after_ms": after_ms, "started": false}),
            );
            return first.await.map_err(|f| vec![f]);
        }
        *self.attempts += 1;
        let started = Instant::now();
        let second = hedge.run(app, req);
        tokio::pin!(second);
        // The first success wins; a failure waits for the other.
        let (result, winner) = tokio::select! {
            r = &mut first => match r {
                Ok(a) => (Ok(a), "edge"),
                Err(f) => match second.await {
                    Ok(a) => (Ok(a), "cloud"),
                    Err(g) => (Err(vec![f, g]), "none"),
                },
            },
            r = &mut second => match r {
                Ok(a) => (Ok(a), "cloud"),
                Err(g) => match first.await {
                    Ok(a) => (Ok(a), "edge"),
                    Err(f) => (Err(vec![f, g]), "none"),
                },
            },
        };
        metrics::counter!("gateway_hedges_total", "outcome" => winner).increment(1);
        // The loser was cancelled once the winner answered; what it had
        // taken in by then (its prompt, as estimated: what it produced is
        // unknown) is charged to the request too.
        let loser = match winner {
            "edge" => Some(backend),
            "cloud" => Some(edge),
            _ => None,
        };
        let (loser_usd, loser_joules) = loser.map_or((0.0, 0.0), |b| {
            self.record
                .add_other_attempt(pricing(app, b), req.prompt_estimate, 0, None)
        });
        self.record.note_in_decision(
            "hedge",
            json!({
                "backend": backend.name,
                "after_ms": after_ms,
                "started": true,
                "winner": winner,
                "decided_after_hedge_ms": started.elapsed().as_secs_f64() * 1000.0,
                "loser_usd": loser_usd,
                "loser_joules": loser_joules,
            }),
        );
        result
    }

    async fn cascade(
        &mut self,
        mut primary: Attempt<'a>,
        (backend, cand): (&'a Backend, &'a Scored),
        threshold: f64,
    ) -> Result<Answered<'a>, Vec<Failed<'a>>> {
        let asked = self.req.body.get("logprobs").and_then(Value::as_bool) == Some(true);
        if !asked {
            primary.body = with_logprobs(&primary.body);
        }
        let mut edge = primary.run(self.app, self.req).await.map_err(|f| vec![f])?;
        let (confidence, edge_usage) = match &edge.answer {
            Answer::Json { body, usage } => (
                mean_logprob(body),
                usage
                    .as_ref()
                    .map(|u| (u.prompt_tokens, u.completion_tokens, u.energy_joules)),
            ),
            Answer::Stream(_) => (None, None),
        };
        let low = confidence.is_some_and(|c| c < threshold);
        let mut note = json!({
            "edge_backend": edge.target.0.name,
            "mean_logprob": confidence,
            "threshold": threshold,
            "escalated": false,
        });
        if low && may_try(self.app, backend) {
            *self.attempts += 1;
            let context = context_length(self.app, backend);
            let cloud = Attempt::prepare(
                self.app,
                self.req,
                (backend, cand, "cascade"),
                context,
                self.record,
                *self.attempts,
            );
            note["escalated"] = json!(true);
            note["edge_usage"] = edge_usage.map_or(
                Value::Null,
                |(p, c, j)| json!({"prompt_tokens": p, "completion_tokens": c, "energy_joules": j}),
            );
            match cloud.run(self.app, self.req).await {
                Ok(answer) => {
                    metrics::counter!("gateway_cascades_total", "outcome" => "escalated")
                        .increment(1);
                    // The client gets the cloud's answer; the edge's, not
                    // shown, was spent all the same (its prompt, as
                    // estimated, if it reported no usage).
                    let (p, c, j) = edge_usage.unwrap_or((self.req.prompt_estimate, 0, None));
                    let edge_pricing = pricing(self.app, edge.target.0);
                    let (usd, joules) = self.record.add_other_attempt(edge_pricing, p, c, j);
                    note["edge_usd"] = json!(usd);
                    note["edge_joules"] = json!(joules);
                    self.record.note_in_decision("cascade", note);
                    return Ok(answer);
                }
                Err(f) => {
                    note["cloud_error"] = json!(f.error.label());
                    metrics::counter!("gateway_cascades_total", "outcome" => "cloud_failed")
                        .increment(1);
                }
            }
        } else {
            metrics::counter!("gateway_cascades_total", "outcome" => if low { "not_started" } else { "kept" })
                .increment(1);
        }
        self.record.note_in_decision("cascade", note);
        if !asked {
            if let Answer::Json { body, .. } = &mut edge.answer {
                *body = without_logprobs(body);
            }
        }
        Ok(edge)
    }
}

/// Whether a further attempt at `backend` may start now: within the retry
/// budget, and not while another request holds its recovery trial.
fn may_try(app: &AppState, backend: &Backend) -> bool {
    if !app.retries.try_retry() {
        metrics::counter!("gateway_retry_budget_exhausted_total").increment(1);
        return false;
    }
    app.live.claim_trial(&backend.id)
}

/// When an edge worker's answer should start: a stream's first token
/// (queue wait, round trip and the prompt's prefill), or a non-streaming
/// answer's end (the whole prediction), as the decision predicted it.
fn predicted_first_byte(
    decision: &Decision,
    edge: &Backend,
    cand: &Scored,
    stream: bool,
) -> Duration {
    let p = &cand.prediction;
    let ms = if stream {
        let prompt = f64::from(
            decision
                .prompt_tokens
                .saturating_sub(p.cached_prompt_tokens),
        );
        p.queue_ms + edge.rtt_ms + prompt / p.prefill_tps.max(1e-3) * 1000.0
    } else {
        p.latency_ms
    };
    Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).unwrap_or(Duration::ZERO)
}

/// The body with `"logprobs": true` added.
fn with_logprobs(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("logprobs".to_owned(), Value::Bool(true));
            serde_json::to_vec(&o).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

/// The answer with every choice's `logprobs` set to `null`.
fn without_logprobs(body: &[u8]) -> bytes::Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return bytes::Bytes::copy_from_slice(body);
    };
    for choice in v["choices"].as_array_mut().into_iter().flatten() {
        if let Some(c) = choice.as_object_mut() {
            c.insert("logprobs".to_owned(), Value::Null);
        }
    }
    serde_json::to_vec(&v).map_or_else(|_| bytes::Bytes::copy_from_slice(body), bytes::Bytes::from)
}

/// The mean log-probability of the first choice's tokens (OpenAI's
/// `choices[0].logprobs.content[].logprob`); `None` without any.
fn mean_logprob(body: &[u8]) -> Option<f64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let tokens = v["choices"][0]["logprobs"]["content"].as_array()?;
    let values: Vec<f64> = tokens
        .iter()
        .filter_map(|t| t["logprob"].as_f64())
        .filter(|l| l.is_finite())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_the_mean_token_logprob_and_is_removed_when_not_asked() {
        let body = br#"{"choices":[{"index":0,"message":{"content":"hi"},
            "logprobs":{"content":[{"token":"h","logprob":-0.5},{"token":"i","logprob":-1.5}]}}]}"#;
        assert_eq!(mean_logprob(body), Some(-1.0));
        assert_eq!(mean_logprob(br#"{"choices":[{"logprobs":null}]}"#), None);
        assert_eq!(mean_logprob(b"not json"), None);
        let stripped: Value = serde_json::from_slice(&without_logprobs(body)).unwrap();
        assert_eq!(stripped["choices"][0]["logprobs"], Value::Null);
        assert_eq!(stripped["choices"][0]["message"]["content"], "hi");
        let asked: Value = serde_json::from_slice(&with_logprobs(br#"{"model":"m"}"#)).unwrap();
        assert_eq!(asked, json!({"model": "m", "logprobs": true}));
    }
}

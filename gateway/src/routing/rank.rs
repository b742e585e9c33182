//! Candidate filtering and ranking: the routing decision itself.

use serde::{Deserialize, Serialize};

use super::counterfactual::{all_cloud, AllCloud};
use super::queue::{power_of_two, PowerOfTwo};
use super::score::{predict, score, Prediction, Tokens};
use super::types::{
    Alias, AliasTarget, BackendKind, Capabilities, Observed, Policy, RequestView, Zone,
};
use crate::privacy::Class;

/// Why a backend that serves the model is not a candidate. Checked in this
/// order, so privacy exclusions are always recorded as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Cloud zone and the request is confidential.
    PrivacyZone,
    /// Cloud zone and the tenant's policy forbids the cloud.
    CloudDisallowed,
    Disabled,
    Unhealthy,
    NotReady,
    Draining,
    /// Prompt plus output tokens exceed the context length.
    ContextTooSmall,
    /// Every running and queue slot is taken (or `max_concurrency` reached).
    Saturated,
    /// The request needs tools or a JSON response format and the backend
    /// cannot honour it.
    Unsupported,
}

/// A backend that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub backend: String,
    pub zone: Zone,
    pub why: Exclusion,
}

/// Machine-readable reason a candidate holds its place (response header and
/// ledger column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteReason {
    /// The only usable backend.
    OnlyCandidate,
    /// Lowest score among candidates that keep the SLO.
    LowestScore,
    /// Every candidate breaks the SLO; the lowest score was taken anyway.
    SloFallback,
    /// A cloud backend won because every edge backend was saturated.
    EdgeSaturated,
    /// A cloud backend won because the edge was predicted to break the SLO.
    EdgeOverSlo,
    /// Not the first choice; tried if those before it fail before the first
    /// byte.
    Failover,
}

impl RouteReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::OnlyCandidate => "only_candidate",
            RouteReason::LowestScore => "lowest_score",
            RouteReason::SloFallback => "slo_fallback",
            RouteReason::EdgeSaturated => "edge_saturated",
            RouteReason::EdgeOverSlo => "edge_over_slo",
            RouteReason::Failover => "failover",
        }
    }
}

/// One ranked candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub backend_id: String,
    pub backend: String,
    pub kind: BackendKind,
    pub zone: Zone,
    /// Public model id this backend will serve the request as.
    pub model: String,
    /// The name to send upstream.
    pub upstream_model: String,
    pub prediction: Prediction,
    pub score: f64,
    pub meets_slo: bool,
    pub reason: RouteReason,
}

/// The routing decision: the choice, the failover order and the inputs,
/// serialisable as the ledger's explanation column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub requested_model: String,
    pub class: Class,
    /// Prompt tokens the predictions assumed: the gateway's estimate plus
    /// the tenant's mean overhead for the model.
    pub prompt_tokens: u32,
    /// Output tokens the latency predictions assumed.
    pub output_tokens: u32,
    /// Output tokens the energy and money predictions assumed: the mean
    /// answer so far, within `output_tokens`.
    #[serde(default)]
    pub answer_tokens: Option<u32>,
    pub policy: Policy,
    pub chosen: Scored,
    /// Remaining candidates, best first. Callers must still only fail over
    /// before the first byte reaches the client.
    pub fallbacks: Vec<Scored>,
    pub excluded: Vec<Excluded>,
    /// The power-of-two choice, when near-equal edge workers were weighed
    /// by predicted wait.
    #[serde(default)]
    pub power_of_two: Option<PowerOfTwo>,
    /// What the request would have cost in an all-cloud deployment; `None`
    /// when no cloud backend serves the model.
    #[serde(default)]
    pub all_cloud: Option<AllCloud>,
    /// Ejected backends readmitted because failures had ejected more of
    /// their pool than the cap allows (see `cap_ejections`); these are
    /// tried without waiting for their circuit's trial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readmitted: Vec<String>,
}

impl Decision {
    /// The chosen candidate followed by the fallbacks.
    pub fn candidates(&self) -> impl Iterator<Item = &Scored> {
        std::iter::once(&self.chosen).chain(self.fallbacks.iter())
    }
}

/// Why no backend can take the request; `code()` is the OpenAI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoRouteCode {
    /// No backend (enabled or not) serves the model or alias: 404.
    ModelNotFound,
    /// A confidential request and no usable on-premises backend: 503.
    PrivacyRouteUnavailable,
    /// Every backend that serves the model has too small a context: 400.
    ContextLengthExceeded,
    /// Backends exist but none is usable now (down, saturated, disabled): 503.
    NoBackendAvailable,
    /// Every backend the request may use lacks a feature it needs (tools,
    /// a JSON response format): 400, never a silent plain-text answer.
    UnsupportedCapability,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("no route: {}", self.code.as_str())]
pub struct NoRoute {
    pub code: NoRouteCode,
    /// Backends that serve the model and why each was left out.
    pub excluded: Vec<Excluded>,
}

impl NoRouteCode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NoRouteCode::ModelNotFound => "model_not_found",
            NoRouteCode::PrivacyRouteUnavailable => "privacy_route_unavailable",
            NoRouteCode::ContextLengthExceeded => "context_length_exceeded",
            NoRouteCode::NoBackendAvailable => "no_backend_available",
            NoRouteCode::UnsupportedCapability => "unsupported_capability",
        }
    }
}

/// Resolves a requested name through the aliases; a name that is no alias
/// stands for itself.
#[must_use]
pub fn resolve_alias(requested: &str, aliases: &[Alias]) -> AliasTarget {
    aliases.iter().find(|a| a.name == requested).map_or_else(
        || AliasTarget::Models(vec![requested.to_owned()]),
        |a| a.target.clone(),
    )
}

/// Ranks the backends for a request.
///
/// `target` is the request's model after [`resolve_alias`]. The result's
/// `chosen` is the lowest score among candidates that keep the latency SLO;
/// candidates that break it follow all that keep it; equal scores are
/// ordered by backend name so the same inputs always give the same order.
pub fn rank(
    req: &RequestView,
    target: &AliasTarget,
    policy: &Policy,
    backends: &[Observed<'_>],
) -> Result<Decision, NoRoute> {
    let max_out = req
        .max_output_tokens
        .unwrap_or(policy.expected_output_tokens);
    // A request's max_tokens bounds the context check, but most answers end
    // well before it, so latency is predicted for the smaller of it and the
    // policy's expectation, and energy and money for the answers seen so
    // far, within that. The prompt is predicted as the backends counted the
    // tenant's earlier ones; the context check keeps the estimate.
    let output = max_out.min(policy.expected_output_tokens);
    let prompt = req.expected.prompt_overhead.map_or(req.prompt_tokens, |o| {
        // `as` saturates; the sum is finite and at least 1 here.
        (f64::from(req.prompt_tokens) + o).round().max(1.0) as u32
    });
    let tokens = Tokens {
        prompt,
        output,
        answer: req.expected.answer_tokens.map_or(output, |mean| {
            // `as` saturates; a mean of counts is not negative. No `clamp`:
            // it panics on a bound of 0, which validation keeps out but a
            // request path must not rely on.
            (mean.round() as u32).max(1).min(output)
        }),
        prefix: req.prefix.map_or(0, |p| p.tokens),
    };
    let mut serving = 0usize;
    let mut excluded = Vec::new();
    let mut ranked = Vec::new();
    for obs in backends {
        let Some((model, upstream)) = serves(obs, target) else {
            continue;
        };
        serving += 1;
        if let Some(why) = exclusion(obs, req, policy, max_out) {
            excluded.push(Excluded {
                backend: obs.backend.name.clone(),
                zone: obs.backend.zone,
                why,
            });
            continue;
        }
        let prediction = predict(obs, tokens);
        ranked.push(Scored {
            backend_id: obs.backend.id.clone(),
            backend: obs.backend.name.clone(),
            kind: obs.backend.kind,
            zone: obs.backend.zone,
            model,
            upstream_model: upstream,
            score: score(&prediction, policy),
            meets_slo: prediction.latency_ms <= policy.latency_slo_ms,
            prediction,
            reason: RouteReason::Failover,
        });
    }
    ranked.sort_by(|a, b| {
        b.meets_slo
            .cmp(&a.meets_slo)
            .then(a.score.total_cmp(&b.score))
            .then_with(|| a.backend.cmp(&b.backend))
    });
    let power_of_two = req.seed.and_then(|seed| power_of_two(&mut ranked, seed));
    let mut ranked = ranked.into_iter();
    let Some(mut chosen) = ranked.next() else {
        return Err(NoRoute {
            code: no_route_code(serving, &excluded, req.class),
            excluded,
        });
    };
    let fallbacks: Vec<Scored> = ranked.collect();
    chosen.reason = first_reason(&chosen, &fallbacks, &excluded);
    Ok(Decision {
        requested_model: req.model.clone(),
        class: req.class,
        prompt_tokens: tokens.prompt,
        output_tokens: tokens.output,
        answer_tokens: Some(tokens.answer),
        policy: policy.clone(),
        chosen,
        fallbacks,
        excluded,
        power_of_two,
        all_cloud: all_cloud(backends, target, policy, tokens),
        readmitted: Vec::new(),
    })
}

/// The (public, upstream) model this backend would serve `target` as. For a
/// list, the first listed id the backend serves; for `Any`, its first model.
pub(super) fn serves(obs: &Observed<'_>, target: &AliasTarget) -> Option<(String, String)> {
    let b = obs.backend;
    match target {
        AliasTarget::Any => b
            .models
            .first()
            .map(|m| (m.public.clone(), m.upstream.clone())),
        AliasTarget::Models(ids) => ids
            .iter()
            .find_map(|id| b.upstream_for(id).map(|u| (id.clone(), u.to_owned()))),
    }
}

fn exclusion(
    obs: &Observed<'_>,
    req: &RequestView,
    policy: &Policy,
    max_out: u32,
) -> Option<Exclusion> {
    let b = obs.backend;
    let checks = [
        (
            b.zone == Zone::Cloud && req.class >= Class::Confidential,
            Exclusion::PrivacyZone,
        ),
        (
            b.zone == Zone::Cloud && !policy.allow_cloud,
            Exclusion::CloudDisallowed,
        ),
        (
            !supports(obs, req.needs) || (req.choices > 1 && b.kind == BackendKind::Edge),
            Exclusion::Unsupported,
        ),
        (!b.enabled, Exclusion::Disabled),
        (!obs.healthy, Exclusion::Unhealthy),
        (obs.load.is_some_and(|l| !l.ready), Exclusion::NotReady),
        (obs.load.is_some_and(|l| l.draining), Exclusion::Draining),
        (
            !fits_context(obs, req.prompt_tokens, max_out),
            Exclusion::ContextTooSmall,
        ),
        (saturated(obs), Exclusion::Saturated),
    ];
    checks.into_iter().find_map(|(hit, why)| hit.then_some(why))
}

/// Whether the backend honours every feature the request needs: an edge
/// worker as its live report says, other backends as declared.
fn supports(obs: &Observed<'_>, needs: Capabilities) -> bool {
    let has = obs
        .load
        .map_or(obs.backend.capabilities, |l| l.capabilities);
    (!needs.tools || has.tools) && (!needs.json_schema || has.json_schema)
}

fn fits_context(obs: &Observed<'_>, prompt: u32, max_out: u32) -> bool {
    let ctx = obs
        .load
        .and_then(|l| l.context_length)
        .unwrap_or(obs.backend.context_length);
    u64::from(prompt) + u64::from(max_out) <= u64::from(ctx)
}

fn saturated(obs: &Observed<'_>) -> bool {
    match obs.load {
        Some(l) => l.saturated(),
        None => obs.backend.max_concurrency > 0 && obs.in_flight >= obs.backend.max_concurrency,
    }
}

fn no_route_code(serving: usize, excluded: &[Excluded], class: Class) -> NoRouteCode {
    if serving == 0 {
        return NoRouteCode::ModelNotFound;
    }
    // Among the backends the request may use at all, every one lacks a
    // feature it needs, or every one's context is too small for it: that is
    // the request's problem, not the fleet's, and no retry will fix it.
    let allowed = || {
        excluded
            .iter()
            .filter(|e| !matches!(e.why, Exclusion::PrivacyZone | Exclusion::CloudDisallowed))
    };
    if allowed().next().is_some() {
        if allowed().all(|e| e.why == Exclusion::Unsupported) {
            return NoRouteCode::UnsupportedCapability;
        }
        if allowed().all(|e| e.why == Exclusion::ContextTooSmall) {
            return NoRouteCode::ContextLengthExceeded;
        }
    }
    if class >= Class::Confidential {
        return NoRouteCode::PrivacyRouteUnavailable;
    }
    NoRouteCode::NoBackendAvailable
}

fn first_reason(chosen: &Scored, rest: &[Scored], excluded: &[Excluded]) -> RouteReason {
    if chosen.kind == BackendKind::Cloud {
        if excluded
            .iter()
            .any(|e| e.why == Exclusion::Saturated && e.zone == Zone::OnPrem)
        {
            return RouteReason::EdgeSaturated;
        }
        if chosen.meets_slo
            && rest
                .iter()
                .any(|s| s.kind == BackendKind::Edge && !s.meets_slo)
        {
            return RouteReason::EdgeOverSlo;
        }
    }
    if !chosen.meets_slo {
        return RouteReason::SloFallback;
    }
    if rest.is_empty() {
        return RouteReason::OnlyCandidate;
    }
    RouteReason::LowestScore
}

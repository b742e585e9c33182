#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::privacy::Class;
use wire::load::JoulesPerToken;

pub(crate) fn backend(name: &str, kind: BackendKind) -> Backend {
    let edge = kind == BackendKind::Edge;
    Backend {
        id: format!("id-{name}"),
        name: name.to_owned(),
        kind,
        base_url: format!("http://{name}"),
        zone: if edge { Zone::OnPrem } else { Zone::Cloud },
        api_key_env: None,
        models: vec![ModelMapping {
            public: "m".into(),
            upstream: format!("{name}-m"),
        }],
        price_in_per_1k: if edge { 0.0 } else { 0.0005 },
        price_out_per_1k: if edge { 0.0 } else { 0.0015 },
        joules_per_prompt_token: if edge { 0.004 } else { 0.01 },
        joules_per_output_token: if edge { 0.12 } else { 0.3 },
        rtt_ms: if edge { 2.0 } else { 80.0 },
        prefill_tps: if edge { 900.0 } else { 5000.0 },
        decode_tps: if edge { 60.0 } else { 100.0 },
        max_concurrency: 0,
        context_length: 8192,
        enabled: true,
        capabilities: Capabilities::default(),
    }
}

fn load(active: u32, waiting: u32) -> WorkerLoad {
    serde_json::from_str(&format!(
        r#"{{"model":"smollm2-135m-instruct","quantization":"Q4_1","context_length":8192,
        "active_sequences":{active},"waiting_sequences":{waiting},"max_running_sequences":4,
        "max_waiting_sequences":16,"prefill_tokens_per_s":900.0,"decode_tokens_per_s":60.0,
        "joules_per_prompt_token":0.004,"joules_per_output_token":0.12,
        "energy_method":"cpu_time","ready":true,"draining":false,"extra_field":1}}"#
    ))
    .unwrap()
}

fn request(class: Class) -> RequestView {
    RequestView {
        model: "m".into(),
        class,
        prompt_tokens: 100,
        max_output_tokens: Some(64),
        needs: Capabilities::default(),
        choices: 1,
        prefix: None,
        seed: Some(0),
        expected: Expected::default(),
    }
}

fn target() -> AliasTarget {
    AliasTarget::Models(vec!["m".into()])
}

fn obs<'a>(b: &'a Backend, l: Option<&'a WorkerLoad>) -> Observed<'a> {
    Observed {
        backend: b,
        healthy: true,
        load: l,
        in_flight: 0,
        queue: None,
        prefix_cached: false,
    }
}

/// (name, backends, policy, class, expected backend, expected reason)
type ChoiceCase<'a> = (
    &'a str,
    Vec<Observed<'a>>,
    Policy,
    Class,
    &'a str,
    RouteReason,
);

#[test]
fn choices_table() {
    let edge = backend("edge", BackendKind::Edge);
    let cloud = backend("cloud", BackendKind::Cloud);
    let mut cheap_cloud = backend("cheap", BackendKind::Cloud);
    cheap_cloud.price_in_per_1k = 0.0;
    cheap_cloud.price_out_per_1k = 0.0;
    cheap_cloud.joules_per_output_token = 1.0;
    let idle = load(0, 0);
    let queued = load(4, 12);
    let full = load(4, 16);
    let latency_only = Policy {
        w_energy: 0.0,
        w_cost: 0.0,
        latency_slo_ms: 3_000.0,
        ..Policy::default()
    };
    let cost_only = Policy {
        w_latency: 0.0,
        w_energy: 0.0,
        w_cost: 1.0,
        ..Policy::default()
    };
    let energy_only = Policy {
        w_latency: 0.0,
        w_energy: 1.0,
        w_cost: 0.0,
        ..Policy::default()
    };
    let cases: Vec<ChoiceCase<'_>> = vec![
        (
            "edge when idle",
            vec![obs(&edge, Some(&idle)), obs(&cloud, None)],
            Policy::default(),
            Class::Public,
            "edge",
            RouteReason::LowestScore,
        ),
        (
            "cloud when edge queue breaks slo",
            vec![obs(&edge, Some(&queued)), obs(&cloud, None)],
            latency_only.clone(),
            Class::Public,
            "cloud",
            RouteReason::EdgeOverSlo,
        ),
        (
            "cloud when edge saturated",
            vec![obs(&edge, Some(&full)), obs(&cloud, None)],
            Policy::default(),
            Class::Public,
            "cloud",
            RouteReason::EdgeSaturated,
        ),
        (
            "cost weight picks cheapest",
            vec![obs(&cloud, None), obs(&cheap_cloud, None)],
            cost_only,
            Class::Public,
            "cheap",
            RouteReason::LowestScore,
        ),
        (
            "energy weight picks lowest joules",
            vec![obs(&edge, Some(&idle)), obs(&cheap_cloud, None)],
            energy_only,
            Class::Public,
            "edge",
            RouteReason::LowestScore,
        ),
        (
            "confidential stays on edge past slo",
            vec![obs(&edge, Some(&queued)), obs(&cloud, None)],
            latency_only,
            Class::Confidential,
            "edge",
            RouteReason::SloFallback,
        ),
        (
            "single candidate",
            vec![obs(&cloud, None)],
            Policy::default(),
            Class::Internal,
            "cloud",
            RouteReason::OnlyCandidate,
        ),
    ];
    for (name, backends, policy, class, want, reason) in cases {
        let d = rank(&request(class), &target(), &policy, &backends).unwrap();
        assert_eq!(d.chosen.backend, want, "{name}");
        assert_eq!(d.chosen.reason, reason, "{name}");
        if class == Class::Confidential {
            assert!(d.candidates().all(|c| c.zone == Zone::OnPrem), "{name}");
        }
    }
}

#[test]
fn no_route_codes() {
    let edge = backend("edge", BackendKind::Edge);
    let cloud = backend("cloud", BackendKind::Cloud);
    let mut small = backend("small", BackendKind::Edge);
    small.context_length = 100;
    let down = Observed {
        healthy: false,
        ..obs(&edge, None)
    };
    let unknown = AliasTarget::Models(vec!["nope".into()]);
    let t = target();
    let cases: Vec<(&str, Vec<Observed<'_>>, Class, &AliasTarget, NoRouteCode)> = vec![
        (
            "unknown model",
            vec![obs(&edge, None)],
            Class::Public,
            &unknown,
            NoRouteCode::ModelNotFound,
        ),
        (
            "confidential, edge down",
            vec![down, obs(&cloud, None)],
            Class::Confidential,
            &t,
            NoRouteCode::PrivacyRouteUnavailable,
        ),
        (
            "confidential, cloud only",
            vec![obs(&cloud, None)],
            Class::Confidential,
            &t,
            NoRouteCode::PrivacyRouteUnavailable,
        ),
        (
            "all down",
            vec![down],
            Class::Public,
            &t,
            NoRouteCode::NoBackendAvailable,
        ),
        (
            "context",
            vec![obs(&small, None)],
            Class::Public,
            &t,
            NoRouteCode::ContextLengthExceeded,
        ),
        // The cloud is out for privacy and the edge's context too small:
        // the request can never fit, a 400 the client should not retry.
        (
            "confidential, context",
            vec![obs(&small, None), obs(&cloud, None)],
            Class::Confidential,
            &t,
            NoRouteCode::ContextLengthExceeded,
        ),
    ];
    for (name, backends, class, target, code) in cases {
        let err = rank(&request(class), target, &Policy::default(), &backends).unwrap_err();
        assert_eq!(err.code, code, "{name}");
    }
}

#[test]
fn ties_break_by_name_and_decision_serialises() {
    let a = backend("a", BackendKind::Cloud);
    let b = backend("b", BackendKind::Cloud);
    let d = rank(
        &request(Class::Public),
        &target(),
        &Policy::default(),
        &[obs(&b, None), obs(&a, None)],
    )
    .unwrap();
    assert_eq!(d.chosen.backend, "a");
    assert_eq!(d.fallbacks[0].reason, RouteReason::Failover);
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["chosen"]["reason"], "lowest_score");
    assert_eq!(json["class"], "public");
    let back: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
}

#[test]
fn aliases_resolve_to_models_or_any() {
    let aliases = vec![
        Alias {
            name: "auto".into(),
            target: AliasTarget::Any,
        },
        Alias {
            name: "small".into(),
            target: AliasTarget::Models(vec!["x".into(), "m".into()]),
        },
    ];
    assert_eq!(resolve_alias("auto", &aliases), AliasTarget::Any);
    assert_eq!(resolve_alias("m", &aliases), target());
    let edge = backend("edge", BackendKind::Edge);
    let d = rank(
        &request(Class::Public),
        &resolve_alias("small", &aliases),
        &Policy::default(),
        &[obs(&edge, None)],
    )
    .unwrap();
    assert_eq!(
        (d.chosen.model.as_str(), d.chosen.upstream_model.as_str()),
        ("m", "edge-m")
    );
}

#[test]
fn predicted_latency_grows_with_queue() {
    let edge = backend("edge", BackendKind::Edge);
    let (idle, queued) = (load(0, 0), load(4, 4));
    let p = |l| {
        rank(
            &request(Class::Public),
            &target(),
            &Policy::default(),
            &[obs(&edge, Some(l))],
        )
        .unwrap()
    };
    let (a, b) = (p(&idle), p(&queued));
    assert!(a.chosen.prediction.queue_ms.abs() < f64::EPSILON);
    assert!(b.chosen.prediction.queue_ms > 0.0);
    assert!(b.chosen.prediction.latency_ms > a.chosen.prediction.latency_ms);
    // 100 prompt tokens at 900/s plus 64 output tokens at 60/s, plus RTT.
    let expected = 2.0 + 100.0 / 900.0 * 1000.0 + 64.0 / 60.0 * 1000.0;
    assert!((a.chosen.prediction.latency_ms - expected).abs() < 1e-6);
}

#[test]
fn predicted_energy_is_the_one_measured_at_the_load_the_request_would_run_at() {
    let edge = backend("edge", BackendKind::Edge);
    // Measured per load: 0.1 J per output token alone, 0.2 with two
    // running, nothing yet with three; 0.15 on average over all loads.
    let at = |active: u32, waiting: u32, queue: Option<QueueModel>| {
        let mut l = load(active, waiting);
        l.joules_per_output_token = Some(0.15);
        l.joules_at_running = vec![
            JoulesPerToken {
                prompt: Some(0.001),
                output: Some(0.1),
            },
            JoulesPerToken {
                prompt: None,
                output: Some(0.2),
            },
            JoulesPerToken::default(),
            JoulesPerToken::default(),
        ];
        let o = Observed {
            queue,
            ..obs(&edge, Some(&l))
        };
        let d = rank(&request(Class::Public), &target(), &Policy::default(), &[o]).unwrap();
        let p = d.chosen.prediction;
        // The ledger's decision shows the rates the prediction used.
        assert!(
            (p.energy_j - 100.0 * p.joules_per_prompt_token - 64.0 * p.joules_per_output_token)
                .abs()
                < 1e-9
        );
        assert!(p.running.is_some_and(|r| (1..=4).contains(&r)), "{p:?}");
        p.energy_j
    };
    // 100 prompt and 64 output tokens.
    let expect = |prompt: f64, output: f64| 100.0 * prompt + 64.0 * output;
    assert!((at(0, 0, None) - expect(0.001, 0.1)).abs() < 1e-9);
    assert!((at(1, 0, None) - expect(0.004, 0.2)).abs() < 1e-9);
    // With three running, or queued behind a full worker (4 slots): the
    // averages, since no request has finished at those loads yet.
    assert!((at(2, 0, None) - expect(0.004, 0.15)).abs() < 1e-9);
    assert!((at(4, 6, None) - expect(0.004, 0.15)).abs() < 1e-9);
    // The queue model's count of those ahead (extrapolated to now) wins
    // over the report's: one running per the report, none by now.
    let drained = QueueModel {
        in_system: 0,
        slots: 4,
        ..queue(0, 0)
    };
    assert!((at(1, 0, Some(drained)) - expect(0.001, 0.1)).abs() < 1e-9);
}

#[test]
fn energy_and_money_are_predicted_for_the_mean_answer_and_latency_for_the_bound() {
    let edge = backend("edge", BackendKind::Edge);
    let cloud = backend("cloud", BackendKind::Cloud);
    let l = load(0, 0);
    let observed = [obs(&edge, Some(&l)), obs(&cloud, None)];
    let ranked_with = |answer_tokens: Option<f64>, prompt_overhead: Option<f64>| {
        let req = RequestView {
            expected: Expected {
                answer_tokens,
                prompt_overhead,
            },
            ..request(Class::Public)
        };
        rank(&req, &target(), &Policy::default(), &observed).unwrap()
    };
    let ranked = |mean: Option<f64>| ranked_with(mean, None);
    let of = |d: &Decision, name: &str| {
        d.candidates()
            .find(|c| c.backend == name)
            .unwrap()
            .prediction
            .clone()
    };
    // 100 prompt tokens, max_tokens 64; no answer seen yet: the bound.
    let bound = ranked(None);
    assert_eq!((bound.output_tokens, bound.answer_tokens), (64, Some(64)));
    let (edge_bound, cloud_bound) = (of(&bound, "edge"), of(&bound, "cloud"));
    assert!((edge_bound.energy_j - (100.0 * 0.004 + 64.0 * 0.12)).abs() < 1e-9);
    // Answers of 16 tokens on average: energy and money for 16 tokens,
    // latency still for 64.
    let mean = ranked(Some(16.4));
    assert_eq!((mean.output_tokens, mean.answer_tokens), (64, Some(16)));
    let (edge_mean, cloud_mean) = (of(&mean, "edge"), of(&mean, "cloud"));
    assert!((edge_mean.energy_j - (100.0 * 0.004 + 16.0 * 0.12)).abs() < 1e-9);
    assert!((cloud_mean.energy_j - (100.0 * 0.01 + 16.0 * 0.3)).abs() < 1e-9);
    assert!((cloud_mean.cost_usd - (0.1 * 0.0005 + 0.016 * 0.0015)).abs() < 1e-12);
    assert!(cloud_mean.cost_usd < cloud_bound.cost_usd);
    assert!((edge_mean.latency_ms - edge_bound.latency_ms).abs() < 1e-9);
    assert!((cloud_mean.latency_ms - cloud_bound.latency_ms).abs() < 1e-9);
    let all_cloud = mean.all_cloud.as_ref().unwrap();
    assert!((all_cloud.prediction.energy_j - cloud_mean.energy_j).abs() < 1e-9);
    // The mean never goes past the request's bound, nor below one token.
    assert_eq!(ranked(Some(500.0)).answer_tokens, Some(64));
    assert_eq!(ranked(Some(0.2)).answer_tokens, Some(1));
    // Prompts that came to 20.4 tokens more than estimated: 120 prompt
    // tokens, for energy, money and the prefill's time alike.
    let longer = ranked_with(Some(16.0), Some(20.4));
    assert_eq!(longer.prompt_tokens, 120);
    let edge_longer = of(&longer, "edge");
    assert!((edge_longer.energy_j - (120.0 * 0.004 + 16.0 * 0.12)).abs() < 1e-9);
    let prefill_ms = 20.0 / 900.0 * 1000.0;
    assert!((edge_longer.latency_ms - edge_mean.latency_ms - prefill_ms).abs() < 1e-9);
    // An overhead below minus the estimate leaves one token, not a wrap.
    assert_eq!(ranked_with(None, Some(-150.0)).prompt_tokens, 1);
}

fn arb_class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Public),
        Just(Class::Internal),
        Just(Class::Confidential)
    ]
}

prop_compose! {
    fn arb_backend(i: usize)(
        cloud in any::<bool>(), on_prem_zone in any::<bool>(), enabled in any::<bool>(),
        rtt in 0.0f64..500.0, prefill in 0.0f64..10_000.0, decode in 0.0f64..500.0,
        price in 0.0f64..0.1, joules in 0.0f64..2.0, ctx in 0u32..20_000,
    ) -> Backend {
        let mut b = backend(&format!("b{i}"), if cloud { BackendKind::Cloud } else { BackendKind::Edge });
        b.zone = if on_prem_zone { Zone::OnPrem } else { Zone::Cloud };
        b.enabled = enabled;
        (b.rtt_ms, b.prefill_tps, b.decode_tps) = (rtt, prefill, decode);
        (b.price_in_per_1k, b.price_out_per_1k, b.joules_per_output_token) = (price, price * 3.0, joules);
        b.context_length = ctx;
        b
    }
}

prop_compose! {
    fn arb_state()(healthy in any::<bool>(), has_load in any::<bool>(), active in 0u32..8,
        waiting in 0u32..20, ready in any::<bool>(), in_flight in 0u32..10)
        -> (bool, Option<WorkerLoad>, u32) {
        let mut l = load(active, waiting);
        l.ready = ready;
        (healthy, has_load.then_some(l), in_flight)
    }
}

prop_compose! {
    fn arb_policy()(w in prop::array::uniform3(0.0f64..10.0), slo in 1.0f64..60_000.0,
        allow_cloud in any::<bool>(), expected in 1u32..4096) -> Policy {
        Policy { w_latency: w[0], w_energy: w[1], w_cost: w[2], latency_slo_ms: slo,
            allow_cloud, expected_output_tokens: expected, ..Policy::default() }
    }
}

proptest! {
    #[test]
    fn confidential_never_ranks_a_cloud_backend(
        backends in (0usize..6).prop_flat_map(|n| (0..n).map(arb_backend).collect::<Vec<_>>()),
        states in prop::collection::vec(arb_state(), 6),
        policy in arb_policy(),
        prompt in 0u32..10_000,
        max_out in prop::option::of(1u32..4096),
        explicit in prop::option::of(arb_class()),
        key_default in arb_class(),
        seed in any::<u64>(),
    ) {
        // The class comes from the same max rule the HTTP layer uses, so any
        // input combination that yields confidential is covered.
        let class = key_default.max(explicit.unwrap_or(Class::Public));
        let observed: Vec<Observed<'_>> = backends.iter().zip(&states)
            .map(|(b, (healthy, l, in_flight))| Observed { backend: b, healthy: *healthy, load: l.as_ref(), in_flight: *in_flight, queue: None, prefix_cached: false })
            .collect();
        let req = RequestView { model: "m".into(), class, prompt_tokens: prompt, max_output_tokens: max_out, needs: Capabilities::default(), choices: 1, prefix: None, seed: Some(seed), expected: Expected::default() };
        match rank(&req, &target(), &policy, &observed) {
            Ok(d) if class == Class::Confidential || !policy.allow_cloud => {
                prop_assert!(d.candidates().all(|c| c.zone == Zone::OnPrem));
            }
            // Refused for privacy, or because no backend it may use has
            // the context for it (a 400 the client should not retry).
            Err(e) if class == Class::Confidential && !backends.is_empty() => {
                prop_assert!(matches!(
                    e.code,
                    NoRouteCode::PrivacyRouteUnavailable | NoRouteCode::ContextLengthExceeded
                ), "{:?}", e.code);
            }
            Ok(_) | Err(_) => {}
        }
    }
}

#[test]
fn a_needed_capability_restricts_candidates_and_otherwise_is_a_400() {
    let edge = backend("edge", BackendKind::Edge);
    let cloud = backend("cloud", BackendKind::Cloud);
    let mut with_json = load(0, 0);
    with_json.capabilities.json_schema = true;
    let tools = Capabilities {
        tools: true,
        json_schema: false,
    };
    let json = Capabilities {
        tools: false,
        json_schema: true,
    };
    let mut cloud_declared = cloud.clone();
    cloud_declared.capabilities = Capabilities {
        tools: true,
        json_schema: true,
    };
    let plain = load(0, 0);
    let observed = [obs(&edge, Some(&plain)), obs(&cloud_declared, None)];
    // Tools: only the cloud declares them.
    let req = RequestView {
        needs: tools,
        ..request(Class::Public)
    };
    let d = rank(&req, &target(), &Policy::default(), &observed).unwrap();
    assert_eq!(d.chosen.backend, "cloud");
    assert!(d.fallbacks.is_empty());
    // A confidential request with tools: the cloud is out for privacy and
    // the edge for tools, so the answer is a 400, not a 503 or plain text.
    let req = RequestView {
        needs: tools,
        ..request(Class::Confidential)
    };
    let e = rank(&req, &target(), &Policy::default(), &observed).unwrap_err();
    assert_eq!(e.code, NoRouteCode::UnsupportedCapability);
    // JSON schema: the edge's live report says it can.
    let observed = [obs(&edge, Some(&with_json)), obs(&cloud, None)];
    let req = RequestView {
        needs: json,
        ..request(Class::Confidential)
    };
    let d = rank(&req, &target(), &Policy::default(), &observed).unwrap();
    assert_eq!(d.chosen.backend, "edge");
    // Several choices (`n`): an edge worker answers one, so the cloud
    // serves, and a confidential request is refused as unsupported.
    let observed = [obs(&edge, Some(&plain)), obs(&cloud, None)];
    let req = RequestView {
        choices: 2,
        ..request(Class::Public)
    };
    let d = rank(&req, &target(), &Policy::default(), &observed).unwrap();
    assert_eq!(d.chosen.backend, "cloud");
    assert!(d.fallbacks.is_empty());
    let req = RequestView {
        choices: 2,
        ..request(Class::Confidential)
    };
    let e = rank(&req, &target(), &Policy::default(), &observed).unwrap_err();
    assert_eq!(e.code, NoRouteCode::UnsupportedCapability);
}

fn queue(in_system: u32, sent_since: u32) -> QueueModel {
    QueueModel {
        in_system,
        slots: 2,
        age_ms: 0.0,
        sent_since,
        arrival_rate: None,
        local_rate: 0.0,
        service_ms: Some(1_000.0),
    }
}

fn with_queue<'a>(b: &'a Backend, l: &'a WorkerLoad, q: QueueModel) -> Observed<'a> {
    Observed {
        queue: Some(q),
        ..obs(b, Some(l))
    }
}

fn wait_of(q: QueueModel) -> f64 {
    let edge = backend("edge", BackendKind::Edge);
    let l = load(0, 0);
    let d = rank(
        &request(Class::Public),
        &target(),
        &Policy::default(),
        &[with_queue(&edge, &l, q)],
    )
    .unwrap();
    d.chosen.prediction.queue_ms
}

#[test]
fn predicted_wait_extrapolates_the_report_to_now() {
    // Two slots, one second per request: with both busy the first frees
    // up after a third of a second on average (the lesser of two uniform
    // remainders), then one every 500 ms.
    let first = 1_000.0 / 3.0;
    assert!(wait_of(queue(1, 0)).abs() < 1e-9, "a free slot: no wait");
    assert!((wait_of(queue(2, 0)) - first).abs() < 1e-6);
    // Requests this gateway sent since the report count as queued.
    assert!((wait_of(queue(2, 2)) - (first + 1_000.0)).abs() < 1e-6);
    // Other gateways' arrivals since the report: 4/s in all, 0 of them
    // ours, over half a second = 2 more ahead.
    let others = QueueModel {
        age_ms: 500.0,
        arrival_rate: Some(4.0),
        ..queue(0, 0)
    };
    assert!(
        (wait_of(others) - first).abs() < 1e-6,
        "{}",
        wait_of(others)
    );
    // Our own share of the arrival rate is not counted twice.
    let ours = QueueModel {
        local_rate: 4.0,
        ..others
    };
    assert!(wait_of(ours).abs() < 1e-9);
    // Busy slots finish requests meanwhile: 4 in the system, 2 slots, one
    // second later two have left.
    let drained = QueueModel {
        age_ms: 1_000.0,
        ..queue(4, 0)
    };
    assert!((wait_of(drained) - first).abs() < 1e-6);
    // Unmeasured service time: the request's own predicted service time.
    let unmeasured = QueueModel {
        service_ms: None,
        ..queue(2, 0)
    };
    let own = 100.0 / 900.0 * 1000.0 + 64.0 / 60.0 * 1000.0;
    assert!((wait_of(unmeasured) - own / 3.0).abs() < 1e-6);
    // An extrapolated count between the two moves the wait smoothly: one
    // in the system, one more from others (4/s over 250 ms), a quarter of
    // the running one's service done since: 1.75 ahead.
    let between = QueueModel {
        age_ms: 250.0,
        arrival_rate: Some(4.0),
        ..queue(1, 0)
    };
    let w = wait_of(between);
    assert!((w - 0.75 * first).abs() < 1e-6, "{w}");
}

#[test]
fn the_wait_for_a_slot_is_the_least_remainder_then_one_departure_per_queued() {
    use super::queue::wait_for_slot;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // One slot: half a service time left on average, then a whole one each.
    assert!(close(wait_for_slot(0.0, 1.0, 600.0), 0.0));
    assert!(close(wait_for_slot(1.0, 1.0, 600.0), 300.0));
    assert!(close(wait_for_slot(3.0, 1.0, 600.0), 1_500.0));
    // Four slots: a fifth, then a quarter for each queued.
    assert!(close(wait_for_slot(3.0, 4.0, 1_000.0), 0.0));
    assert!(close(wait_for_slot(4.0, 4.0, 1_000.0), 200.0));
    assert!(close(wait_for_slot(6.0, 4.0, 1_000.0), 700.0));
    // No slots reported counts as one.
    assert!(close(wait_for_slot(1.0, 0.0, 600.0), 300.0));
}

#[test]
fn requests_sent_since_the_report_move_overflow_to_the_cloud_before_the_slo_breaks() {
    // The report says idle, but this gateway has sent six requests since:
    // naive counting keeps the edge, the queue model sends to the cloud.
    let edge = backend("edge", BackendKind::Edge);
    let mut cloud = backend("cloud", BackendKind::Cloud);
    cloud.rtt_ms = 1_000.0;
    let idle = load(0, 0);
    let policy = Policy {
        latency_slo_ms: 3_000.0,
        ..Policy::default()
    };
    let naive = [obs(&edge, Some(&idle)), obs(&cloud, None)];
    let d = rank(&request(Class::Public), &target(), &policy, &naive).unwrap();
    assert_eq!(d.chosen.backend, "edge");
    let predicted = [with_queue(&edge, &idle, queue(0, 6)), obs(&cloud, None)];
    let d = rank(&request(Class::Public), &target(), &policy, &predicted).unwrap();
    assert_eq!(
        (d.chosen.backend.as_str(), d.chosen.reason),
        ("cloud", RouteReason::EdgeOverSlo)
    );
    assert!((d.fallbacks[0].prediction.ahead.unwrap() - 6.0).abs() < 1e-9);
    // A confidential request stays at the edge whatever the queue.
    let d = rank(
        &request(Class::Confidential),
        &target(),
        &policy,
        &predicted,
    )
    .unwrap();
    assert!(d.candidates().all(|c| c.zone == Zone::OnPrem));
}

#[test]
fn power_of_two_picks_the_shorter_wait_among_near_equal_edges() {
    // `a` scores slightly better (less energy) but has a request waiting;
    // `b` is idle. Near-equal, so the shorter predicted wait wins.
    let mut a = backend("a", BackendKind::Edge);
    a.joules_per_output_token = 0.10;
    let b = backend("b", BackendKind::Edge);
    // Energy as configured, not as reported.
    let mut la = load(0, 0);
    la.joules_per_output_token = None;
    let lb = la.clone();
    let policy = Policy {
        latency_slo_ms: 30_000.0,
        ..Policy::default()
    };
    let busy = QueueModel {
        service_ms: Some(100.0),
        ..queue(2, 0)
    };
    let observed = [with_queue(&a, &la, busy), with_queue(&b, &lb, queue(0, 0))];
    let plain = |seed| {
        let req = RequestView {
            seed: Some(seed),
            ..request(Class::Public)
        };
        rank(&req, &target(), &policy, &observed).unwrap()
    };
    for seed in [0, 1, u64::MAX, 0xdead_beef] {
        let d = plain(seed);
        assert_eq!(d.chosen.backend, "b", "seed {seed}");
        assert_eq!(d.fallbacks[0].backend, "a");
        let p2c = d.power_of_two.unwrap();
        assert_eq!(p2c.picked, "b");
        assert_eq!(p2c.compared, ["a".to_owned(), "b".to_owned()]);
    }
    // Naive placement (no seed): the better score, whatever the wait.
    let naive = RequestView {
        seed: None,
        ..request(Class::Public)
    };
    let d = rank(&naive, &target(), &policy, &observed).unwrap();
    assert_eq!(d.chosen.backend, "a");
    assert!(d.power_of_two.is_none());
    // Not near-equal: a slow worker never wins by a short queue.
    let mut slow = backend("b", BackendKind::Edge);
    slow.rtt_ms = 5_000.0;
    let observed = [
        with_queue(&a, &la, busy),
        with_queue(&slow, &lb, queue(0, 0)),
    ];
    let d = rank(&request(Class::Public), &target(), &policy, &observed).unwrap();
    assert_eq!(d.chosen.backend, "a");
    assert!(d.power_of_two.is_none());
}

#[test]
fn power_of_two_draws_every_pair_of_three_near_equal_edges() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| backend(n, BackendKind::Edge))
        .collect();
    let l = load(0, 0);
    // Equal scores; waits differ: c < b < a.
    let waits = [3, 2, 0];
    let observed: Vec<Observed<'_>> = bs
        .iter()
        .zip(waits)
        .map(|(b, w)| with_queue(b, &l, queue(w, 0)))
        .collect();
    let mut pairs = std::collections::BTreeSet::new();
    for seed in 0..64u64 {
        let req = RequestView {
            seed: Some(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ..request(Class::Public)
        };
        let policy = Policy {
            w_latency: 0.0,
            ..Policy::default()
        };
        let d = rank(&req, &target(), &policy, &observed).unwrap();
        let p = d.power_of_two.unwrap();
        assert_ne!(p.compared[0], p.compared[1]);
        // The picked one has the shorter wait of the two compared.
        let wait = |n: &str| waits[["a", "b", "c"].iter().position(|x| *x == n).unwrap()];
        let other = if p.picked == p.compared[0] {
            &p.compared[1]
        } else {
            &p.compared[0]
        };
        assert!(wait(&p.picked) <= wait(other));
        assert_eq!(d.chosen.backend, p.picked);
        pairs.insert(p.compared.clone());
    }
    assert_eq!(pairs.len(), 3, "{pairs:?}");
}

#[test]
fn prefix_affinity_is_weighed_against_load() {
    let a = backend("a", BackendKind::Edge);
    let b = backend("b", BackendKind::Edge);
    let l = load(0, 0);
    let req = RequestView {
        prompt_tokens: 900,
        prefix: Some(PrefixKey {
            hash: 1,
            tokens: 800,
        }),
        ..request(Class::Public)
    };
    let policy = Policy {
        latency_slo_ms: 30_000.0,
        ..Policy::default()
    };
    let cached = |q| Observed {
        prefix_cached: true,
        ..with_queue(&b, &l, q)
    };
    // Idle both: the worker holding the prefix prefills 800 of 900 tokens
    // eight times faster.
    let d = rank(
        &req,
        &target(),
        &policy,
        &[with_queue(&a, &l, queue(0, 0)), cached(queue(0, 0))],
    )
    .unwrap();
    assert_eq!(d.chosen.backend, "b");
    assert_eq!(d.chosen.prediction.cached_prompt_tokens, 800);
    let saved = 700.0 / 900.0 * 1000.0;
    let other = &d.fallbacks[0].prediction;
    assert!((other.latency_ms - d.chosen.prediction.latency_ms - saved).abs() < 1e-6);
    // Its queue costs more than the cache saves: the idle worker wins.
    let d = rank(
        &req,
        &target(),
        &policy,
        &[with_queue(&a, &l, queue(0, 0)), cached(queue(4, 0))],
    )
    .unwrap();
    assert_eq!(d.chosen.backend, "a");
}

#[test]
fn every_decision_carries_the_all_cloud_counterfactual() {
    let edge = backend("edge", BackendKind::Edge);
    let cloud = backend("cloud", BackendKind::Cloud);
    let mut dear = backend("dear", BackendKind::Cloud);
    dear.price_out_per_1k = 1.0;
    let l = load(0, 0);
    let observed = [obs(&edge, Some(&l)), obs(&cloud, None), obs(&dear, None)];
    // Even a confidential request, which may never go there, gets the
    // cloud's figures: that is what keeping it at home saved.
    let d = rank(
        &request(Class::Confidential),
        &target(),
        &Policy::default(),
        &observed,
    )
    .unwrap();
    assert_eq!(d.chosen.backend, "edge");
    let all = d.all_cloud.unwrap();
    assert_eq!(all.backend, "cloud");
    let (latency, joules, usd) = all.rates.price(100, 64);
    assert!((latency - (80.0 + 100.0 / 5000.0 * 1000.0 + 64.0 / 100.0 * 1000.0)).abs() < 1e-9);
    assert!((joules - (100.0 * 0.01 + 64.0 * 0.3)).abs() < 1e-9);
    assert!((usd - (0.1 * 0.0005 + 0.064 * 0.0015)).abs() < 1e-12);
    assert!((all.prediction.latency_ms - latency).abs() < 1e-9);
    // No cloud backend serves the model: no counterfactual.
    let d = rank(
        &request(Class::Public),
        &target(),
        &Policy::default(),
        &observed[..1],
    )
    .unwrap();
    assert!(d.all_cloud.is_none());
}

prop_compose! {
    fn arb_queue()(in_system in 0u32..40, slots in 0u32..8, age_ms in 0.0f64..10_000.0,
        sent in 0u32..20, rate in prop::option::of(0.0f64..50.0), local in 0.0f64..50.0,
        service in prop::option::of(0.0f64..20_000.0)) -> QueueModel {
        QueueModel { in_system, slots, age_ms, sent_since: sent, arrival_rate: rate,
            local_rate: local, service_ms: service }
    }
}

proptest! {
    /// Placement (queue model, power of two, prefix affinity) never brings
    /// a cloud backend into a confidential request's candidates.
    #[test]
    fn placement_never_ranks_a_cloud_backend_for_confidential(
        backends in (1usize..6).prop_flat_map(|n| (0..n).map(arb_backend).collect::<Vec<_>>()),
        queues in prop::collection::vec(prop::option::of(arb_queue()), 6),
        cached in prop::collection::vec(any::<bool>(), 6),
        policy in arb_policy(),
        prompt in 0u32..4_000,
        prefix_tokens in 0u32..4_000,
        seed in any::<u64>(),
    ) {
        let l = load(1, 3);
        let observed: Vec<Observed<'_>> = backends.iter().enumerate()
            .map(|(i, b)| Observed { queue: queues[i], prefix_cached: cached[i], ..obs(b, Some(&l)) })
            .collect();
        let req = RequestView {
            prompt_tokens: prompt,
            prefix: Some(PrefixKey { hash: 9, tokens: prefix_tokens }),
            seed: Some(seed),
            ..request(Class::Confidential)
        };
        if let Ok(d) = rank(&req, &target(), &policy, &observed) {
            prop_assert!(d.candidates().all(|c| c.zone == Zone::OnPrem));
            prop_assert!(d.chosen.prediction.queue_ms.is_finite());
            prop_assert!(d.chosen.prediction.queue_ms >= 0.0);
        }
    }
}

#[test]
fn failures_eject_at_most_the_capped_share_of_a_pool() {
    let now = std::time::Instant::now();
    let ms = |n: u64| Some(now + std::time::Duration::from_millis(n));
    let edges: Vec<Backend> = (0..4)
        .map(|i| backend(&format!("e{i}"), BackendKind::Edge))
        .collect();
    let mut other = backend("other-model", BackendKind::Edge);
    other.models[0].public = "n".into();
    let cloud = backend("c", BackendKind::Cloud);
    let all: Vec<&Backend> = edges.iter().chain([&other, &cloud]).collect();
    let observe = |unhealthy: &[usize]| -> Vec<Observed<'_>> {
        all.iter()
            .enumerate()
            .map(|(i, b)| Observed {
                healthy: !unhealthy.contains(&i),
                ..obs(b, None)
            })
            .collect()
    };
    // e0..e3 rest until 400, 100, 300, 200 ms from now; the other model's
    // worker and the cloud are resting too.
    let rests = [ms(400), ms(100), ms(300), ms(200), ms(50), ms(50)];
    let healthy = |o: &[Observed<'_>]| -> Vec<bool> { o.iter().map(|o| o.healthy).collect() };

    // Half of the four-worker pool may be out: two ejected stay ejected.
    let mut o = observe(&[0, 2, 4, 5]);
    assert!(cap_ejections(&mut o, &rests, &target(), 50).is_empty());
    assert_eq!(healthy(&o), [false, true, false, true, false, false]);

    // All four ejected: the two whose rest ends soonest are readmitted.
    // The other model's worker is not in the pool; the cloud (a pool of
    // one, whose one backend may always be ejected) stays out.
    let mut o = observe(&[0, 1, 2, 3, 4, 5]);
    let mut back = cap_ejections(&mut o, &rests, &target(), 50);
    back.sort_unstable();
    assert_eq!(back, [1, 3]);
    assert_eq!(healthy(&o), [false, true, false, true, false, false]);

    // 100% is no cap; 0% still lets one backend out.
    let mut o = observe(&[0, 1, 2, 3]);
    assert!(cap_ejections(&mut o, &rests, &target(), 100).is_empty());
    let mut o = observe(&[0, 1, 2, 3]);
    assert_eq!(cap_ejections(&mut o, &rests, &target(), 0).len(), 3);
    assert_eq!(healthy(&o), [false, true, true, true, true, true]);

    // A disabled worker is not in the pool and is never readmitted.
    let mut disabled = edges.clone();
    disabled[1].enabled = false;
    let mut o: Vec<Observed<'_>> = disabled
        .iter()
        .map(|b| Observed {
            healthy: b.name != "e0" && b.name != "e1",
            ..obs(b, None)
        })
        .collect();
    // e1 is disabled: the pool is three, one of them (e0) ejected.
    assert!(cap_ejections(&mut o, &rests, &target(), 50).is_empty());
}

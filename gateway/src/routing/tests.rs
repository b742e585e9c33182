#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::privacy::Class;

fn backend(name: &str, kind: BackendKind) -> Backend {
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
    let json = d.to_json();
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
    ) {
        // The class comes from the same max rule the HTTP layer uses, so any
        // input combination that yields confidential is covered.
        let class = key_default.max(explicit.unwrap_or(Class::Public));
        let observed: Vec<Observed<'_>> = backends.iter().zip(&states)
            .map(|(b, (healthy, l, in_flight))| Observed { backend: b, healthy: *healthy, load: l.as_ref(), in_flight: *in_flight })
            .collect();
        let req = RequestView { model: "m".into(), class, prompt_tokens: prompt, max_output_tokens: max_out, needs: Capabilities::default() };
        match rank(&req, &target(), &policy, &observed) {
            Ok(d) if class == Class::Confidential || !policy.allow_cloud => {
                prop_assert!(d.candidates().all(|c| c.zone == Zone::OnPrem));
            }
            Err(e) if class == Class::Confidential && !backends.is_empty() => {
                prop_assert_eq!(e.code, NoRouteCode::PrivacyRouteUnavailable);
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
}

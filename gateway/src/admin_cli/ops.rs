//! The administration operations, shared by the command line (`exec`) and
//! the admin API (`http::admin`): one place decides what a valid backend,
//! policy, rule or key change is, whoever asks for it.

use crate::admin_cli::{
    BackendAddArgs, KeyCreateArgs, KeyUpdateArgs, Limit, PolicySetArgs, RuleAddArgs,
};
use crate::privacy::{
    classify, request_texts, Class, Classification, PrivacyRule, RuleSet, RuleSpec,
};
use crate::routing::{
    Alias, AliasTarget, Backend, BackendKind, Capabilities, ModelMapping, Policy, Zone,
};
use crate::store::{
    now_ms, ApiKey, CreatedKey, KeyLimitsUpdate, NewKeySpec, Store, StoreError, Tenant,
};

/// Errors of an admin operation; all are safe to show to the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant `{0}` not found")]
    UnknownTenant(String),
    #[error("{0}")]
    Usage(&'static str),
    #[error("{0}; pass --force-zone if this is really intended")]
    Zone(crate::routing::ZoneMismatch),
    /// The rule does not compile or names no detector (the message says
    /// which, quoting only the operator's own pattern).
    #[error("invalid privacy rule: {0}")]
    Rule(String),
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

const MS_PER_DAY: i64 = 86_400_000;

pub async fn tenant_of(store: &Store, name_or_id: &str) -> Result<Tenant, AdminError> {
    store
        .find_tenant(name_or_id)
        .await?
        .ok_or_else(|| AdminError::UnknownTenant(name_or_id.to_owned()))
}

/// Creates a key; the caller shows its plaintext once.
pub async fn create_key(store: &Store, args: KeyCreateArgs) -> Result<CreatedKey, AdminError> {
    let tenant = tenant_of(store, &args.tenant).await?;
    Ok(store
        .create_key(&NewKeySpec {
            tenant_id: tenant.id,
            default_class: args.class.into(),
            scopes: args.scopes,
            requests_per_min: args.rpm,
            tokens_per_min: args.tpm,
            budget_usd: args.budget,
            expires_at: args
                .expires_days
                .map(|d| now_ms() + i64::from(d) * MS_PER_DAY),
        })
        .await?)
}

/// Changes a key's limits and budget.
pub async fn update_key(store: &Store, args: &KeyUpdateArgs) -> Result<ApiKey, AdminError> {
    let update = KeyLimitsUpdate {
        requests_per_min: args.rpm.map(|l| l.0),
        tokens_per_min: args.tpm.map(|l| l.0),
        budget_usd: args.budget.map(|l| l.0),
    };
    if update == KeyLimitsUpdate::default() {
        return Err(AdminError::Usage("give at least one of rpm, tpm or budget"));
    }
    Ok(store.update_key_limits(&args.id, update).await?)
}

/// Keys of one tenant (name or id), or of all.
pub async fn list_keys(store: &Store, tenant: Option<&str>) -> Result<Vec<ApiKey>, AdminError> {
    let tenant_id = match tenant {
        Some(t) => Some(tenant_of(store, t).await?.id),
        None => None,
    };
    Ok(store.list_keys(tenant_id.as_deref()).await?)
}

/// Checks and stores a backend. The checks that keep confidential
/// requests on the premises and credentials out of the store live here
/// and in `Store::add_backend`; `force_zone` overrides only the zone check.
pub async fn add_backend(store: &Store, args: BackendAddArgs) -> Result<Backend, AdminError> {
    let force = args.force_zone;
    let spec = backend_spec(args);
    // Self-registered workers are listed as `worker:<host:port>`; a stored
    // backend of that name would be confused with one.
    if spec.name.starts_with("worker:") {
        return Err(AdminError::Usage(
            "backend names starting with `worker:` are kept for self-registered workers",
        ));
    }
    if let Err(e) = spec.check_zone() {
        if !force {
            return Err(AdminError::Zone(e));
        }
        tracing::warn!(backend = %spec.name, problem = %e, "zone check overridden");
    }
    Ok(store.add_backend(&spec).await?)
}

fn backend_spec(a: BackendAddArgs) -> Backend {
    let kind: BackendKind = a.kind.into();
    let default_zone = match kind {
        BackendKind::Edge => Zone::OnPrem,
        BackendKind::Cloud => Zone::Cloud,
    };
    let cloud = kind == BackendKind::Cloud;
    Backend {
        id: String::new(),
        name: a.name,
        kind,
        base_url: a.url,
        zone: a.zone.map_or(default_zone, Zone::from),
        api_key_env: a.api_key_env,
        models: a
            .models
            .into_iter()
            .map(|(public, upstream)| ModelMapping { public, upstream })
            .collect(),
        price_in_per_1k: a.price_in,
        price_out_per_1k: a.price_out,
        joules_per_prompt_token: a.j_prompt,
        joules_per_output_token: a.j_output,
        rtt_ms: a.rtt_ms,
        prefill_tps: a.prefill_tps,
        decode_tps: a.decode_tps,
        max_concurrency: a.max_concurrency,
        context_length: a.context_length,
        enabled: true,
        capabilities: Capabilities {
            tools: a.tools.unwrap_or(cloud),
            json_schema: a.json_schema.unwrap_or(cloud),
        },
    }
}

/// Points alias `name` at `models`, or at any model when the list is just
/// `any` (as `alias set NAME any` does).
pub async fn set_alias(
    store: &Store,
    name: String,
    models: Vec<String>,
) -> Result<Alias, AdminError> {
    if models.is_empty() {
        return Err(AdminError::Usage("an alias needs at least one model"));
    }
    let target = if models.len() == 1 && models[0] == "any" {
        AliasTarget::Any
    } else {
        AliasTarget::Models(models)
    };
    // A served model's name as an alias would hide the model behind it.
    let backends = store.list_backends().await?;
    if backends
        .iter()
        .any(|b| b.models.iter().any(|m| m.public == name))
    {
        return Err(AdminError::Usage(
            "a backend serves a model of that name; an alias of the same name would hide it",
        ));
    }
    let alias = Alias { name, target };
    store.set_alias(&alias).await?;
    Ok(alias)
}

/// A tenant's effective policy (the default when it has none).
pub async fn get_policy(store: &Store, tenant: &str) -> Result<(Tenant, Policy), AdminError> {
    let t = tenant_of(store, tenant).await?;
    let policy = store.get_policy(&t.id).await?.unwrap_or_default();
    Ok((t, policy))
}

/// Changes the fields of a tenant's policy that `a` gives; the others keep
/// their value. The result is validated by the store before it is kept.
pub async fn set_policy(store: &Store, a: &PolicySetArgs) -> Result<(Tenant, Policy), AdminError> {
    let (t, mut p) = get_policy(store, &a.tenant).await?;
    let numbers = [
        (a.w_latency, &mut p.w_latency),
        (a.w_energy, &mut p.w_energy),
        (a.w_cost, &mut p.w_cost),
        (a.slo_ms, &mut p.latency_slo_ms),
        (a.energy_ref_j, &mut p.energy_ref_j),
        (a.cost_ref_usd, &mut p.cost_ref_usd),
    ];
    for (given, field) in numbers {
        if let Some(v) = given {
            *field = v;
        }
    }
    if let Some(c) = a.default_class {
        p.default_class = c.into();
    }
    if let Some(allow) = a.allow_cloud {
        p.allow_cloud = allow;
    }
    if let Some(allow) = a.allow_store {
        p.allow_store = allow;
    }
    if let Some(n) = a.expected_output_tokens {
        p.expected_output_tokens = n;
    }
    if let Some(Limit(m)) = a.hedge_margin_ms {
        p.hedge_margin_ms = m;
    }
    if let Some(Limit(t)) = a.cascade_min_logprob {
        p.cascade_min_logprob = t;
    }
    store.set_policy(&t.id, &p).await?;
    Ok((t, p))
}

/// Checks and stores a privacy rule.
/// What the builtin detectors and the rules in force (global, and the
/// tenant's) find in `input`: a chat request's JSON body, or plain text
/// taken as one user message. Only the detectors, so the floor is public
/// and no tag counts.
pub async fn check_privacy(
    store: &Store,
    tenant: Option<&str>,
    input: &str,
) -> Result<Classification, AdminError> {
    let tenant_id = match tenant {
        Some(t) => Some(tenant_of(store, t).await?.id),
        None => None,
    };
    let specs: Vec<RuleSpec> = store
        .privacy_rules_for(tenant_id.as_deref())
        .await?
        .into_iter()
        .map(|r| r.spec)
        .collect();
    let rules = RuleSet::compile(&specs).map_err(|e| AdminError::Rule(e.to_string()))?;
    let body = if let Ok(serde_json::Value::Object(body)) = serde_json::from_str(input) {
        body
    } else {
        let mut body = serde_json::Map::new();
        body.insert(
            "messages".to_owned(),
            serde_json::json!([{"role": "user", "content": input}]),
        );
        body
    };
    Ok(classify(request_texts(&body), Class::Public, None, &rules))
}

pub async fn add_rule(store: &Store, a: RuleAddArgs) -> Result<PrivacyRule, AdminError> {
    let tenant_id = match &a.tenant {
        Some(t) => Some(tenant_of(store, t).await?.id),
        None => None,
    };
    let spec = match (a.builtin, a.pattern) {
        (true, Some(_)) => return Err(AdminError::Usage("give --pattern or --builtin, not both")),
        (true, None) => RuleSpec::Builtin {
            detector: a.name,
            enabled: !a.disable,
            class: a.class.map(Into::into),
        },
        (false, Some(pattern)) => RuleSpec::Regex {
            name: a.name,
            pattern,
            class: a
                .class
                .ok_or(AdminError::Usage("a regex rule needs --class"))?
                .into(),
        },
        (false, None) => return Err(AdminError::Usage("give --pattern or --builtin")),
    };
    if a.disable && !matches!(spec, RuleSpec::Builtin { .. }) {
        return Err(AdminError::Usage(
            "--disable applies to builtin detectors only",
        ));
    }
    spec.validate()
        .map_err(|e| AdminError::Rule(e.to_string()))?;
    Ok(store.add_privacy_rule(tenant_id.as_deref(), &spec).await?)
}

//! Executes [`AdminCommand`]s against the store.

use std::io::Write;

use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;

use super::{
    AdminCommand, AliasCommand, BackendAddArgs, BackendCommand, KeyCommand, KeyCreateArgs,
    PolicyCommand, PolicySetArgs, PrivacyCommand, RuleAddArgs, RuleCommand, TenantCommand,
};
use crate::privacy::RuleSpec;
use crate::routing::{Alias, AliasTarget, Backend, BackendKind, Capabilities, ModelMapping, Zone};
use crate::store::{now_ms, NewKeySpec, Store, StoreError, Tenant};

/// Errors of an admin command; all are safe to print.
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
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

const MS_PER_DAY: i64 = 86_400_000;

/// Runs one admin command, writing one JSON object per line to `out`.
pub async fn run(
    store: &Store,
    command: AdminCommand,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match command {
        AdminCommand::Migrate => {
            store.migrate().await?;
            line(out, &json!({"migrated": true}))
        }
        AdminCommand::Tenant(TenantCommand::Create { name }) => {
            line(out, &store.create_tenant(&name).await?)
        }
        AdminCommand::Tenant(TenantCommand::List) => lines(out, &store.list_tenants().await?),
        AdminCommand::Key(cmd) => key(store, cmd, out).await,
        AdminCommand::Backend(cmd) => backend(store, cmd, out).await,
        AdminCommand::Alias(cmd) => alias(store, cmd, out).await,
        AdminCommand::Policy(PolicyCommand::Set(args)) => policy_set(store, &args, out).await,
        AdminCommand::Policy(PolicyCommand::Get { tenant }) => {
            let t = tenant_of(store, &tenant).await?;
            let policy = store.get_policy(&t.id).await?.unwrap_or_default();
            line(out, &json!({"tenant": t.name, "policy": policy}))
        }
        AdminCommand::Privacy(PrivacyCommand::Rule(cmd)) => rule(store, cmd, out).await,
    }
}

fn line(out: &mut impl Write, value: &impl Serialize) -> Result<(), AdminError> {
    let text = serde_json::to_string(value).map_err(|_| AdminError::Usage("unprintable value"))?;
    writeln!(out, "{text}")?;
    Ok(())
}

fn lines<T: Serialize>(out: &mut impl Write, values: &[T]) -> Result<(), AdminError> {
    values.iter().try_for_each(|v| line(out, v))
}

async fn tenant_of(store: &Store, name_or_id: &str) -> Result<Tenant, AdminError> {
    store
        .find_tenant(name_or_id)
        .await?
        .ok_or_else(|| AdminError::UnknownTenant(name_or_id.to_owned()))
}

async fn key(store: &Store, cmd: KeyCommand, out: &mut impl Write) -> Result<(), AdminError> {
    match cmd {
        KeyCommand::Create(args) => key_create(store, args, out).await,
        KeyCommand::Revoke { id } => {
            store.revoke_key(&id).await?;
            line(out, &json!({"revoked": id}))
        }
        KeyCommand::List { tenant } => {
            let tenant_id = match tenant {
                Some(t) => Some(tenant_of(store, &t).await?.id),
                None => None,
            };
            lines(out, &store.list_keys(tenant_id.as_deref()).await?)
        }
    }
}

async fn key_create(
    store: &Store,
    args: KeyCreateArgs,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let tenant = tenant_of(store, &args.tenant).await?;
    let created = store
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
        .await?;
    // The only place a plaintext key is ever printed.
    line(
        out,
        &json!({"key": created.key, "api_key": created.plaintext.expose_secret(), "note": "shown once; store it now"}),
    )
}

async fn backend(
    store: &Store,
    cmd: BackendCommand,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match cmd {
        BackendCommand::Add(args) => {
            let force = args.force_zone;
            let spec = backend_spec(*args);
            // Self-registered workers are listed as `worker:<host:port>`;
            // a stored backend of that name would be confused with one.
            if spec.name.starts_with("worker:") {
                return Err(AdminError::Usage(
                    "backend names starting with `worker:` are kept for self-registered workers",
                ));
            }
            if let Some(var) = &spec.api_key_env {
                if var.starts_with("GATEWAY_") {
                    return Err(AdminError::Usage(
                        "--api-key-env cannot name one of the gateway's own GATEWAY_* variables",
                    ));
                }
            }
            if let Err(e) = spec.check_zone() {
                if !force {
                    return Err(AdminError::Zone(e));
                }
                tracing::warn!(backend = %spec.name, problem = %e, "zone check overridden");
            }
            line(out, &store.add_backend(&spec).await?)
        }
        BackendCommand::Remove { name } => {
            store.remove_backend(&name).await?;
            line(out, &json!({"removed": name}))
        }
        BackendCommand::List => lines(out, &store.list_backends().await?),
        BackendCommand::Enable { name } => {
            store.set_backend_enabled(&name, true).await?;
            line(out, &json!({"enabled": name}))
        }
        BackendCommand::Disable { name } => {
            store.set_backend_enabled(&name, false).await?;
            line(out, &json!({"disabled": name}))
        }
    }
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

async fn alias(store: &Store, cmd: AliasCommand, out: &mut impl Write) -> Result<(), AdminError> {
    match cmd {
        AliasCommand::Set { name, models } => {
            let target = if models.len() == 1 && models[0] == "any" {
                AliasTarget::Any
            } else {
                AliasTarget::Models(models)
            };
            let alias = Alias { name, target };
            store.set_alias(&alias).await?;
            line(out, &alias)
        }
        AliasCommand::Remove { name } => {
            store.remove_alias(&name).await?;
            line(out, &json!({"removed": name}))
        }
        AliasCommand::List => lines(out, &store.list_aliases().await?),
    }
}

async fn policy_set(
    store: &Store,
    a: &PolicySetArgs,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let t = tenant_of(store, &a.tenant).await?;
    let mut p = store.get_policy(&t.id).await?.unwrap_or_default();
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
    store.set_policy(&t.id, &p).await?;
    line(out, &json!({"tenant": t.name, "policy": p}))
}

async fn rule(store: &Store, cmd: RuleCommand, out: &mut impl Write) -> Result<(), AdminError> {
    match cmd {
        RuleCommand::Add(args) => rule_add(store, args, out).await,
        RuleCommand::Remove { id } => {
            store.remove_privacy_rule(&id).await?;
            line(out, &json!({"removed": id}))
        }
        RuleCommand::List => lines(out, &store.list_privacy_rules().await?),
    }
}

async fn rule_add(store: &Store, a: RuleAddArgs, out: &mut impl Write) -> Result<(), AdminError> {
    let tenant_id = match &a.tenant {
        Some(t) => Some(tenant_of(store, t).await?.id),
        None => None,
    };
    let spec = match (a.builtin, a.pattern) {
        (true, _) => RuleSpec::Builtin {
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
    if let Err(e) = spec.validate() {
        writeln!(out, "{}", json!({"error": e.to_string()}))?;
        return Err(AdminError::Usage("invalid privacy rule"));
    }
    line(
        out,
        &store.add_privacy_rule(tenant_id.as_deref(), &spec).await?,
    )
}

//! Executes [`AdminCommand`]s against the store, printing JSON lines.

use std::io::Write;

use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;

use super::ops::{self, AdminError};
use super::{
    AdminCommand, AdminTokenCommand, AliasCommand, BackendCommand, KeyCommand, PolicyCommand,
    PrivacyCommand, RuleCommand, TenantCommand,
};
use crate::store::Store;

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
        AdminCommand::AdminToken(cmd) => admin_token(store, cmd, out).await,
        AdminCommand::Tenant(TenantCommand::Create { name }) => {
            line(out, &store.create_tenant(&name).await?)
        }
        AdminCommand::Tenant(TenantCommand::List) => lines(out, &store.list_tenants().await?),
        AdminCommand::Key(cmd) => key(store, cmd, out).await,
        AdminCommand::Backend(cmd) => backend(store, cmd, out).await,
        AdminCommand::Alias(cmd) => alias(store, cmd, out).await,
        AdminCommand::Policy(PolicyCommand::Set(args)) => {
            let (t, policy) = ops::set_policy(store, &args).await?;
            line(out, &json!({"tenant": t.name, "policy": policy}))
        }
        AdminCommand::Policy(PolicyCommand::Get { tenant }) => {
            let (t, policy) = ops::get_policy(store, &tenant).await?;
            line(out, &json!({"tenant": t.name, "policy": policy}))
        }
        AdminCommand::Privacy(PrivacyCommand::Rule(cmd)) => rule(store, cmd, out).await,
        AdminCommand::Privacy(PrivacyCommand::Check { tenant, text }) => {
            let input = match text {
                Some(text) => text,
                None => std::io::read_to_string(std::io::stdin())?,
            };
            let checked = ops::check_privacy(store, tenant.as_deref(), &input).await?;
            line(
                out,
                &json!({"class": checked.class, "detectors": checked.fired}),
            )
        }
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

async fn admin_token(
    store: &Store,
    cmd: AdminTokenCommand,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match cmd {
        AdminTokenCommand::Create { name } => {
            let created = store.create_admin_token(&name).await?;
            // The only place an admin token's plaintext is ever printed.
            line(
                out,
                &json!({"admin_token": created.token, "token": created.plaintext.expose_secret(), "note": "shown once; store it now"}),
            )
        }
        AdminTokenCommand::List => lines(out, &store.list_admin_tokens().await?),
        AdminTokenCommand::Revoke { id } => {
            store.revoke_admin_token(&id).await?;
            line(out, &json!({"revoked": id}))
        }
    }
}

async fn key(store: &Store, cmd: KeyCommand, out: &mut impl Write) -> Result<(), AdminError> {
    match cmd {
        KeyCommand::Create(args) => {
            let created = ops::create_key(store, args).await?;
            // The only place a plaintext key is ever printed.
            line(
                out,
                &json!({"key": created.key, "api_key": created.plaintext.expose_secret(), "note": "shown once; store it now"}),
            )
        }
        KeyCommand::Revoke { id } => {
            store.revoke_key(&id).await?;
            line(out, &json!({"revoked": id}))
        }
        KeyCommand::Update(args) => line(out, &ops::update_key(store, &args).await?),
        KeyCommand::List { tenant } => lines(out, &ops::list_keys(store, tenant.as_deref()).await?),
    }
}

async fn backend(
    store: &Store,
    cmd: BackendCommand,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match cmd {
        BackendCommand::Add(args) => line(out, &ops::add_backend(store, *args).await?),
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

async fn alias(store: &Store, cmd: AliasCommand, out: &mut impl Write) -> Result<(), AdminError> {
    match cmd {
        AliasCommand::Set { name, models } => {
            line(out, &ops::set_alias(store, name, models).await?)
        }
        AliasCommand::Remove { name } => {
            store.remove_alias(&name).await?;
            line(out, &json!({"removed": name}))
        }
        AliasCommand::List => lines(out, &store.list_aliases().await?),
    }
}

async fn rule(store: &Store, cmd: RuleCommand, out: &mut impl Write) -> Result<(), AdminError> {
    match cmd {
        RuleCommand::Add(args) => line(out, &ops::add_rule(store, args).await?),
        RuleCommand::Remove { id } => {
            store.remove_privacy_rule(&id).await?;
            line(out, &json!({"removed": id}))
        }
        RuleCommand::List => lines(out, &store.list_privacy_rules().await?),
    }
}

//! Model aliases, routing policies and privacy rules: the operator's
//! settings, read by the request path and written by the admin CLI.

use sqlx::any::AnyRow;

use super::rows::{
    execute_one, flag, get, get_class, get_flag, get_json, get_u32, to_json, BindExt,
};
use super::{new_id, now_ms, Store, StoreError};
use crate::privacy::{Class, PrivacyRule, RuleSpec};
use crate::routing::{Alias, AliasTarget, Policy};

fn rule_from_row(row: &AnyRow) -> Result<PrivacyRule, StoreError> {
    let class: Option<String> = get(row, "class")?;
    let class = class
        .map(|c| c.parse::<Class>().map_err(|_| StoreError::Corrupt("class")))
        .transpose()?;
    let spec = match get::<String>(row, "kind")?.as_str() {
        "builtin" => RuleSpec::Builtin {
            detector: get(row, "name")?,
            enabled: get_flag(row, "enabled")?,
            class,
        },
        "regex" => RuleSpec::Regex {
            name: get(row, "name")?,
            pattern: get::<Option<String>>(row, "pattern")?
                .ok_or(StoreError::Corrupt("pattern"))?,
            class: class.ok_or(StoreError::Corrupt("class"))?,
        },
        _ => return Err(StoreError::Corrupt("kind")),
    };
    Ok(PrivacyRule {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        spec,
    })
}

impl Store {
    /// Creates or replaces an alias.
    pub async fn set_alias(&self, alias: &Alias) -> Result<(), StoreError> {
        if alias.name.trim().is_empty() {
            return Err(StoreError::Invalid("alias name is empty"));
        }
        if !super::backends::is_plain_name(&alias.name) {
            return Err(StoreError::Invalid(
                "alias names are at most 128 characters, without control or invisible characters",
            ));
        }
        if let AliasTarget::Models(models) = &alias.target {
            if models.contains(&alias.name) {
                return Err(StoreError::Invalid("an alias cannot point at itself"));
            }
        }
        sqlx::query(
            "INSERT INTO model_aliases (name, target, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET target = excluded.target, updated_at = excluded.updated_at",
        )
        .bind(&alias.name)
        .bind(to_json(&alias.target))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "alias"))?;
        Ok(())
    }

    pub async fn remove_alias(&self, name: &str) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM model_aliases WHERE name = $1").bind(name);
        execute_one(&self.pool, query, "alias").await
    }

    pub async fn list_aliases(&self) -> Result<Vec<Alias>, StoreError> {
        let rows = sqlx::query("SELECT name, target FROM model_aliases ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "alias"))?;
        rows.iter()
            .map(|row| {
                Ok(Alias {
                    name: get(row, "name")?,
                    target: get_json(row, "target")?,
                })
            })
            .collect()
    }

    /// Creates or replaces a tenant's policy after validating it.
    pub async fn set_policy(&self, tenant_id: &str, policy: &Policy) -> Result<(), StoreError> {
        policy.validate().map_err(|e| StoreError::Invalid(e.0))?;
        sqlx::query(
            "INSERT INTO routing_policies (tenant_id, w_latency, w_energy, w_cost, latency_slo_ms, \
             energy_ref_j, cost_ref_usd, default_class, allow_cloud, expected_output_tokens, updated_at, allow_store, \
             hedge_margin_ms, cascade_min_logprob) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (tenant_id) DO UPDATE SET w_latency = excluded.w_latency, \
             w_energy = excluded.w_energy, w_cost = excluded.w_cost, \
             latency_slo_ms = excluded.latency_slo_ms, energy_ref_j = excluded.energy_ref_j, \
             cost_ref_usd = excluded.cost_ref_usd, default_class = excluded.default_class, \
             allow_cloud = excluded.allow_cloud, \
             expected_output_tokens = excluded.expected_output_tokens, updated_at = excluded.updated_at, \
             allow_store = excluded.allow_store, hedge_margin_ms = excluded.hedge_margin_ms, \
             cascade_min_logprob = excluded.cascade_min_logprob",
        )
        .bind(tenant_id)
        .bind(policy.w_latency)
        .bind(policy.w_energy)
        .bind(policy.w_cost)
        .bind(policy.latency_slo_ms)
        .bind(policy.energy_ref_j)
        .bind(policy.cost_ref_usd)
        .bind(policy.default_class.as_str())
        .bind(flag(policy.allow_cloud))
        .bind(i64::from(policy.expected_output_tokens))
        .bind(now_ms())
        .bind(flag(policy.allow_store))
        .bind_opt_f64(policy.hedge_margin_ms)
        .bind_opt_f64(policy.cascade_min_logprob)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "policy"))?;
        Ok(())
    }

    /// The tenant's policy, or `None` when it has none (callers then use
    /// [`Policy::default`]).
    pub async fn get_policy(&self, tenant_id: &str) -> Result<Option<Policy>, StoreError> {
        let row = sqlx::query(
            "SELECT w_latency, w_energy, w_cost, latency_slo_ms, energy_ref_j, cost_ref_usd, \
             default_class, allow_cloud, expected_output_tokens, allow_store, hedge_margin_ms, \
             cascade_min_logprob FROM routing_policies WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "policy"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Policy {
            w_latency: get(&row, "w_latency")?,
            w_energy: get(&row, "w_energy")?,
            w_cost: get(&row, "w_cost")?,
            latency_slo_ms: get(&row, "latency_slo_ms")?,
            energy_ref_j: get(&row, "energy_ref_j")?,
            cost_ref_usd: get(&row, "cost_ref_usd")?,
            default_class: get_class(&row, "default_class")?,
            allow_cloud: get_flag(&row, "allow_cloud")?,
            expected_output_tokens: get_u32(&row, "expected_output_tokens")?,
            allow_store: get_flag(&row, "allow_store")?,
            hedge_margin_ms: get(&row, "hedge_margin_ms")?,
            cascade_min_logprob: get(&row, "cascade_min_logprob")?,
        }))
    }

    /// Adds a privacy rule, global when `tenant_id` is `None`. The rule is
    /// validated (and an operator regex compiled) first, so a broken rule
    /// never reaches the request path. A second rule with the same name in
    /// the same scope is a conflict; remove the old one first.
    pub async fn add_privacy_rule(
        &self,
        tenant_id: Option<&str>,
        spec: &RuleSpec,
    ) -> Result<PrivacyRule, StoreError> {
        spec.validate()
            .map_err(|_| StoreError::Invalid("privacy rule does not compile"))?;
        let (kind, name, pattern, class, enabled) = match spec {
            RuleSpec::Builtin {
                detector,
                enabled,
                class,
            } => ("builtin", detector, None, *class, *enabled),
            RuleSpec::Regex {
                name,
                pattern,
                class,
            } => ("regex", name, Some(pattern.as_str()), Some(*class), true),
        };
        let rule = PrivacyRule {
            id: new_id(),
            tenant_id: tenant_id.map(str::to_owned),
            spec: spec.clone(),
        };
        sqlx::query(
            "INSERT INTO privacy_rules (id, tenant_id, kind, name, pattern, class, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&rule.id)
        .bind(tenant_id)
        .bind(kind)
        .bind(name)
        .bind(pattern)
        .bind(class.map(Class::as_str))
        .bind(flag(enabled))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "privacy rule"))?;
        Ok(rule)
    }

    pub async fn remove_privacy_rule(&self, id: &str) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM privacy_rules WHERE id = $1").bind(id);
        execute_one(&self.pool, query, "privacy rule").await
    }

    /// Rules in the order [`crate::privacy::RuleSet::compile`] expects:
    /// global rules first, then the tenant's (which therefore win). Names are
    /// unique within a scope, so the order inside one does not change the
    /// compiled set; it is by name so that every store lists it the same way.
    /// `None` lists only the global rules.
    pub async fn privacy_rules_for(
        &self,
        tenant_id: Option<&str>,
    ) -> Result<Vec<PrivacyRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, kind, name, pattern, class, enabled FROM privacy_rules \
             WHERE tenant_id IS NULL OR tenant_id = $1 \
             ORDER BY CASE WHEN tenant_id IS NULL THEN 0 ELSE 1 END, name",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "privacy rule"))?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Every rule of every scope, for the admin listing.
    pub async fn list_privacy_rules(&self) -> Result<Vec<PrivacyRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, kind, name, pattern, class, enabled FROM privacy_rules \
             ORDER BY COALESCE(tenant_id, ''), name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "privacy rule"))?;
        rows.iter().map(rule_from_row).collect()
    }
}

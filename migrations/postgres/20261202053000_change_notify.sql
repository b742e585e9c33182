-- Admin changes reach every gateway at once: each gateway LISTENs on
-- `gateway_changes` and drops its caches of keys and settings when a change
-- to them commits (a notification is delivered on commit, never for a
-- rolled-back change). The payload is the table's name.
--
-- Only the columns an admin changes fire on `api_keys`: the per-request
-- spend update must not flush every gateway's key cache.

CREATE FUNCTION gateway_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER api_keys_added_or_removed AFTER INSERT OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER api_keys_changed AFTER UPDATE OF tenant_id, key_hash, scopes, default_class,
    requests_per_min, tokens_per_min, budget_usd, expires_at, revoked_at ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER backends_changed AFTER INSERT OR UPDATE OR DELETE ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER backend_models_changed AFTER INSERT OR UPDATE OR DELETE ON backend_models
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER model_aliases_changed AFTER INSERT OR UPDATE OR DELETE ON model_aliases
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER routing_policies_changed AFTER INSERT OR UPDATE OR DELETE ON routing_policies
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();
CREATE TRIGGER privacy_rules_changed AFTER INSERT OR UPDATE OR DELETE ON privacy_rules
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_notify_change();

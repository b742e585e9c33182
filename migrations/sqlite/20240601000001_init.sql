-- Same schema as migrations/postgres, in SQLite spelling (REAL, INTEGER).
-- Keep the two in step: the store reads both through one set of queries.
-- Timestamps are unix milliseconds, ids are UUID text, flags are 0/1.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_hash         TEXT NOT NULL UNIQUE,
    display_prefix   TEXT NOT NULL,
    scopes           TEXT NOT NULL DEFAULT '[]',
    default_class    TEXT NOT NULL CHECK (default_class IN ('public', 'internal', 'confidential')),
    requests_per_min INTEGER,
    tokens_per_min   INTEGER,
    budget_usd       REAL,
    spent_usd        REAL NOT NULL DEFAULT 0,
    expires_at       INTEGER,
    revoked_at       INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE backends (
    id                      TEXT PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    kind                    TEXT NOT NULL CHECK (kind IN ('edge', 'cloud')),
    base_url                TEXT NOT NULL,
    zone                    TEXT NOT NULL CHECK (zone IN ('on_prem', 'cloud')),
    api_key_env             TEXT,
    price_in_per_1k         REAL NOT NULL DEFAULT 0,
    price_out_per_1k        REAL NOT NULL DEFAULT 0,
    joules_per_prompt_token REAL NOT NULL DEFAULT 0,
    joules_per_output_token REAL NOT NULL DEFAULT 0,
    rtt_ms                  REAL NOT NULL DEFAULT 0,
    prefill_tps             REAL NOT NULL,
    decode_tps              REAL NOT NULL,
    max_concurrency         INTEGER NOT NULL DEFAULT 0,
    context_length          INTEGER NOT NULL,
    enabled                 INTEGER NOT NULL DEFAULT 1,
    created_at              INTEGER NOT NULL
);

CREATE TABLE backend_models (
    backend_id     TEXT NOT NULL REFERENCES backends(id) ON DELETE CASCADE,
    public_model   TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (backend_id, public_model)
);
CREATE INDEX backend_models_public ON backend_models (public_model);

CREATE TABLE model_aliases (
    name       TEXT PRIMARY KEY,
    target     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE routing_policies (
    tenant_id              TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    w_latency              REAL NOT NULL,
    w_energy               REAL NOT NULL,
    w_cost                 REAL NOT NULL,
    latency_slo_ms         REAL NOT NULL,
    energy_ref_j           REAL NOT NULL,
    cost_ref_usd           REAL NOT NULL,
    default_class          TEXT NOT NULL CHECK (default_class IN ('public', 'internal', 'confidential')),
    allow_cloud            INTEGER NOT NULL,
    expected_output_tokens INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL
);

CREATE TABLE privacy_rules (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('builtin', 'regex')),
    name       TEXT NOT NULL,
    pattern    TEXT,
    class      TEXT CHECK (class IN ('public', 'internal', 'confidential')),
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
-- One rule per name per scope; a NULL tenant (global) is folded to ''.
CREATE UNIQUE INDEX privacy_rules_scope_name ON privacy_rules (COALESCE(tenant_id, ''), name);

-- One row per admitted request. No foreign keys: the ledger must keep its
-- rows when a key or tenant is deleted, and must not slow the request path.
CREATE TABLE request_ledger (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL,
    key_id               TEXT NOT NULL,
    requested_model      TEXT NOT NULL,
    resolved_model       TEXT,
    backend              TEXT,
    route_reason         TEXT,
    privacy_class        TEXT NOT NULL,
    detectors            TEXT NOT NULL DEFAULT '[]',
    predicted_latency_ms REAL,
    predicted_energy_j   REAL,
    predicted_cost_usd   REAL,
    latency_ms           REAL,
    ttft_ms              REAL,
    prompt_tokens        INTEGER,
    completion_tokens    INTEGER,
    joules               REAL,
    usd                  REAL,
    status               TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled', 'partial', 'rejected')),
    http_status          INTEGER,
    error_code           TEXT,
    stream               INTEGER NOT NULL,
    decision             TEXT,
    created_at           INTEGER NOT NULL
);
CREATE INDEX request_ledger_created ON request_ledger (created_at);
CREATE INDEX request_ledger_tenant_created ON request_ledger (tenant_id, created_at);

-- In step with the Postgres migration of the same name: admin tokens
-- (hashed) and dashboard sessions.
CREATE TABLE admin_tokens (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    token_hash     TEXT NOT NULL UNIQUE,
    display_prefix TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
);

CREATE TABLE admin_sessions (
    id_hash    TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL REFERENCES admin_tokens(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

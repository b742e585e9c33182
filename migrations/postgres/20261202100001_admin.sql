-- The operators' credential: admin tokens for the admin API and dashboard,
-- separate from tenant keys. Like keys, only the SHA-256 of a token is
-- stored; its plaintext is shown once by `gateway admin-token create`.
CREATE TABLE admin_tokens (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    token_hash     TEXT NOT NULL UNIQUE,
    display_prefix TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

-- Dashboard sessions opened by logging in with an admin token. Stored, not
-- kept in a gateway's memory, so any gateway of a fleet serves a session
-- and revoking the token ends its sessions everywhere. `id_hash` is the
-- SHA-256 of the cookie's value; `csrf` is the token the session's forms
-- carry.
CREATE TABLE admin_sessions (
    id_hash    TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL REFERENCES admin_tokens(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

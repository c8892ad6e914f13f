-- authstamp token service, initial schema (PostgreSQL). Keep in step with
-- migrations/sqlite: same tables, columns and constraints.
-- Timestamps are unix seconds (BIGINT). *_hash columns hold SHA-256 digests;
-- BYTEA columns named after secrets hold vault envelopes (never plaintext).

CREATE TABLE apps (
    app_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    key_hash BYTEA NOT NULL,
    -- JSON array of URL prefixes that connect sessions may return to.
    allowed_return_to TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);

CREATE TABLE providers (
    app_id TEXT NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret BYTEA NOT NULL,
    authorize_url TEXT NOT NULL,
    token_url TEXT NOT NULL,
    api_base_url TEXT NOT NULL,
    -- JSON array of scope strings.
    scopes TEXT NOT NULL DEFAULT '[]',
    scope_separator TEXT NOT NULL DEFAULT ' ',
    client_auth TEXT NOT NULL CHECK (client_auth IN ('basic', 'body')),
    header_name TEXT NOT NULL,
    header_format TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, provider)
);

CREATE TABLE connect_sessions (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    app_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    user_id TEXT NOT NULL,
    return_to TEXT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    FOREIGN KEY (app_id, provider) REFERENCES providers (app_id, provider) ON DELETE CASCADE
);
CREATE INDEX connect_sessions_expires_at ON connect_sessions (expires_at);

CREATE TABLE oauth_states (
    state_hash BYTEA PRIMARY KEY NOT NULL,
    app_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    user_id TEXT NOT NULL,
    return_to TEXT NULL,
    pkce_verifier BYTEA NOT NULL,
    nonce_hash BYTEA NOT NULL,
    -- The redirect_uri exactly as sent to the authorize endpoint.
    redirect_uri TEXT NOT NULL,
    -- The scope parameter as sent (joined), '' when none.
    requested_scope TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    FOREIGN KEY (app_id, provider) REFERENCES providers (app_id, provider) ON DELETE CASCADE
);
CREATE INDEX oauth_states_expires_at ON oauth_states (expires_at);

CREATE TABLE connections (
    app_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    user_id TEXT NOT NULL,
    access_token BYTEA NOT NULL,
    refresh_token BYTEA NULL,
    expires_at BIGINT NULL,
    scopes TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('active', 'reauth_required')),
    failure_count BIGINT NOT NULL DEFAULT 0,
    last_refresh_at BIGINT NULL,
    last_refresh_error TEXT NULL,
    -- Reserved for refresh leases shared by several replicas.
    refresh_lease_owner TEXT NULL,
    refresh_lease_until BIGINT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, provider, user_id),
    FOREIGN KEY (app_id, provider) REFERENCES providers (app_id, provider) ON DELETE CASCADE
);

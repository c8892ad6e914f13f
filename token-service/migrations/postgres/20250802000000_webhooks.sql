-- Per-app webhook (postgres; keep in step with the other backend): where
-- connection events are POSTed and the vault envelope of the HMAC-SHA256
-- signing secret.
CREATE TABLE webhooks (
    app_id TEXT PRIMARY KEY NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    secret BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- App keys (postgres; keep in step with the other backend). An app may hold
-- several keys at once, so that a new key can be rolled out before the old
-- one is revoked (or expires at the end of its grace period). Only SHA-256
-- digests are stored. apps.key_hash keeps the first key for older readers.
CREATE TABLE app_keys (
    app_id TEXT NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    key_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    -- NULL: valid until revoked (deleted).
    expires_at BIGINT NULL,
    PRIMARY KEY (app_id, key_id)
);
INSERT INTO app_keys (app_id, key_id, key_hash, created_at, expires_at)
    SELECT app_id, 'key_initial', key_hash, created_at, NULL FROM apps;

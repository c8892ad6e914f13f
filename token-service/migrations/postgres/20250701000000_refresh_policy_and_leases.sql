-- Refresh across replicas (postgres; keep in step with the other backend).
-- Per-provider refresh policy overrides (NULL: the service's default), the
-- refresh state of each connection, and leases shared by replicas.

ALTER TABLE providers ADD COLUMN refresh_skew_secs BIGINT NULL;
ALTER TABLE providers ADD COLUMN max_token_lifetime_secs BIGINT NULL;
ALTER TABLE providers ADD COLUMN background_window_secs BIGINT NULL;
ALTER TABLE providers ADD COLUMN keepalive_secs BIGINT NULL;
ALTER TABLE providers ADD COLUMN failure_cooldown_secs BIGINT NULL;

-- Incremented by every write of new tokens (connect or refresh): a refresh
-- that finds another version than the one it started from knows that someone
-- else refreshed in between.
ALTER TABLE connections ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
-- When the current access token was obtained (unix seconds).
ALTER TABLE connections ADD COLUMN issued_at BIGINT NOT NULL DEFAULT 0;
-- Last refresh attempt, successful or not (unix seconds).
ALTER TABLE connections ADD COLUMN last_attempt_at BIGINT NULL;
-- After a transient failure: no refresh attempt before this (unix seconds).
ALTER TABLE connections ADD COLUMN retry_at BIGINT NULL;
UPDATE connections SET issued_at = COALESCE(last_refresh_at, created_at);
-- refresh_lease_owner / refresh_lease_until (now in unix milliseconds) hold
-- the per-connection refresh lease.

CREATE INDEX connections_by_user ON connections (app_id, user_id);
CREATE INDEX connections_expiring ON connections (expires_at)
    WHERE status = 'active' AND refresh_token IS NOT NULL;
CREATE INDEX connections_issued ON connections (issued_at)
    WHERE status = 'active' AND refresh_token IS NOT NULL;

-- Leases of jobs that run once across replicas (the background refresher).
CREATE TABLE service_leases (
    name TEXT PRIMARY KEY NOT NULL,
    owner TEXT NULL,
    -- unix milliseconds
    until_ms BIGINT NOT NULL DEFAULT 0
);
INSERT INTO service_leases (name, owner, until_ms) VALUES ('background_refresher', NULL, 0);

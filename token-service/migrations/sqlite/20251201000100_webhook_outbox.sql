-- Webhook outbox (sqlite; keep in step with the other backend): every event
-- of an app with a webhook is a row until it is delivered (2xx) or given
-- up; replicas claim due rows with a lease, so deliveries survive restarts.
CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY NOT NULL,
    app_id TEXT NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Unix milliseconds.
    next_attempt_at INTEGER NOT NULL,
    claimed_by TEXT NULL,
    claimed_until INTEGER NULL,
    last_error TEXT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at);

-- Connect confirmation (sqlite; keep in step with the other backend).
-- The name the app shows for its user on the connect page.
ALTER TABLE connect_sessions ADD COLUMN user_display_name TEXT NULL;
-- Tokens of a finished authorization that returns to the app: held here,
-- sealed to this row, until the app's backend confirms the user
-- (POST /v1/connect-results/confirm); keyed by the SHA-256 of the one-time
-- result the browser carried back, taken once.
CREATE TABLE connect_results (
    result_hash BLOB PRIMARY KEY NOT NULL,
    app_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    user_id TEXT NOT NULL,
    access_token BLOB NOT NULL,
    refresh_token BLOB NULL,
    token_expires_at INTEGER NULL,
    scopes TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    FOREIGN KEY (app_id, provider) REFERENCES providers (app_id, provider) ON DELETE CASCADE
);
CREATE INDEX connect_results_expires_at ON connect_results (expires_at);

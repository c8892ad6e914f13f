-- Vault key versions (postgres; keep in step with the other backend).
-- One row per key version ever activated: a check blob sealed with that
-- version's key (every replica verifies that its key of the version opens
-- it), and when it was activated. The highest version seals new blobs.
CREATE TABLE vault_keys (
    version BIGINT PRIMARY KEY NOT NULL,
    key_check BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

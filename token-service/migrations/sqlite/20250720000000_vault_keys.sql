-- Vault key versions (sqlite; keep in step with the other backend).
-- One row per key version ever activated: a check blob sealed with that
-- version's key (every replica verifies that its key of the version opens
-- it), and when it was activated. The highest version seals new blobs.
CREATE TABLE vault_keys (
    version INTEGER PRIMARY KEY NOT NULL,
    key_check BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

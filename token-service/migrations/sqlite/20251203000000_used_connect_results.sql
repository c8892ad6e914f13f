-- Used connect results (sqlite; keep in step with the other backend).
-- The hash of each result the app confirmed, kept until the result would
-- have expired: a journalled result written again after its confirmation
-- (a process killed between writing its row and settling its journal
-- entry) is then not written again.
CREATE TABLE used_connect_results (
    result_hash BLOB PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX used_connect_results_expires_at ON used_connect_results (expires_at);

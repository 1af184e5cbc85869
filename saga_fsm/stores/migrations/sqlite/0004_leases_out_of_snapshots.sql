-- saga_fsm SQLite schema, migration 4: the snapshot is the saga's state; the optimistic
-- version and the lease are the store's columns only (snapshot schema_version 2).
-- Append-only: never edit, add 0005_*.sql instead.

-- The columns were always written with the document, so they already hold the same
-- version and lease: take them out of every version-1 document. A row that is not JSON
-- (quarantined or about to be) keeps its bytes.
UPDATE saga_fsm_sagas
SET snapshot = json_set(
        json_remove(snapshot, '$.version', '$.lease_owner', '$.lease_expires_at'),
        '$.schema_version', 2)
WHERE json_valid(snapshot) AND json_extract(snapshot, '$.schema_version') = 1;

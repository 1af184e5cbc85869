-- saga_fsm SQLite schema, migration 3: what an idempotency key stands for, rows set
-- aside because they cannot be decoded.
-- Append-only: never edit, add 0004_*.sql instead.

-- A hash of the definition and data a saga was created with under its idempotency key:
-- the same key with another request is refused. NULL for sagas created without a key
-- (and for sagas created before this migration, whose requests are not known).
ALTER TABLE saga_fsm_sagas ADD COLUMN request_fingerprint TEXT;

-- Why and when a worker set the row aside (NULL: it is not quarantined).
ALTER TABLE saga_fsm_sagas ADD COLUMN quarantine TEXT;
ALTER TABLE saga_fsm_sagas ADD COLUMN quarantined_at TEXT;
CREATE INDEX saga_fsm_sagas_quarantined_idx ON saga_fsm_sagas (quarantined_at, saga_id)
    WHERE quarantine IS NOT NULL;

-- saga_fsm PostgreSQL schema, migration 4: what an idempotency key stands for, rows set
-- aside because they cannot be decoded.
-- Append-only: never edit, add 0005_*.sql instead.

-- A hash of the definition and data a saga was created with under its idempotency key:
-- the same key with another request is refused. NULL for sagas created without a key
-- (and for sagas created before this migration, whose requests are not known).
ALTER TABLE saga_fsm_sagas ADD COLUMN request_fingerprint text;

-- Why and when a worker set the row aside (NULL: it is not quarantined).
ALTER TABLE saga_fsm_sagas ADD COLUMN quarantine text;
ALTER TABLE saga_fsm_sagas ADD COLUMN quarantined_at timestamptz;
CREATE INDEX saga_fsm_sagas_quarantined_idx
    ON saga_fsm_sagas (quarantined_at, saga_id COLLATE "C") WHERE quarantine IS NOT NULL;

ALTER TYPE saga_fsm_write ADD ATTRIBUTE request_fingerprint text;

-- Migration 3's function, now also keeping the fingerprint and refusing (SQLSTATE SF001,
-- the existing saga's id as DETAIL) a key reused for another request.
CREATE OR REPLACE FUNCTION saga_fsm_create_batch(batch jsonb)
RETURNS TABLE (created boolean, existing_id text, existing_snapshot text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    w saga_fsm_write;
    found_fingerprint text;
BEGIN
    FOR w IN SELECT * FROM jsonb_populate_recordset(NULL::saga_fsm_write, batch) LOOP
        created := false;
        existing_id := NULL;
        existing_snapshot := NULL;
        -- ON CONFLICT on the idempotency key leaves the existing saga, returned instead;
        -- a clash on saga_id raises unique_violation (saga_fsm_sagas_pkey).
        INSERT INTO saga_fsm_sagas (
            saga_id, definition, definition_version, state, version, snapshot,
            correlation_id, idempotency_key, wake_at, due_at, lease_owner,
            lease_expires_at, created_at, updated_at, request_fingerprint)
        VALUES (
            w.saga_id, w.definition, w.definition_version, w.state, 1, w.snapshot,
            w.correlation_id, w.idempotency_key, w.wake_at, w.due_at, w.lease_owner,
            w.lease_expires_at, w.created_at, w.updated_at, w.request_fingerprint)
        ON CONFLICT (idempotency_key) DO NOTHING;
        IF FOUND THEN
            created := true;
            -- The write's history rows, in their order (the identity column follows it).
            INSERT INTO saga_fsm_history
                (saga_id, version, from_state, to_state, trigger, at, detail)
            SELECT w.saga_id, 1, h.from_state, h.to_state, h.trigger, h.at, h.detail
            FROM ROWS FROM (jsonb_to_recordset(w.history) AS (
                    from_state text, to_state text, trigger text, at timestamptz,
                    detail jsonb))
                WITH ORDINALITY AS h(from_state, to_state, trigger, at, detail, ord)
            ORDER BY h.ord;
        ELSE
            SELECT s.saga_id, s.snapshot::text, s.request_fingerprint
            INTO existing_id, existing_snapshot, found_fingerprint
            FROM saga_fsm_sagas s WHERE s.idempotency_key = w.idempotency_key;
            -- The same key for another request: the whole statement fails, writing nothing.
            IF found_fingerprint IS DISTINCT FROM w.request_fingerprint
                    AND found_fingerprint IS NOT NULL THEN
                RAISE EXCEPTION 'idempotency key reused' USING
                    ERRCODE = 'SF001', DETAIL = existing_id;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

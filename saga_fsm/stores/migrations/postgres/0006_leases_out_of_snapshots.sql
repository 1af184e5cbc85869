-- saga_fsm PostgreSQL schema, migration 6: the snapshot is the saga's state; the
-- optimistic version and the lease are the store's columns only (snapshot
-- schema_version 2). Append-only: never edit, add the next number instead.

-- The columns were always written with the document, so they already hold the same
-- version and lease: take them out of every version-1 document. Anything else (a
-- newer or corrupt document) keeps its bytes.
UPDATE saga_fsm_sagas
SET snapshot = (snapshot - 'version' - 'lease_owner' - 'lease_expires_at')
    || jsonb_build_object('schema_version', 2)
WHERE jsonb_typeof(snapshot) = 'object' AND snapshot->>'schema_version' = '1';

-- Migration 3's save, now leaving the lease columns alone (leases are the claim's,
-- the renewal's and the release's business), except that a saga no longer due
-- (finished or parked) has no lease left.
CREATE OR REPLACE FUNCTION saga_fsm_save_batch(batch jsonb)
RETURNS TABLE (saved boolean, found_version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    w saga_fsm_write;
BEGIN
    FOR w IN SELECT * FROM jsonb_populate_recordset(NULL::saga_fsm_write, batch) LOOP
        -- The idempotency key is a fact of creation: a save never moves it.
        UPDATE saga_fsm_sagas SET
            definition = w.definition, definition_version = w.definition_version,
            state = w.state, version = w.version, snapshot = w.snapshot,
            correlation_id = w.correlation_id, wake_at = w.wake_at, due_at = w.due_at,
            lease_owner = CASE WHEN w.due_at IS NULL THEN NULL ELSE lease_owner END,
            lease_expires_at = CASE WHEN w.due_at IS NULL THEN NULL ELSE lease_expires_at END,
            created_at = w.created_at, updated_at = w.updated_at
        WHERE saga_id = w.saga_id AND version = w.expected_version;
        saved := FOUND;
        IF saved THEN
            found_version := w.expected_version;
            -- The write's history rows, in their order (the identity column follows it).
            INSERT INTO saga_fsm_history
                (saga_id, version, from_state, to_state, trigger, at, detail)
            SELECT w.saga_id, w.version, h.from_state, h.to_state, h.trigger, h.at, h.detail
            FROM ROWS FROM (jsonb_to_recordset(w.history) AS (
                    from_state text, to_state text, trigger text, at timestamptz,
                    detail jsonb))
                WITH ORDINALITY AS h(from_state, to_state, trigger, at, detail, ord)
            ORDER BY h.ord;
        ELSE
            SELECT s.version INTO found_version FROM saga_fsm_sagas s WHERE s.saga_id = w.saga_id;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

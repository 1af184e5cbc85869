-- saga_fsm PostgreSQL schema, migration 7: a transition rewrites as little as it can.
-- Append-only: never edit, add the next number instead.
--
-- Most transitions move a saga from one step to the next within the same status
-- (running:reserve -> running:charge). PostgreSQL updates a row in place, as a heap-only
-- tuple (HOT: no new entry in any index, less WAL), only when no indexed column changed
-- and the page has room. The state was indexed (directly and through an expression), so
-- every transition wrote an entry into every index of the table. The status is now a
-- column of its own, derived from the state by the database, and the indexes that
-- filtered on the state filter on it: only a change of status (start, compensating,
-- finished) touches the indexes. Pages keep room for the new versions (fillfactor).
ALTER TABLE saga_fsm_sagas SET (fillfactor = 70);
ALTER TABLE saga_fsm_sagas
    ADD COLUMN status text GENERATED ALWAYS AS (split_part(state, ':', 1)) STORED;
DROP INDEX IF EXISTS saga_fsm_sagas_state_idx;
DROP INDEX IF EXISTS saga_fsm_sagas_status_created_idx;
CREATE INDEX saga_fsm_sagas_status_created_idx
    ON saga_fsm_sagas (status, created_at, saga_id COLLATE "C");

-- History rows are read by saga, in order: one index, (saga_id, id), as the primary key,
-- instead of that index and a second one on id alone.
ALTER TABLE saga_fsm_history DROP CONSTRAINT IF EXISTS saga_fsm_history_pkey;
DROP INDEX IF EXISTS saga_fsm_history_saga_idx;
ALTER TABLE saga_fsm_history ADD CONSTRAINT saga_fsm_history_pkey PRIMARY KEY (saga_id, id);

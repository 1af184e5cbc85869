-- saga_fsm PostgreSQL schema, migration 2: less work on every transition.
-- Append-only: never edit, add 0003_*.sql instead.

-- Nothing reads it: claims walk saga_fsm_sagas_due_idx, whose due_at already holds
-- the wake-up time of a saga waiting on a timer.
DROP INDEX IF EXISTS saga_fsm_sagas_wake_at_idx;

-- A handful of distinct values: listing by definition filters while walking the
-- created_at index instead, and no transition pays for keeping this one.
DROP INDEX IF EXISTS saga_fsm_sagas_definition_idx;

-- History rows are only ever written by the statement that writes their saga's row
-- (the same CTE, joined on the rows it inserted or updated), so the foreign key could
-- never fail; checking it cost an index lookup and a trigger per history row.
ALTER TABLE saga_fsm_history DROP CONSTRAINT IF EXISTS saga_fsm_history_saga_id_fkey;

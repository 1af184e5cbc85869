-- saga_fsm SQLite schema, migration 2: less work on every transition (as PostgreSQL's).
-- Append-only: never edit, add 0003_*.sql instead.

-- Nothing reads it: claims walk saga_fsm_sagas_due_idx, whose due_at already holds
-- the wake-up time of a saga waiting on a timer.
DROP INDEX IF EXISTS saga_fsm_sagas_wake_at_idx;

-- A handful of distinct values: listing by definition filters while walking the
-- created_at index instead, and no transition pays for keeping this one.
DROP INDEX IF EXISTS saga_fsm_sagas_definition_idx;

-- saga_fsm SQLite schema, migration 1. Append-only: never edit, add 0002_*.sql instead.
-- Times are UTC ISO-8601 text of fixed width, so text order is time order.

CREATE TABLE saga_fsm_sagas (
    saga_id            TEXT    NOT NULL PRIMARY KEY,
    definition         TEXT    NOT NULL,
    definition_version INTEGER NOT NULL,
    state              TEXT    NOT NULL,
    version            INTEGER NOT NULL,
    snapshot           TEXT    NOT NULL,
    correlation_id     TEXT,
    idempotency_key    TEXT    UNIQUE,
    wake_at            TEXT,
    due_at             TEXT,  -- Snapshot.due_at: when a worker should pick it up
    lease_owner        TEXT,
    lease_expires_at   TEXT,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL
);

CREATE INDEX saga_fsm_sagas_state_idx ON saga_fsm_sagas (state);
CREATE INDEX saga_fsm_sagas_definition_idx ON saga_fsm_sagas (definition);
-- Timers of live sagas: finished ones never wake again, so leave them out.
CREATE INDEX saga_fsm_sagas_wake_at_idx ON saga_fsm_sagas (wake_at)
    WHERE state NOT IN ('completed', 'compensated', 'failed');
-- claim_due walks this in order; finished and parked sagas (due_at NULL) are not in it.
CREATE INDEX saga_fsm_sagas_due_idx ON saga_fsm_sagas (due_at, saga_id)
    WHERE due_at IS NOT NULL;
CREATE INDEX saga_fsm_sagas_created_idx ON saga_fsm_sagas (created_at, saga_id);

CREATE TABLE saga_fsm_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id    TEXT    NOT NULL REFERENCES saga_fsm_sagas (saga_id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    trigger    TEXT    NOT NULL,
    at         TEXT    NOT NULL,
    detail     TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX saga_fsm_history_saga_idx ON saga_fsm_history (saga_id, id);

-- saga_fsm PostgreSQL schema, migration 1. Append-only: never edit, add 0002_*.sql instead.
-- Table names are unqualified: the connection's search_path decides the schema.

CREATE TABLE saga_fsm_sagas (
    saga_id            text        PRIMARY KEY,
    definition         text        NOT NULL,
    definition_version integer     NOT NULL,
    state              text        NOT NULL,
    version            bigint      NOT NULL,
    snapshot           jsonb       NOT NULL,
    correlation_id     text,
    idempotency_key    text        UNIQUE,
    wake_at            timestamptz,
    due_at             timestamptz,  -- Snapshot.due_at: when a worker should pick it up
    lease_owner        text,
    lease_expires_at   timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

-- text_pattern_ops serves both "state = 'running:charge'" and "state LIKE 'running:%'".
CREATE INDEX saga_fsm_sagas_state_idx ON saga_fsm_sagas (state text_pattern_ops);
CREATE INDEX saga_fsm_sagas_definition_idx ON saga_fsm_sagas (definition);
-- Timers of live sagas: finished ones never wake again, so leave them out.
CREATE INDEX saga_fsm_sagas_wake_at_idx ON saga_fsm_sagas (wake_at)
    WHERE state NOT IN ('completed', 'compensated', 'failed');
-- claim_due walks this in order; finished and parked sagas (due_at NULL) are not in it.
CREATE INDEX saga_fsm_sagas_due_idx ON saga_fsm_sagas (due_at, saga_id COLLATE "C")
    WHERE due_at IS NOT NULL;
CREATE INDEX saga_fsm_sagas_created_idx ON saga_fsm_sagas (created_at, saga_id COLLATE "C");

CREATE TABLE saga_fsm_history (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id    text        NOT NULL REFERENCES saga_fsm_sagas (saga_id) ON DELETE CASCADE,
    version    bigint      NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    trigger    text        NOT NULL,
    at         timestamptz NOT NULL,
    detail     jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX saga_fsm_history_saga_idx ON saga_fsm_history (saga_id, id);

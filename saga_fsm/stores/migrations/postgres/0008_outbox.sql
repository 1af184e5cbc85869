-- saga_fsm PostgreSQL schema, migration 7: the transactional outbox of remote steps.
-- Append-only: never edit, add the next number instead.

-- A command a transition decided to send, written in the same transaction as that
-- transition; a relay claims it under a lease, publishes it, then marks it published.
CREATE TABLE saga_fsm_outbox (
    seq              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id          text        NOT NULL,
    channel          text        NOT NULL,
    message_id       text        NOT NULL UNIQUE,
    body             text        NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    published_at     timestamptz
);
-- Claims look for the oldest unpublished row of each saga.
CREATE INDEX saga_fsm_outbox_unpublished_idx ON saga_fsm_outbox (saga_id, seq)
    WHERE published_at IS NULL;

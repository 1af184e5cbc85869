-- saga_fsm SQLite schema, migration 5: the transactional outbox of remote steps.
-- Append-only: never edit, add the next number instead.

-- A command a transition decided to send, written in the same transaction as that
-- transition; a relay claims it under a lease, publishes it, then marks it published.
CREATE TABLE saga_fsm_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id          TEXT    NOT NULL,
    channel          TEXT    NOT NULL,
    message_id       TEXT    NOT NULL UNIQUE,
    body             TEXT    NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    published_at     TEXT
);
-- Claims look for the oldest unpublished row of each saga.
CREATE INDEX saga_fsm_outbox_unpublished_idx ON saga_fsm_outbox (saga_id, seq)
    WHERE published_at IS NULL;

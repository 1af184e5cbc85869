-- A participant's inbox: one row per step it was asked to do (forward channel and
-- idempotency key), holding the first reply to the forward command and to its
-- compensation, so that a redelivered command is answered again, never redone.
CREATE TABLE saga_fsm_inbox (
    channel            TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    forward_reply      TEXT,
    compensation_reply TEXT,
    updated_at         REAL NOT NULL,
    PRIMARY KEY (channel, idempotency_key)
);

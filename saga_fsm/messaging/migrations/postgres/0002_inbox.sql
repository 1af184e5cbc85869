-- A participant's inbox: one row per step it was asked to do (forward channel and
-- idempotency key), holding the first reply to the forward command and to its
-- compensation, so that a redelivered command is answered again, never redone.
CREATE TABLE saga_fsm_inbox (
    channel            text        NOT NULL,
    idempotency_key    text        NOT NULL,
    forward_reply      text,
    compensation_reply text,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, idempotency_key)
);

-- The database as a broker: one table of messages for every channel, claimed with
-- FOR UPDATE SKIP LOCKED. A row stays after it is settled (done_at) so that a
-- re-published message id is stored once.
CREATE TABLE saga_fsm_messages (
    seq          bigserial   PRIMARY KEY,
    channel      text        NOT NULL,
    message_id   text        NOT NULL,
    body         jsonb       NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    visible_at   timestamptz NOT NULL DEFAULT now(),
    deliveries   integer     NOT NULL DEFAULT 0,
    done_at      timestamptz,
    UNIQUE (channel, message_id)
);
CREATE INDEX saga_fsm_messages_ready ON saga_fsm_messages (channel, visible_at, seq)
    WHERE done_at IS NULL;

CREATE TABLE saga_fsm_dead_letters (
    channel    text        NOT NULL,
    message_id text        NOT NULL,
    body       text        NOT NULL,
    reason     text        NOT NULL,
    deliveries integer     NOT NULL,
    dead_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, message_id)
);

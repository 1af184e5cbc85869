-- The database as a broker: one table of messages for every channel, polled. A row
-- stays after it is settled (done_at) so that a re-published message id is stored once.
-- Times are Unix seconds.
CREATE TABLE saga_fsm_messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel      TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    published_at REAL    NOT NULL,
    visible_at   REAL    NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    done_at      REAL,
    UNIQUE (channel, message_id)
);
CREATE INDEX saga_fsm_messages_ready ON saga_fsm_messages (channel, visible_at, seq)
    WHERE done_at IS NULL;

CREATE TABLE saga_fsm_dead_letters (
    channel    TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    deliveries INTEGER NOT NULL,
    dead_at    REAL    NOT NULL,
    PRIMARY KEY (channel, message_id)
);

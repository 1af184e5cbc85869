"""Messaging building blocks: the message envelope, the ``Transport`` Protocol and its
transports (memory, SQLite, PostgreSQL, RabbitMQ, NATS JetStream), dead letters, and
the relay that publishes the saga store's outbox.

Brokers' client libraries load only when a transport of theirs is opened, so importing
this package stays light.
"""

from saga_fsm.messaging._envelope import (
    ENVELOPE_SCHEMA_VERSION,
    Headers,
    Message,
    MessageKind,
    check_channel,
    message_from_json,
    message_to_json,
    new_message_id,
)
from saga_fsm.messaging._errors import (
    AlreadySettled,
    DeadLetterNotFound,
    InvalidChannel,
    InvalidTransportURL,
    MessageDecodeError,
    MessagingError,
    TransportError,
)
from saga_fsm.messaging._protocol import (
    Capabilities,
    DeadLetter,
    DeadLetters,
    Delivery,
    Subscription,
    Transport,
)
from saga_fsm.messaging._relay import OutboxRelay
from saga_fsm.messaging._reply import Outcome, ReplyBody, reply_from_payload, reply_to_payload
from saga_fsm.messaging._url import connect_transport, open_transport

__all__ = [
    "AlreadySettled",
    "Capabilities",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetters",
    "Delivery",
    "ENVELOPE_SCHEMA_VERSION",
    "Headers",
    "InvalidChannel",
    "InvalidTransportURL",
    "Message",
    "MessageDecodeError",
    "MessageKind",
    "MessagingError",
    "Outcome",
    "OutboxRelay",
    "ReplyBody",
    "Subscription",
    "Transport",
    "TransportError",
    "check_channel",
    "connect_transport",
    "message_from_json",
    "message_to_json",
    "new_message_id",
    "open_transport",
    "reply_from_payload",
    "reply_to_payload",
]

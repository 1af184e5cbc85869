"""Events on the wire. A choreography's event is published once per reader: a copy on the
tracker's channel (``<choreography>.tracker``) and one on each consumer's channel
(``<choreography>.<participant>``), since a transport's channel has competing consumers.

Every copy carries the event's id as its idempotency key and its name as the header
``step``; copy ids derive from the event id, so publishing the same event again (after a
crash) yields the same messages, which brokers and inboxes deduplicate.
"""

from __future__ import annotations

import uuid
from typing import Any

from saga_fsm.choreography._definition import TRACKER, Choreography
from saga_fsm.messaging import Headers, Message, MessageKind

_COPIES = uuid.UUID("3b0c8f5e-4f59-4d0e-9a57-0f3f6a2f1c44")


def channel(c: Choreography, reader: str) -> str:
    """Where ``reader`` (a participant, or ``tracker``) consumes the choreography's events."""
    return f"{c.name}.{reader}"


def derived_id(*parts: str) -> str:
    """A message id fixed by what it derives from (the same on every re-publish)."""
    return uuid.uuid5(_COPIES, "\x1f".join(parts)).hex


def event_messages(
    c: Choreography, name: str, payload: dict[str, Any], *, event_id: str
) -> list[Message]:
    """The copies of one event: the tracker's, then each consumer's."""
    event = c.event(name)
    correlation = payload.get(c.correlation[0])
    headers = Headers(
        definition=c.name,
        step=name,
        idempotency_key=event_id,
        correlation_id=None if correlation is None else str(correlation),
    )
    return [
        Message(
            channel=channel(c, reader),
            kind=MessageKind.EVENT,
            payload=dict(payload),
            headers=headers,
            message_id=derived_id(event_id, reader),
        )
        for reader in (TRACKER, *event.consumers)
    ]


def event_name(message: Message) -> str | None:
    return message.headers.step


def event_id(message: Message) -> str:
    return message.headers.idempotency_key or message.message_id

"""The message envelope every transport carries: a frozen value, JSON on the wire.

A message is published at least once; its ``message_id`` is chosen once, when the
message is built, and stays the same on every re-publish, so a broker or an inbox that
deduplicates by id can. The body is the project's cattrs converter output plus
``schema_version``; decoding refuses versions it does not know. Never pickle.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from typing import Any

import attrs
import cattrs

from saga_fsm._codec import converter, dumps
from saga_fsm.messaging._errors import InvalidChannel, MessageDecodeError

ENVELOPE_SCHEMA_VERSION = 1

# Dot-separated tokens: what a NATS subject, an AMQP queue name and a SQL column all hold
# unchanged. The first token is the channel's prefix (one JetStream stream per prefix).
_CHANNEL = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_CHANNEL_LENGTH = 200


def check_channel(channel: str) -> str:
    """``channel`` if a broker can hold it unchanged, else ``InvalidChannel``."""
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise InvalidChannel(
            str(channel), "use dot-separated tokens of letters, digits, '_' and '-'"
        )
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise InvalidChannel(channel, f"longer than {MAX_CHANNEL_LENGTH} characters")
    return channel


def _channel(instance: Any, attribute: Any, value: str) -> None:
    check_channel(value)


def _json_object(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, dict):
        raise TypeError(f"payload must be a JSON object, got {type(value).__name__}")
    dumps(value)  # refuses what JSON cannot hold, here rather than on the wire


class MessageKind(enum.StrEnum):
    COMMAND = "command"
    REPLY = "reply"
    EVENT = "event"


@attrs.frozen
class Headers:
    """Who a message is about: the saga, its step and attempt, and where to answer.

    ``idempotency_key`` is the same on every attempt of a step (a participant
    deduplicates on it); ``request_id`` names one attempt, so a reply to an earlier
    attempt is recognised as stale; ``traceparent`` is a W3C trace context."""

    saga_id: str | None = None
    definition: str | None = None
    step: str | None = None
    attempt: int | None = None
    idempotency_key: str | None = None
    request_id: str | None = None
    reply_channel: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_channel)
    )
    correlation_id: str | None = None
    traceparent: str | None = None


_REPLY_IDS = uuid.UUID("6d1f4a52-58f4-4a6c-9a0e-5b9c2e0f7a31")


def new_message_id() -> str:
    return uuid.uuid4().hex


@attrs.frozen
class Message:
    """One command, reply or event. ``payload`` is a JSON object."""

    channel: str = attrs.field(validator=_channel)
    kind: MessageKind = attrs.field(converter=MessageKind)
    payload: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    headers: Headers = Headers()
    message_id: str = attrs.field(factory=new_message_id)

    def reply(self, payload: dict[str, Any], *, message_id: str | None = None) -> Message:
        """The reply to this command, on its reply channel, with the same headers."""
        if self.headers.reply_channel is None:
            raise InvalidChannel("", f"message {self.message_id} names no reply channel")
        return Message(
            channel=self.headers.reply_channel,
            kind=MessageKind.REPLY,
            payload=payload,
            headers=self.headers,
            message_id=uuid.uuid5(_REPLY_IDS, self.message_id).hex,
        )


def message_to_dict(message: Message) -> dict[str, Any]:
    encoded: dict[str, Any] = converter.unstructure(message)
    encoded["schema_version"] = ENVELOPE_SCHEMA_VERSION
    return encoded


def message_to_json(message: Message) -> str:
    return dumps(message_to_dict(message))


def message_from_dict(encoded: Any) -> Message:
    message_id = encoded.get("message_id") if isinstance(encoded, dict) else None
    message_id = message_id if isinstance(message_id, str) else None
    if not isinstance(encoded, dict):
        raise MessageDecodeError(None, f"expected a JSON object, got {type(encoded).__name__}")
    body = dict(encoded)
    version = body.pop("schema_version", None)
    if version != ENVELOPE_SCHEMA_VERSION:
        raise MessageDecodeError(
            message_id,
            f"unknown schema_version {version!r} (this release reads {ENVELOPE_SCHEMA_VERSION})",
        )
    try:
        return converter.structure(body, Message)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as err:
        detail = (
            "; ".join(cattrs.transform_error(err))
            if isinstance(err, cattrs.BaseValidationError)
            else str(err)
        )
        raise MessageDecodeError(message_id, detail) from None


def message_from_json(text: str | bytes) -> Message:
    try:
        encoded = json.loads(text)
    except (ValueError, TypeError) as err:
        raise MessageDecodeError(None, f"not JSON: {err}") from None
    return message_from_dict(encoded)

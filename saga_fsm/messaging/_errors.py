"""Errors of the messaging layer, all under ``SagaError``."""

from __future__ import annotations

from saga_fsm._errors import SagaError


class MessagingError(SagaError):
    """Base of every error a transport raises on purpose."""


class InvalidTransportURL(MessagingError, ValueError):
    """The transport URL names no known transport or is malformed."""


class InvalidChannel(MessagingError, ValueError):
    """A channel name a broker could not hold unchanged."""

    def __init__(self, channel: str, reason: str) -> None:
        self.channel = channel
        self.reason = reason
        super().__init__(f"invalid channel {channel!r}: {reason}")


class MessageDecodeError(MessagingError):
    """A message body is not an envelope this release can read (a poison message)."""

    def __init__(self, message_id: str | None, reason: str) -> None:
        self.message_id = message_id
        self.reason = reason
        super().__init__(f"message {message_id or '?'}: {reason}")


class TransportError(MessagingError):
    """The broker refused or could not be reached; ``transport`` names which one."""

    def __init__(self, transport: str, reason: str) -> None:
        self.transport = transport
        self.reason = reason
        super().__init__(f"{transport}: {reason}")


class AlreadySettled(MessagingError):
    """A delivery was acked, nacked or dead-lettered twice."""

    def __init__(self, message_id: str, how: str) -> None:
        self.message_id = message_id
        self.how = how
        super().__init__(f"message {message_id} was already settled ({how})")


class DeadLetterNotFound(MessagingError, KeyError):
    """No dead letter with this message id on this channel."""

    def __init__(self, channel: str, message_id: str) -> None:
        self.channel = channel
        self.message_id = message_id
        super().__init__(f"no dead letter {message_id!r} on channel {channel!r}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

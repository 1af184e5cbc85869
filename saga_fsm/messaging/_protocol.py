"""What every transport offers: publish with confirmation, competing consumers with
explicit settlement, and a dead-letter queue per channel.

Delivery is at least once. A subscription hands out one ``Delivery`` at a time; it
must be settled exactly once: ``ack`` (done), ``nack(delay)`` (deliver again, to any
consumer, no sooner than ``delay`` seconds) or ``dead_letter(reason)``. A consumer that
dies without settling loses its claim: the message is delivered again (at once when the
broker sees the connection drop, else after the transport's ``ack_wait``).

A message delivered more than the transport's ``max_deliveries`` times, or whose body is
not an envelope (a poison message), is never handed out: the subscription moves it to
the channel's dead letters with the reason, and ``DeadLetters`` lists, shows, replays
and drops them.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from datetime import datetime
from typing import NamedTuple, Protocol

import attrs

from saga_fsm.messaging._envelope import Message, message_from_json
from saga_fsm.messaging._errors import AlreadySettled, MessageDecodeError

DEFAULT_MAX_DELIVERIES = 5
DEFAULT_ACK_WAIT = 30.0  # seconds a claim lasts on transports that cannot see a consumer die


@attrs.frozen
class Capabilities:
    """What a transport promises beyond at-least-once delivery.

    ``dedup_by_id``: a message re-published with the same id while the first copy is
    still known to the broker is stored once. ``fifo``: one consumer receives a
    channel's messages in publish order (as long as none is nacked)."""

    dedup_by_id: bool
    fifo: bool = True


class Settle(Protocol):
    """How a transport settles one delivery it handed out."""

    async def ack(self) -> None: ...

    async def nack(self, delay: float) -> None: ...

    async def dead_letter(self, reason: str) -> None: ...


@attrs.define(eq=False)
class Delivery:
    """One delivery of a message; settle it exactly once."""

    message: Message
    delivery_count: int  # 1 on the first delivery
    _settle: Settle = attrs.field(repr=False, alias="settle")
    _settled: str | None = attrs.field(default=None, init=False, repr=False)

    def _once(self, how: str) -> None:
        if self._settled is not None:
            raise AlreadySettled(self.message.message_id, self._settled)
        self._settled = how

    async def ack(self) -> None:
        self._once("acked")
        await self._settle.ack()

    async def nack(self, delay: float = 0.0) -> None:
        """Deliver again later, to any consumer of the channel."""
        if delay < 0:
            raise ValueError(f"nack delay must be >= 0, got {delay}")
        self._once("nacked")
        await self._settle.nack(delay)

    async def dead_letter(self, reason: str) -> None:
        """Park the message in the channel's dead letters; ``reason`` is kept on one line."""
        self._once("dead-lettered")
        await self._settle.dead_letter(" ".join(reason.split()))


@attrs.frozen
class DeadLetter:
    """A message parked in a channel's dead letters, with why.

    ``body`` is the text as it arrived; ``message`` is None when that text is not an
    envelope (the reason then says why)."""

    channel: str
    message_id: str
    reason: str
    deliveries: int
    body: str
    message: Message | None
    dead_at: datetime | None = None


class Subscription(Protocol):
    channel: str

    async def receive(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None when ``timeout`` seconds passed without one."""
        ...

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def close(self) -> None:
        """Stop consuming; what was received and not settled is delivered again."""
        ...


class DeadLetters(Protocol):
    async def list(self, channel: str, *, limit: int = 100) -> list[DeadLetter]: ...

    async def show(self, channel: str, message_id: str) -> DeadLetter: ...

    async def replay(self, channel: str, message_id: str) -> None:
        """Publish the message on its channel again (same id) and forget the dead letter."""
        ...

    async def drop(self, channel: str, message_id: str) -> None: ...


class Transport(Protocol):
    """A broker connection, opened by ``open_transport(url)``."""

    name: str
    capabilities: Capabilities

    @property
    def dead_letters(self) -> DeadLetters: ...

    async def publish(self, message: Message) -> None:
        """Returns once the broker has the message durably (publisher confirm, commit)."""
        ...

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> Subscription:
        """Consume ``channel``, competing with every other subscription to it."""
        ...

    async def close(self) -> None: ...


class Inbound(NamedTuple):
    """What a transport received from its broker, before it is checked and decoded."""

    body: str
    message_id: str
    delivery_count: int
    settle: Settle


def parse_dead_letter(
    channel: str, message_id: str, reason: str, deliveries: int, body: str, dead_at: datetime | None
) -> DeadLetter:
    try:
        message: Message | None = message_from_json(body)
    except MessageDecodeError:
        message = None
    return DeadLetter(channel, message_id, reason, deliveries, body, message, dead_at)


class BaseSubscription(ABC):
    """Turns what a transport receives into deliveries: anything delivered more than
    ``max_deliveries`` times or undecodable goes to the dead letters instead."""

    def __init__(self, channel: str, max_deliveries: int) -> None:
        self.channel = channel
        self.max_deliveries = max_deliveries

    @abstractmethod
    async def _next(self, timeout: float | None) -> Inbound | None:
        """The next message from the broker, or None after ``timeout`` seconds."""

    @abstractmethod
    async def close(self) -> None: ...

    async def receive(self, timeout: float | None = None) -> Delivery | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            inbound = await self._next(remaining)
            if inbound is None:
                return None
            delivery = await self._admit(inbound)
            if delivery is not None:
                return delivery
            if deadline is not None and loop.time() >= deadline:
                return None

    async def _admit(self, inbound: Inbound) -> Delivery | None:
        if inbound.delivery_count > self.max_deliveries:
            await inbound.settle.dead_letter(
                f"delivered {inbound.delivery_count} times, over the limit of {self.max_deliveries}"
            )
            return None
        try:
            message = message_from_json(inbound.body)
        except MessageDecodeError as err:
            await inbound.settle.dead_letter(f"undecodable: {err.reason}")
            return None
        return Delivery(message, inbound.delivery_count, settle=inbound.settle)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            delivery = await self.receive()
            if delivery is not None:
                yield delivery

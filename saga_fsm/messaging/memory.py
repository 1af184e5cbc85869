"""The in-process transport: for tests and ``saga_fsm.testing``.

``memory://`` is a private broker; ``memory://NAME`` is the broker of that name, shared
by every transport opened with it in this process (so a test can run a consumer that
"dies" and a replacement against one broker). Messages are kept per channel in publish
order; a claim lasts ``ack_wait`` seconds or until its subscription closes; ids are
remembered per channel, so a re-published message is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import attrs

from saga_fsm.messaging._envelope import Message, check_channel, message_to_json
from saga_fsm.messaging._errors import DeadLetterNotFound
from saga_fsm.messaging._protocol import (
    DEFAULT_ACK_WAIT,
    DEFAULT_MAX_DELIVERIES,
    BaseSubscription,
    Capabilities,
    DeadLetter,
    Inbound,
    parse_dead_letter,
)

_POLL = 0.05  # seconds between looks for claims that expired or delays that ended


@attrs.define(eq=False)
class _Entry:
    seq: int
    message_id: str
    body: str
    visible_at: float = 0.0  # loop time
    deliveries: int = 0
    holder: object | None = None  # the subscription holding the claim


@attrs.define(eq=False)
class MemoryBroker:
    """The queues of one in-process broker."""

    queues: dict[str, list[_Entry]] = attrs.field(factory=dict)
    seen: dict[str, set[str]] = attrs.field(factory=dict)
    dead: dict[str, list[DeadLetter]] = attrs.field(factory=dict)
    wakes: dict[str, asyncio.Event] = attrs.field(factory=dict)
    _seq: Iterator[int] = attrs.field(factory=itertools.count)

    def put(self, channel: str, message_id: str, body: str) -> None:
        seen = self.seen.setdefault(channel, set())
        if message_id in seen:
            return
        seen.add(message_id)
        self.queues.setdefault(channel, []).append(_Entry(next(self._seq), message_id, body))
        self.wake(channel).set()

    def wake(self, channel: str) -> asyncio.Event:
        if channel not in self.wakes:
            self.wakes[channel] = asyncio.Event()
        return self.wakes[channel]

    def claim(self, channel: str, holder: object, ack_wait: float) -> _Entry | None:
        now = asyncio.get_running_loop().time()
        for entry in self.queues.get(channel, ()):
            if entry.visible_at <= now:
                entry.deliveries += 1
                entry.holder = holder
                entry.visible_at = now + ack_wait
                return entry
        return None

    def release(self, channel: str, entry: _Entry, delay: float) -> None:
        entry.holder = None
        entry.visible_at = asyncio.get_running_loop().time() + delay
        self.wake(channel).set()

    def remove(self, channel: str, entry: _Entry) -> bool:
        queue = self.queues.get(channel, [])
        if entry in queue:
            queue.remove(entry)
            return True
        return False

    def drop_holder(self, holder: object) -> None:
        """What a closed subscription held becomes deliverable at once."""
        for channel, queue in self.queues.items():
            for entry in queue:
                if entry.holder is holder:
                    entry.holder = None
                    entry.visible_at = 0.0
            self.wake(channel).set()


_NAMED: dict[str, MemoryBroker] = {}


def named_broker(name: str) -> MemoryBroker:
    return _NAMED.setdefault(name, MemoryBroker())


@attrs.define(eq=False)
class _Settle:
    broker: MemoryBroker
    channel: str
    entry: _Entry

    def _held(self) -> bool:
        return self.entry.holder is not None and self.entry in self.broker.queues[self.channel]

    async def ack(self) -> None:
        self.broker.remove(self.channel, self.entry)

    async def nack(self, delay: float) -> None:
        if self._held():
            self.broker.release(self.channel, self.entry, delay)

    async def dead_letter(self, reason: str) -> None:
        if self.broker.remove(self.channel, self.entry):
            letters = self.broker.dead.setdefault(self.channel, [])
            letters[:] = [d for d in letters if d.message_id != self.entry.message_id]
            letters.append(
                parse_dead_letter(
                    self.channel,
                    self.entry.message_id,
                    reason,
                    self.entry.deliveries,
                    self.entry.body,
                    datetime.now(UTC),
                )
            )


class MemorySubscription(BaseSubscription):
    def __init__(
        self, broker: MemoryBroker, channel: str, max_deliveries: int, ack_wait: float
    ) -> None:
        super().__init__(channel, max_deliveries)
        self._broker = broker
        self._ack_wait = ack_wait
        self._closed = False

    async def _next(self, timeout: float | None) -> Inbound | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        wake = self._broker.wake(self.channel)
        while not self._closed:
            wake.clear()
            entry = self._broker.claim(self.channel, self, self._ack_wait)
            if entry is not None:
                settle = _Settle(self._broker, self.channel, entry)
                return Inbound(entry.body, entry.message_id, entry.deliveries, settle)
            wait = _POLL if deadline is None else min(_POLL, deadline - loop.time())
            if wait <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
        return None

    async def close(self) -> None:
        self._closed = True
        self._broker.drop_holder(self)


class MemoryDeadLetters:
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    async def list(self, channel: str, *, limit: int = 100) -> list[DeadLetter]:
        return list(self._broker.dead.get(check_channel(channel), []))[:limit]

    async def show(self, channel: str, message_id: str) -> DeadLetter:
        for letter in self._broker.dead.get(check_channel(channel), []):
            if letter.message_id == message_id:
                return letter
        raise DeadLetterNotFound(channel, message_id)

    async def replay(self, channel: str, message_id: str) -> None:
        letter = await self.show(channel, message_id)
        self._broker.seen.get(channel, set()).discard(message_id)
        self._broker.put(channel, message_id, letter.body)
        await self.drop(channel, message_id)

    async def drop(self, channel: str, message_id: str) -> None:
        letter = await self.show(channel, message_id)
        self._broker.dead[channel].remove(letter)


class MemoryTransport:
    name = "memory"
    capabilities = Capabilities(dedup_by_id=True)

    def __init__(
        self,
        broker: MemoryBroker | None = None,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> None:
        self.broker = MemoryBroker() if broker is None else broker
        self.dead_letters = MemoryDeadLetters(self.broker)
        self._max_deliveries = max_deliveries
        self._ack_wait = ack_wait
        self._subscriptions: list[MemorySubscription] = []

    async def publish(self, message: Message) -> None:
        self.broker.put(message.channel, message.message_id, message_to_json(message))

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> MemorySubscription:
        subscription = MemorySubscription(
            self.broker, check_channel(channel), self._max_deliveries, self._ack_wait
        )
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()

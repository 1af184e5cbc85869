"""The outbox relay: publishes the commands transitions wrote to the saga store's outbox.

At least once: a row is marked published only after the broker confirmed it; a relay
that dies between the two leaves its claim to run out, and the next relay publishes
the row again with the same message id (brokers that deduplicate by id store it once;
participants deduplicate on the idempotency key anyway). In order per saga: the store
hands out only the oldest unpublished row of each saga.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from saga_fsm._clock import Clock, SystemClock, seconds
from saga_fsm._errors import SagaError
from saga_fsm.messaging._envelope import message_from_json
from saga_fsm.messaging._errors import MessageDecodeError
from saga_fsm.messaging._protocol import Transport
from saga_fsm.observability._observer import NO_OBSERVER, Observer
from saga_fsm.stores._outbox import OutboxEntry, OutboxStore

log = logging.getLogger("saga_fsm.relay")

DEFAULT_RELAY_LEASE = 30.0


class OutboxRelay:
    """Publishes a store's outbox on a transport, until stopped.

    ``counts``: ``published`` rows, and ``refused`` rows whose body is not an envelope
    (left unpublished, for an operator). Any number of relays may share one store."""

    def __init__(
        self,
        store: OutboxStore,
        transport: Transport,
        relay_id: str,
        *,
        clock: Clock | None = None,
        lease_seconds: float = DEFAULT_RELAY_LEASE,
        batch: int = 64,
        poll_interval: float = 0.05,
        max_backoff: float = 5.0,
        wake: asyncio.Event | None = None,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        seconds("lease_seconds", lease_seconds)
        seconds("poll_interval", poll_interval)
        self.store = store
        self.transport = transport
        self.relay_id = relay_id
        self.clock: Clock = clock or SystemClock()
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.counts: Counter[str] = Counter()
        self.wake = wake
        self.observer = observer  # a PRODUCER span per publish, when tracing
        """Set by a writer in this process when it wrote rows: no need to wait a poll."""

    async def relay_once(self) -> int:
        """Claim a batch, publish it, mark what the broker confirmed; how many rows were
        marked published."""
        entries = await self.store.claim_outbox(
            self.relay_id, now=self.clock.now(), lease_seconds=self.lease_seconds, limit=self.batch
        )
        if not entries:
            return 0
        # One row per saga in a batch: publishing them at once keeps every saga's order.
        results = await asyncio.gather(
            *(self._publish(entry) for entry in entries), return_exceptions=True
        )
        done = [e.seq for e, ok in zip(entries, results, strict=True) if ok is True]
        failures = [r for r in results if isinstance(r, BaseException)]
        marked = await self.store.mark_published(done, self.relay_id, now=self.clock.now())
        self.counts["published"] += len(marked)
        if failures:
            # Unconfirmed rows stay claimed until the lease runs out, then go again.
            raise failures[0]
        return len(marked)

    async def _publish(self, entry: OutboxEntry) -> bool:
        try:
            message = message_from_json(entry.message.body)
        except MessageDecodeError as err:
            self.counts["refused"] += 1
            log.error("outbox row %d of saga %s: %s", entry.seq, entry.message.saga_id, err)
            return False
        with self.observer.publishing(message) as sent:
            await self.transport.publish(sent)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; backs off (up to ``max_backoff``) while the store
        or broker is away, and never exits on an outage."""
        backoff = self.poll_interval
        while not stop.is_set():
            try:
                moved = await self.relay_once()
                backoff = self.poll_interval
            except SagaError as err:
                log.warning("relay %s: %s; again in %.1fs", self.relay_id, err, backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if moved < self.batch:
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        if self.wake is None:
            await _wait(stop, self.poll_interval)
            return
        if self.wake.is_set():
            self.wake.clear()
            return
        woken = asyncio.ensure_future(self.wake.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {woken, stopped}, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
            stopped.cancel()
        self.wake.clear()


async def _wait(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)

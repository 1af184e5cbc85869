"""A worker's reply consumer: participants' replies in, applied to their sagas.

Replies are deduplicated by message id (the ids of recent replies are kept here) and,
durably, by the request id the snapshot waits for: a reply to an earlier attempt, or
to a saga that is finished, is dropped and counted, never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from saga_fsm._errors import SagaError, SignalRefused
from saga_fsm._executor import SagaExecutor
from saga_fsm._logging import get_logger
from saga_fsm._remote import reply_channel_for
from saga_fsm.messaging._errors import MessageDecodeError, TransportError
from saga_fsm.messaging._protocol import Delivery, Subscription, Transport

log = get_logger("saga_fsm.worker")

_RECENT = 10_000  # reply ids remembered for deduplication
_BUSY_TRIES = 60  # a saga another driver holds is tried again this often, here...
_BUSY_PAUSE = 0.002  # ...this far apart (doubling up to 0.5 s) before the reply goes back
_MAX_BACKOFF = 5.0


class ReplyConsumer:
    """Consumes the executor's reply channels on ``transport`` (one per definition it
    serves) and applies each reply."""

    def __init__(self, executor: SagaExecutor, transport: Transport, *, concurrency: int) -> None:
        self.executor = executor
        self.transport = transport
        self.concurrency = concurrency
        self._recent: OrderedDict[str, None] = OrderedDict()

    def channels(self) -> list[str]:
        """One reply channel per definition served (every version shares it)."""
        base = self.executor.reply_channel
        return sorted({reply_channel_for(base, name) for name, _ in self.executor.served})

    async def run(self, stop: asyncio.Event) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task[None]] = set()
        try:
            await asyncio.gather(*(self._consume(c, stop, slots, running) for c in self.channels()))
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _consume(
        self,
        channel: str,
        stop: asyncio.Event,
        slots: asyncio.Semaphore,
        running: set[asyncio.Task[None]],
    ) -> None:
        subscription: Subscription | None = None
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    if subscription is None:
                        subscription = await self.transport.subscribe(
                            channel, prefetch=self.concurrency
                        )
                    await slots.acquire()
                    try:
                        delivery = await subscription.receive(timeout=0.25)
                    except BaseException:
                        slots.release()
                        raise
                except TransportError as err:
                    log.warning("replies on %s: %s; again in %.1fs", channel, err, backoff)
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                backoff = 0.1
                if delivery is None:
                    slots.release()
                    continue
                task = asyncio.create_task(self._settle(delivery, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            if subscription is not None:
                with contextlib.suppress(SagaError):
                    await subscription.close()

    async def _settle(self, delivery: Delivery, slots: asyncio.Semaphore) -> None:
        try:
            await self._handle(delivery)
        except TransportError as err:
            # Unsettled, the reply is delivered again once the broker is back.
            log.warning("replies: %s", err)
        finally:
            slots.release()

    async def _handle(self, delivery: Delivery) -> None:
        message = delivery.message
        counts = self.executor.reply_counts
        if message.message_id in self._recent:
            counts["duplicate"] += 1
            self.executor.observer.reply_dropped(message, "a duplicate")
            await delivery.ack()
            return
        pause = _BUSY_PAUSE
        for _ in range(_BUSY_TRIES):
            try:
                outcome = await self.executor.apply_reply(message)
            except MessageDecodeError as err:
                await delivery.dead_letter(f"not a reply: {err.reason}")
                return
            except SignalRefused as refused:
                # Kept where an operator sees it: the sender meant something by it.
                counts["refused"] += 1
                await delivery.dead_letter(f"signal refused: {refused.reason}")
                return
            except SagaError as err:
                log.warning("reply %s: %s; delivering it again", message.message_id, err)
                await delivery.nack(1.0)
                return
            if outcome == "foreign":
                counts["foreign"] += 1
                await delivery.nack(0.1)
                return
            if outcome != "busy":
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        else:
            counts["busy"] += 1
            await delivery.nack(1.0)
            return
        self._recent[message.message_id] = None
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        await delivery.ack()


async def _wait(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)

"""A participant: a service that does saga steps it is asked to do over a transport.

Handlers are declared per channel: ``@participant.handles("inventory.reserve")`` for a
forward step, ``@participant.handles("inventory.release", compensates="inventory.reserve")``
for its undo. A handler gets a ``Command`` and returns the data to merge into the saga
(a mapping or None); it refuses by raising ``StepFailed`` (``retryable=False``: a
definite no that changed nothing; ``retryable=True``: ask again later). Any other
exception is a fault of the participant: the command is delivered again after
``retry_delay`` and, past the transport's ``max_deliveries``, parked in the dead letters.

Around every handler, in one inbox transaction locked on the step:

- a command seen before is answered with the first answer, never handled again (the
  reply carries the headers of the command it answers, so a retry's request id);
- a forward command after that step's compensation is refused (never applied after
  its undo), and a compensation of a step never done here is answered "compensated,
  nothing to undo" (and blocks the forward command, should it come late);
- a definite answer (success, permanent refusal, compensation) is recorded with the
  handler's writes; a retryable refusal is not, so the next attempt runs again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import attrs

from saga_fsm._codec import dumps
from saga_fsm._errors import StepFailed
from saga_fsm._snapshot import ErrorInfo
from saga_fsm.messaging import (
    Delivery,
    Message,
    Outcome,
    ReplyBody,
    Subscription,
    Transport,
    TransportError,
    check_channel,
    reply_from_payload,
    reply_to_payload,
)
from saga_fsm.observability._observer import NO_OBSERVER, Observer
from saga_fsm.participant._inbox import Inbox, InboxRecord, InboxTransaction

log = logging.getLogger("saga_fsm.participant")
_MIN_BACKOFF, _MAX_BACKOFF = 0.1, 5.0  # seconds between tries while the broker is away

HandlerResult: TypeAlias = Mapping[str, Any] | None
Handler: TypeAlias = Callable[["Command"], HandlerResult | Awaitable[HandlerResult]]


@attrs.frozen
class Command:
    """What a handler is asked to do. ``connection`` is the inbox transaction's database
    connection (PostgreSQL: a psycopg ``AsyncConnection``): writes through it commit
    with the inbox row, or not at all."""

    message: Message
    connection: Any = None

    @property
    def payload(self) -> dict[str, Any]:
        return self.message.payload

    @property
    def saga_id(self) -> str | None:
        return self.message.headers.saga_id

    @property
    def idempotency_key(self) -> str:
        key = self.message.headers.idempotency_key
        assert key is not None  # checked before a handler runs
        return key

    @property
    def correlation_id(self) -> str | None:
        return self.message.headers.correlation_id

    @property
    def reply_channel(self) -> str | None:
        return self.message.headers.reply_channel

    @property
    def attempt(self) -> int | None:
        return self.message.headers.attempt


@attrs.frozen
class Route:
    channel: str
    handler: Handler
    compensates: str | None = None  # the forward channel, for a compensation

    @property
    def step_channel(self) -> str:
        """Where the inbox files the step: its forward channel."""
        return self.compensates or self.channel


def _failed(err: StepFailed) -> ReplyBody:
    return ReplyBody(Outcome.FAILED, error=ErrorInfo.from_exception(err, retryable=err.retryable))


class Participant:
    def __init__(
        self, name: str, *, retry_delay: float = 1.0, observer: Observer = NO_OBSERVER
    ) -> None:
        self.name = name
        self.observer = observer  # a CONSUMER span per command, inbox duplicates
        self.retry_delay = retry_delay
        self.routes: dict[str, Route] = {}

    def handles(
        self, channel: str, *, compensates: str | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``channel``."""
        check_channel(channel)
        if compensates is not None:
            check_channel(compensates)

        def register(handler: Handler) -> Handler:
            if channel in self.routes:
                raise ValueError(f"participant {self.name}: {channel!r} already has a handler")
            self.routes[channel] = Route(channel, handler, compensates)
            return handler

        return register

    async def handle(self, delivery: Delivery, transport: Transport, inbox: Inbox) -> None:
        """Handle one delivered command and settle it."""
        message = delivery.message
        route = self.routes.get(message.channel)
        if route is None:
            await delivery.dead_letter(f"participant {self.name} has no handler for it")
            return
        if message.headers.idempotency_key is None or message.headers.reply_channel is None:
            await delivery.dead_letter("a command needs an idempotency key and a reply channel")
            return
        try:
            with self.observer.consuming(self.name, message):
                async with inbox.transaction(transport) as tx:
                    record = await tx.load(route.step_channel, message.headers.idempotency_key)
                    reply, after = await self._answer(route, message, record, tx)
                    if after != record:
                        await tx.save(after)
                    sent = await tx.enqueue(reply)
        except Exception:
            log.exception(
                "participant %s: %s %s failed; delivering it again in %ss",
                self.name,
                message.channel,
                message.message_id,
                self.retry_delay,
            )
            await delivery.nack(self.retry_delay)
            return
        if not sent:
            await transport.publish(reply)
        await delivery.ack()

    async def _answer(
        self, route: Route, message: Message, record: InboxRecord, tx: InboxTransaction
    ) -> tuple[Message, InboxRecord]:
        """The reply to ``message`` and the step's record after it."""
        if route.compensates is None:
            if record.forward_reply is not None:
                self.observer.duplicate(self.name, message)
                return message.reply(json.loads(record.forward_reply)), record
            if record.compensation_reply is not None:
                refusal = StepFailed("compensated before the command arrived", retryable=False)
                return message.reply(reply_to_payload(_failed(refusal))), record
        else:
            if record.compensation_reply is not None:
                self.observer.duplicate(self.name, message)
                return message.reply(json.loads(record.compensation_reply)), record
            if record.forward_reply is None or _refused(record.forward_reply):
                body = ReplyBody(Outcome.COMPENSATED, nothing_to_undo=True)
                return self._recorded(message, record, body)
        try:
            async with tx.savepoint():
                result = route.handler(Command(message, tx.connection))
                if inspect.isawaitable(result):
                    result = await result
        except StepFailed as err:
            if err.retryable:
                return message.reply(reply_to_payload(_failed(err))), record
            if route.compensates is not None:  # an operator may fix it and retry
                return message.reply(reply_to_payload(_failed(err))), record
            return self._recorded(message, record, _failed(err))
        if route.compensates is not None:
            return self._recorded(message, record, ReplyBody(Outcome.COMPENSATED))
        return self._recorded(
            message,
            record,
            ReplyBody(Outcome.SUCCEEDED, data=None if result is None else dict(result)),
        )

    @staticmethod
    def _recorded(
        message: Message, record: InboxRecord, body: ReplyBody
    ) -> tuple[Message, InboxRecord]:
        payload = reply_to_payload(body)
        field = "compensation_reply" if body.outcome is Outcome.COMPENSATED else "forward_reply"
        return message.reply(payload), attrs.evolve(record, **{field: dumps(payload)})

    async def serve(
        self,
        transport: Transport,
        inbox: Inbox,
        *,
        stop: asyncio.Event | None = None,
        concurrency: int = 1,
    ) -> None:
        """Consume every handled channel until ``stop`` is set (or forever), handling up
        to ``concurrency`` commands of each channel at once (the inbox serialises the
        commands of one step). While the broker or database is unreachable it logs, backs
        off (up to 5 s) and tries again; it never exits on an outage."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        stop = stop or asyncio.Event()
        subscriptions = [
            await transport.subscribe(channel, prefetch=concurrency) for channel in self.routes
        ]
        log.info(
            "participant %s: consuming %s on %s",
            self.name,
            ", ".join(self.routes),
            transport.name,
        )

        async def consume(subscription: Subscription) -> None:
            slots = asyncio.Semaphore(concurrency)
            running: set[asyncio.Task[None]] = set()

            async def handle(delivery: Delivery) -> None:
                try:
                    await self.handle(delivery, transport, inbox)
                except TransportError as err:
                    # Unsettled, the command comes back once the broker is reachable.
                    log.warning("participant %s: %s", self.name, err)
                finally:
                    slots.release()

            backoff = _MIN_BACKOFF
            while not stop.is_set():
                await slots.acquire()
                try:
                    delivery = await subscription.receive(timeout=0.5)
                except TransportError as err:
                    slots.release()
                    log.warning("participant %s: %s; again in %.1fs", self.name, err, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                backoff = _MIN_BACKOFF
                if delivery is None:
                    slots.release()
                    continue
                task = asyncio.create_task(handle(delivery))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)

        try:
            await asyncio.gather(*(consume(s) for s in subscriptions))
        finally:
            for subscription in subscriptions:
                await subscription.close()


def _refused(reply_json: str) -> bool:
    return reply_from_payload(json.loads(reply_json)).outcome is Outcome.FAILED

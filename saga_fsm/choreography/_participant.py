"""Choreography participants: event handlers (``@participant.on("OrderCreated")``) that
do their local work and publish their next events, behind saga_fsm.participant's inbox.

Per delivered event, in one inbox transaction locked on (channel, event id):

- an event handled before is not handled again: the events it led to are published
  again, with the same ids (the first publication may have been lost in a crash);
- otherwise the handler runs; the events it publishes are recorded with the inbox row
  and, when the inbox's database is the transport's (PostgreSQL), enqueued in that same
  transaction: the handler's writes, the inbox row and the next events commit together.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import attrs

from saga_fsm._codec import dumps
from saga_fsm.choreography._definition import Choreography
from saga_fsm.choreography._events import channel, derived_id, event_id, event_messages, event_name
from saga_fsm.messaging import Delivery, Message, Transport, TransportError
from saga_fsm.messaging._envelope import message_from_dict, message_to_dict
from saga_fsm.participant import Inbox

log = logging.getLogger("saga_fsm.choreography")


@attrs.define(eq=False)
class EventContext:
    """What an event handler gets: the event, the inbox transaction's connection (writes
    through it commit with the inbox row), and ``publish`` for its next events."""

    name: str
    payload: dict[str, Any]
    event_id: str
    connection: Any
    published: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        """Publish event ``name`` once this handler's transaction commits."""
        self.published.append((name, dict(payload)))


EventHandler: TypeAlias = Callable[[EventContext], Awaitable[None] | None]


class EventParticipant:
    """A participant of one choreography, named as in its ``events`` table."""

    def __init__(self, choreography: Choreography, name: str, *, retry_delay: float = 1.0) -> None:
        if name not in choreography.participants:
            raise ValueError(f"{name!r} is not a participant of {choreography.name!r}")
        self.choreography = choreography
        self.name = name
        self.retry_delay = retry_delay
        self.handlers: dict[str, EventHandler] = {}

    @property
    def channel(self) -> str:
        return channel(self.choreography, self.name)

    def on(self, event: str) -> Callable[[EventHandler], EventHandler]:
        """Register the decorated function as this participant's handler of ``event``."""
        if event not in self.choreography.consumed_by(self.name):
            raise ValueError(
                f"{self.name!r} does not consume {event!r} in {self.choreography.name!r}"
                " (list it in the event's consumers)"
            )

        def register(handler: EventHandler) -> EventHandler:
            if event in self.handlers:
                raise ValueError(f"participant {self.name}: {event!r} already has a handler")
            self.handlers[event] = handler
            return handler

        return register

    def messages(self, incoming: str, published: list[tuple[str, dict[str, Any]]]) -> list[Message]:
        """The copies of the events a handler published, with ids fixed by the event it
        handled: a handler run again after a crash publishes the very same messages."""
        return [
            message
            for i, (name, payload) in enumerate(published)
            for message in event_messages(
                self.choreography, name, payload, event_id=derived_id(incoming, self.name, str(i))
            )
        ]

    async def handle(self, delivery: Delivery, transport: Transport, inbox: Inbox) -> None:
        message = delivery.message
        name = event_name(message)
        handler = self.handlers.get(name or "")
        if name is None or handler is None:
            await delivery.dead_letter(f"participant {self.name} has no handler for event {name!r}")
            return
        incoming = event_id(message)
        try:
            async with inbox.transaction(transport) as tx:
                record = await tx.load(self.channel, incoming)
                if record.forward_reply is not None:
                    outgoing = [message_from_dict(m) for m in json.loads(record.forward_reply)]
                else:
                    context = EventContext(name, message.payload, incoming, tx.connection)
                    async with tx.savepoint():
                        result = handler(context)
                        if inspect.isawaitable(result):
                            await result
                    outgoing = self.messages(incoming, context.published)
                    encoded = dumps([message_to_dict(m) for m in outgoing])
                    await tx.save(attrs.evolve(record, forward_reply=encoded))
                unsent = [m for m in outgoing if not await tx.enqueue(m)]
        except Exception:
            log.exception(
                "participant %s: event %s %s failed; delivering it again in %ss",
                self.name,
                name,
                incoming,
                self.retry_delay,
            )
            await delivery.nack(self.retry_delay)
            return
        for outgoing_message in unsent:
            await transport.publish(outgoing_message)
        await delivery.ack()

    async def serve(
        self, transport: Transport, inbox: Inbox, *, stop: asyncio.Event | None = None
    ) -> None:
        """Handle this participant's events until ``stop`` is set; an outage of the
        broker or database is logged and waited out, never fatal."""
        stop = stop or asyncio.Event()
        subscription = await transport.subscribe(self.channel)
        try:
            while not stop.is_set():
                try:
                    delivery = await subscription.receive(timeout=0.5)
                    if delivery is not None:
                        await self.handle(delivery, transport, inbox)
                except TransportError as err:
                    log.warning("participant %s: %s; again in 1s", self.name, err)
                    await asyncio.sleep(1.0)
        finally:
            await subscription.close()


async def publish_event(
    transport: Transport,
    choreography: Choreography,
    name: str,
    payload: dict[str, Any],
    *,
    event_id: str,
) -> None:
    """Publish one event (typically the start event) from outside any handler;
    ``event_id`` makes a retry of the same request the same event."""
    for message in event_messages(choreography, name, payload, event_id=event_id):
        await transport.publish(message)

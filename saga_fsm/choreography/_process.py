"""Running a choreography's parts as processes: one participant, or the tracker, each on
a transport URL (``sqlite:///...``, ``postgresql://...``, ``amqp://...``, ``nats://...``).

A participant's inbox is the PostgreSQL database ``inbox_url`` names (the handler's
writes, the inbox row and, on the PostgreSQL transport of that database, its next events
commit together); without one it is in memory, and a restarted process handles an event
it had handled again, publishing the very same next events (same ids), which the tracker
and the next participants' inboxes recognise.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from saga_fsm.choreography._definition import Choreography
from saga_fsm.choreography._participant import EventParticipant
from saga_fsm.choreography._tracker import Tracker
from saga_fsm.messaging import connect_transport
from saga_fsm.participant import Inbox, MemoryInbox, PostgresInbox
from saga_fsm.stores import open_store

MAX_DELIVERIES = 1000
"""An event waits for the ones before it by being delivered again: allow many."""


async def open_inbox(url: str | None) -> Inbox:
    if url is None:
        return MemoryInbox()
    return await PostgresInbox.open(url)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    return stop


async def serve_participant(
    participant: EventParticipant,
    *,
    transport_url: str,
    inbox_url: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``participant`` until ``stop`` is set (or SIGTERM/SIGINT)."""
    stop = stop or _stop_on_signals()
    transport = await connect_transport(transport_url, max_deliveries=MAX_DELIVERIES)
    inbox = await open_inbox(inbox_url)
    try:
        await participant.serve(transport, inbox, stop=stop)
    finally:
        await inbox.close()
        await transport.close()


async def serve_tracker(
    choreography: Choreography,
    *,
    store_url: str,
    transport_url: str,
    stop: asyncio.Event | None = None,
    check_every: float = 1.0,
    publish_compensations: bool = False,
    ref: str | None = None,
) -> None:
    """Follow ``choreography`` from the transport's events into the store until ``stop``
    is set (or SIGTERM/SIGINT)."""
    stop = stop or _stop_on_signals()
    transport = await connect_transport(transport_url, max_deliveries=MAX_DELIVERIES)
    try:
        async with open_store(store_url) as store:
            tracker = Tracker(
                choreography,
                store,
                transport,
                publish_compensations=publish_compensations,
                ref=ref,
            )
            await tracker.serve(stop=stop, check_every=check_every)
    finally:
        await transport.close()

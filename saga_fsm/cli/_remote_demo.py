"""``demo --remote``: the order saga with inventory, payment and shipping as a remote
participant, its commands and replies through a broker, all in this one process.

With no broker the saga store's own database carries the messages (SQLite or
PostgreSQL; memory:// in memory); ``--broker amqp://...`` or ``nats://...`` uses a real
one. A worker (reply consumer and outbox relay included) and the participant run side
by side until every saga finished.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from saga_fsm._client import SagaClient
from saga_fsm._executor import SagaExecutor
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm._worker import Worker
from saga_fsm.cli._render import console, state_text
from saga_fsm.examples import order_remote, order_services
from saga_fsm.messaging import open_transport
from saga_fsm.observability._observer import Observer
from saga_fsm.participant import MemoryInbox
from saga_fsm.stores import open_store
from saga_fsm.stores.url import redact_url, url_scheme


class _Finished(Observer):
    """Notes each saga's final state as the executor writes it: no polling the store."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.changed = asyncio.Event()

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        if after.is_terminal:
            self.states[after.saga_id] = after.state
            self.changed.set()


def order(seed: int, n: int) -> dict[str, Any]:
    """Every 7th order asks for more than is in stock, every 5th card is declined."""
    return {
        "order_id": f"order-{seed}-{n}",
        "amount": 10 + n % 90,
        "quantity": order_services.STOCK + 4 if n % 7 == 6 else 1 + n % 3,
        "card": "4000-0000-0000-0000" if n % 5 == 4 else "4111-1111-1111-1111",
    }


def embedded_broker(store_url: str) -> str:
    """The transport of the saga store's own database."""
    return "memory://" if url_scheme(store_url) == "memory" else store_url


async def run_remote_demo(
    store_url: str, broker: str | None, sagas: int, seed: int, concurrency: int
) -> tuple[Counter[str], Counter[str], int]:
    """Run the sagas to the end: their final states, the reply counts, and how many
    effects a participant applied more than once (0)."""
    definition = order_remote.definition
    order_services.tables.clear()
    stop = asyncio.Event()
    async with (
        open_store(store_url) as store,
        open_transport(broker or embedded_broker(store_url)) as transport,
    ):
        finished = _Finished()
        executor = SagaExecutor(store, [definition], observer=finished)
        worker = Worker(executor, concurrency=concurrency, poll_interval=0.05, transport=transport)
        serving = [
            asyncio.create_task(worker.run(stop, grace=5.0)),
            asyncio.create_task(
                order_services.participant.serve(
                    transport, MemoryInbox(), stop=stop, concurrency=concurrency
                )
            ),
        ]
        try:
            client = SagaClient(store, executor.definitions)
            started = await client.start_many(
                definition,
                [order(seed, n) for n in range(sagas)],
                definition_ref="saga_fsm.examples.order_remote:definition",
            )
            waiting = {s.saga_id for s in started}
            while not waiting <= finished.states.keys():
                finished.changed.clear()
                await finished.changed.wait()
            states = Counter(finished.states[saga_id] for saga_id in waiting)
        finally:
            stop.set()
            await asyncio.gather(*serving)
    twice = sum(1 for count in order_services.tables.applied.values() if count > 1)
    return states, executor.reply_counts, twice


def remote_demo(store_url: str, broker: str | None, sagas: int, seed: int, concurrency: int) -> int:
    """Print what happened; the number of sagas that did not end completed or compensated."""
    console.print(f"store: {redact_url(store_url)}")
    console.print(f"broker: {redact_url(broker) if broker else 'the store (embedded)'}")
    started = time.perf_counter()
    states, replies, twice = asyncio.run(
        run_remote_demo(store_url, broker, sagas, seed, concurrency)
    )
    elapsed = time.perf_counter() - started
    table = Table("final state", "sagas", title="remote order saga")
    for state in sorted(states):
        table.add_row(state_text(state), str(states[state]))
    console.print(table)
    console.print(
        f"replies: {replies['applied']} applied, {replies['stale']} stale,"
        f" {replies['duplicate']} duplicate; effects applied twice: {twice}"
    )
    console.print(f"{sagas} sagas in {elapsed:.2f}s ({sagas / elapsed:.0f} sagas/s)")
    if url_scheme(store_url) != "memory":
        # Plain text, never wrapped: these lines are meant to be pasted.
        ref = "saga_fsm.examples.order_remote:definition"
        click.echo(
            "Try next:\n"
            "  saga-fsm ls --definition order_fulfillment_remote\n"
            f"  saga-fsm diagram {ref} -o remote.png\n"
            f"  saga-fsm check {ref} --participant saga_fsm.examples.order_services:participant"
        )
    return sum(n for state, n in states.items() if state not in ("completed", "compensated"))

"""``demo --choreography``: the order choreography as separate participant processes,
followed by a tracker into the saga store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter

from rich.table import Table

from saga_fsm._snapshot import Snapshot
from saga_fsm.choreography import publish_event
from saga_fsm.choreography._process import MAX_DELIVERIES, serve_tracker
from saga_fsm.cli._app import UsageProblem
from saga_fsm.cli._render import console, state_text
from saga_fsm.examples.order_choreography import choreography
from saga_fsm.messaging import connect_transport
from saga_fsm.stores import open_store
from saga_fsm.stores.url import redact_url

REF = "saga_fsm.examples.order_choreography:choreography"
SERVICES = ("orders", "inventory", "payment", "shipping")


def default_transport(store_url: str, broker: str | None) -> str:
    """The broker, else the store's own database (SQLite or PostgreSQL: no server)."""
    if broker is not None:
        return broker
    if store_url.startswith(("sqlite:", "postgresql:", "postgres:")):
        return store_url
    raise UsageProblem(
        f"the store {store_url.split(':')[0]}: cannot carry events: give --broker URL"
    )


def start_services(
    transport_url: str, fail_rate: float, seed: int
) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "SAGA_FSM_TRANSPORT": transport_url,
        "SAGA_FSM_FAIL_RATE": str(fail_rate),
        "SAGA_FSM_SEED": str(seed),
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", "saga_fsm.examples.order_choreography", service], env=env
        )
        for service in SERVICES
    ]


async def run_choreography(
    store_url: str, transport_url: str, orders: int, seed: int, timeout: float
) -> list[Snapshot]:
    """Publish ``orders`` OrderCreated events and follow them until each is finished."""
    stop = asyncio.Event()
    tracker = asyncio.create_task(
        serve_tracker(
            choreography, store_url=store_url, transport_url=transport_url, stop=stop, ref=REF
        )
    )
    ids = [f"{choreography.name}-order-{seed}-{n}" for n in range(orders)]
    transport = await connect_transport(transport_url, max_deliveries=MAX_DELIVERIES)
    try:
        for n in range(orders):
            order_id = f"order-{seed}-{n}"
            payload = {"order_id": order_id, "amount": 10 + n % 90}
            await publish_event(transport, choreography, "OrderCreated", payload, event_id=order_id)
    finally:
        await transport.close()
    deadline = time.monotonic() + timeout
    try:
        async with open_store(store_url) as store:
            while True:
                found = [
                    s
                    for s in await store.list(definition=choreography.name)
                    if isinstance(s, Snapshot)
                ]
                mine = [s for s in found if s.saga_id in set(ids)]
                if len(mine) == orders and all(s.is_terminal for s in mine):
                    return mine
                if time.monotonic() > deadline:
                    return mine
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await tracker


def choreography_demo(
    store_url: str, broker: str | None, orders: int, fail_rate: float, seed: int
) -> None:
    transport_url = default_transport(store_url, broker)
    console.print(f"store: {redact_url(store_url)}\nevents: {redact_url(transport_url)}")
    services = start_services(transport_url, fail_rate, seed)
    started = time.perf_counter()
    try:
        finals = asyncio.run(run_choreography(store_url, transport_url, orders, seed, timeout=120))
    finally:
        for process in services:
            process.terminate()
        for process in services:
            process.wait(timeout=30)
    elapsed = time.perf_counter() - started
    by_state = Counter(s.state for s in finals)
    table = Table("final state", "orders", title=choreography.name)
    for state in sorted(by_state):
        table.add_row(state_text(state), str(by_state[state]))
    table.add_row("[bold]total[/]", str(len(finals)))
    console.print(table)
    console.print(f"{len(finals)} of {orders} orders followed in {elapsed:.2f}s")
    if len(finals) != orders or not all(s.is_terminal for s in finals):
        raise SystemExit(1)

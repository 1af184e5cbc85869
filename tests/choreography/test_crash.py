"""The order choreography's services as real processes on PostgreSQL (store and inboxes),
each killed -9 at random moments and started again, on every transport that crosses
processes: no event is lost, every order is followed to its end by the tracker."""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from saga_fsm._errors import StoreError
from saga_fsm._snapshot import Snapshot
from saga_fsm.choreography import TRACKER, Tracker, publish_event
from saga_fsm.choreography._process import MAX_DELIVERIES
from saga_fsm.examples.order_choreography import choreography
from saga_fsm.messaging import connect_transport
from saga_fsm.stores import open_store
from tests.messaging._brokers import Broker, postgres_url

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("orders", "inventory", "payment", "shipping")
ORDERS = 30


def start(service: str, broker: Broker, inbox_url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.choreography._service",
            service,
            broker.url,
            inbox_url,
            broker.prefix,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    if not ready or process.stdout.readline().strip() != "ready":
        process.kill()
        process.wait(timeout=30)
        pytest.fail(f"service {service} did not start within 60s")
    return process


def kill9(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


async def follow(broker: Broker, store_url: str, inbox_url: str) -> list[Snapshot]:
    table = attrs.evolve(choreography, name=broker.prefix)
    for reader in (TRACKER, *SERVICES):
        broker.channel(reader)  # deleted after the test
    transport = await connect_transport(broker.url, max_deliveries=MAX_DELIVERIES, ack_wait=2.0)
    rng = random.Random(7)
    running = {service: start(service, broker, inbox_url) for service in SERVICES}
    stop = asyncio.Event()
    try:
        async with open_store(store_url) as store:
            tracker = Tracker(table, store, transport, retry_delay=0.05)
            following = asyncio.create_task(tracker.serve(stop=stop, check_every=0.5))
            for n in range(ORDERS):
                await publish_event(
                    transport, table, "OrderCreated", {"order_id": f"o{n}"}, event_id=f"o{n}"
                )
            for _ in range(8):  # kill -9 a random service at a random moment, start it again
                await asyncio.sleep(rng.uniform(0.05, 0.5))
                victim = rng.choice(SERVICES)
                kill9(running[victim])
                running[victim] = start(victim, broker, inbox_url)
            deadline = time.monotonic() + 90
            while True:
                try:
                    listed = await store.list(definition=table.name)
                except StoreError:  # a test elsewhere restarts the server: ask again
                    listed = []
                found = [s for s in listed if isinstance(s, Snapshot)]
                if len(found) == ORDERS and all(s.is_terminal for s in found):
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            stop.set()
            await following
            assert tracker.counts["anomalies"] == 0, tracker.counts
            return found
    finally:
        for process in running.values():
            kill9(process)
        await transport.close()


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["postgresql", "amqp", "nats"], indirect=True)
def test_services_killed_at_random_moments_every_order_is_followed_to_its_end(
    broker: Broker, postgres_dsn: str
) -> None:
    url = postgres_url(postgres_dsn)
    # A hang anywhere (a server restarted under the test) fails the test, never the suite.
    found = asyncio.run(asyncio.wait_for(follow(broker, url, url), timeout=300))
    assert sorted(s.correlation_id or "" for s in found) == sorted(f"o{n}" for n in range(ORDERS))
    states = {s.saga_id: s.state for s in found}
    assert set(states.values()) <= {"completed", "compensated"}, states
    for snapshot in found:
        path = snapshot.data["path"]
        assert path[0] == "OrderCreated" and snapshot.data["stuck"] is None
        assert len(path) == len(set(path)) or "InventoryReleased" not in path

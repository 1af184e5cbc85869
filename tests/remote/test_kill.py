"""kill -9 of orchestrator workers and outbox relays, at random moments, with the saga
store on PostgreSQL and the commands on its embedded transport, on RabbitMQ and on NATS
JetStream: every saga still ends completed or
compensated, and the participant never applies an effect twice, never undoes a step it
did not do, never applies a step after its undo."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga_fsm._client import SagaClient
from saga_fsm._registry import registry
from saga_fsm.examples import order_services
from saga_fsm.examples.order_remote import remote_definition
from saga_fsm.messaging import open_transport
from saga_fsm.participant import MemoryInbox
from saga_fsm.stores import PostgresStore
from tests.messaging import _brokers
from tests.messaging._brokers import Broker, postgres_url

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20  # of each kind
SAGAS_PER_ROUND = 3
FORWARD = {"inventory.release": "inventory.reserve", "payment.refund": "payment.charge"}


def spawn(args: list[str], prefix: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"SAGA_FSM_TEST_PREFIX": prefix}
    return subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def order(n: int) -> dict[str, Any]:
    return {
        "order_id": f"k-{n}",
        "quantity": order_services.STOCK + 1 if n % 7 == 6 else 1,
        "card": "4000-0000" if n % 5 == 4 else "4111",
        "amount": n,
    }


CHANNELS = ("inventory.reserve", "inventory.release", "payment.charge", "payment.refund")
CHANNELS += ("shipping.ship", "replies.order_fulfillment_remote")


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("amqp", marks=pytest.mark.broker),
        pytest.param("nats", marks=pytest.mark.broker),
    ]
)
def broker(request: pytest.FixtureRequest, postgres_dsn: str) -> Iterator[Broker]:
    """Where the commands travel; the saga store is PostgreSQL in every case."""
    if request.param == "postgresql":
        url = postgres_url(postgres_dsn)
    elif request.param == "amqp":
        url = _brokers.amqp_url()
        _brokers.require(url, "RabbitMQ", 5672)
    else:
        url = _brokers.nats_url()
        _brokers.require(url, "NATS", 4222)
    broker = Broker(request.param, url, prefix=f"k{secrets.token_hex(4)}")
    for name in CHANNELS:
        broker.channel(name)  # deleted from a shared broker afterwards
    try:
        yield broker
    finally:
        asyncio.run(broker.clean())


def test_workers_and_relays_killed_at_random_lose_nothing(
    postgres_dsn: str, broker: Broker
) -> None:
    url = postgres_url(postgres_dsn)
    prefix = broker.prefix
    definition = remote_definition(prefix, timeout=5.0)
    worker_args = [
        "worker",
        "tests.remote._kill_saga:definition",
        "--store",
        url,
        "--broker",
        broker.url,
        "--no-relay",
        "--lease-seconds",
        "1",
        "--poll-interval",
        "0.05",
        "--grace",
        "0",
        "--reply-channel",
        f"{prefix}.replies",
        "--ack-wait",
        "1",
    ]
    relay_args = ["relay", "--store", url, "--broker", broker.url, "--lease-seconds", "1"]
    order_services.tables.clear()
    rng = random.Random(7)

    async def go() -> None:
        store = await PostgresStore.open(postgres_dsn)
        workers = [spawn(worker_args, prefix) for _ in range(3)]
        relays = [spawn(relay_args, prefix) for _ in range(2)]
        stop = asyncio.Event()
        try:
            async with open_transport(broker.url, ack_wait=5.0) as transport:
                participant = order_services.make_participant(prefix)
                serving = asyncio.create_task(
                    participant.serve(transport, MemoryInbox(), stop=stop, concurrency=4)
                )
                client = SagaClient(store, registry([definition]))
                ids: list[str] = []
                kills = {"worker": 0, "relay": 0}
                n = 0
                while min(kills.values()) < KILLS:
                    for _ in range(SAGAS_PER_ROUND):
                        ids.append(
                            (
                                await client.start(
                                    definition,
                                    order(n),
                                    definition_ref="tests.remote._kill_saga:definition",
                                )
                            ).saga_id
                        )
                        n += 1
                    await asyncio.sleep(rng.uniform(0.2, 0.7))
                    kind = "worker" if kills["worker"] <= kills["relay"] else "relay"
                    group, args = (
                        (workers, worker_args) if kind == "worker" else (relays, relay_args)
                    )
                    victim = group.pop(rng.randrange(len(group)))
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    kills[kind] += 1
                    group.append(spawn(args, prefix))
                # The survivors finish the work.
                loop = asyncio.get_running_loop()
                give_up = loop.time() + 120
                while True:
                    finals = [await store.load(i) for i in ids]
                    if all(f.is_terminal for f in finals) or loop.time() > give_up:
                        break
                    await asyncio.sleep(0.2)
                stop.set()
                await serving
        finally:
            for process in workers + relays:
                process.send_signal(signal.SIGKILL)
                process.wait()
            await store.close()
        states = sorted({f.state for f in finals})
        assert set(states) <= {"completed", "compensated"}, [
            (f.saga_id, f.state) for f in finals if f.state not in ("completed", "compensated")
        ]
        assert "completed" in states and "compensated" in states
        applied = order_services.tables.applied
        assert set(applied.values()) == {1}, "an effect applied twice"
        sequence = order_services.tables.order
        for position, effect in enumerate(sequence):
            operation, key = effect.split(":", 1)
            if operation in FORWARD:
                forward = f"{FORWARD[operation]}:{key}"
                # Never an undo without its step, never the step after its undo.
                assert forward in sequence[:position], effect

    asyncio.run(go())

"""A broker restarted under a running fleet: orchestrator workers, a relay and the
order services as participant processes, with the commands on RabbitMQ or NATS and the
sagas in PostgreSQL. Every process rides it out (back-off, reconnect), every saga
still ends completed or compensated, and no effect lands twice or after its undo."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from saga_fsm._client import SagaClient
from saga_fsm._registry import registry
from saga_fsm.examples.order_remote import remote_definition
from saga_fsm.stores import PostgresStore
from tests.messaging._brokers import Broker, postgres_url
from tests.participant import _fleet
from tests.participant.test_services_faults import restart_nats, restart_rabbitmq
from tests.remote.test_kill import ROOT, broker

__all__ = ["broker"]

SAGAS = 24
REF = "tests.remote._kill_saga:definition"
# Three attempts of 15 s outlast a short outage; a longer one may use them up.
TIMEOUT = 15.0


def spawn(args: list[str], prefix: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"SAGA_FSM_TEST_PREFIX": prefix, "SAGA_FSM_TEST_TIMEOUT": str(TIMEOUT)}
    return subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.restarts_server
@pytest.mark.parametrize("broker", ["amqp", "nats"], indirect=True)
def test_workers_relay_and_participants_ride_out_a_broker_restart(
    broker: Broker, postgres_dsn: str, tmp_path: Path
) -> None:
    url = postgres_url(postgres_dsn)
    prefix = broker.prefix
    definition = remote_definition(prefix, timeout=TIMEOUT)
    worker_args = ["worker", REF, "--store", url, "--broker", broker.url, "--no-relay"]
    worker_args += ["--lease-seconds", "2", "--poll-interval", "0.05", "--ack-wait", "2"]
    worker_args += ["--reply-channel", f"{prefix}.replies"]
    processes = [spawn(worker_args, prefix) for _ in range(2)]
    processes.append(spawn(["relay", "--store", url, "--broker", broker.url], prefix))
    fleet = _fleet.Fleet(broker.url, url, _fleet.services_module(tmp_path, prefix), tmp_path)
    restart = restart_rabbitmq if broker.kind == "amqp" else restart_nats

    async def go() -> list[tuple[str, str]]:
        store = await PostgresStore.open(postgres_dsn)
        try:
            client = SagaClient(store, registry([definition]))
            ids = []
            for n in range(SAGAS):
                if n == SAGAS // 3:
                    threading.Thread(target=restart, args=(2.0,)).start()
                amount = 5000 if n % 4 == 0 else 20  # over the payment limit: compensated
                order = {"order_id": f"{prefix}-{n}", "amount": amount, "quantity": 1}
                saga = await client.start(definition, order, definition_ref=REF)
                ids.append(saga.saga_id)
                await asyncio.sleep(0.3)
            give_up = time.monotonic() + 150
            while True:
                finals = [await store.load(saga_id) for saga_id in ids]
                if all(f.is_terminal for f in finals) or time.monotonic() > give_up:
                    return [(f.saga_id, f.state) for f in finals]
                await asyncio.sleep(0.2)
        finally:
            await store.close()

    try:
        fleet.start_all()
        ends = asyncio.run(go())
        alive = [p.poll() for p in processes]
        assert fleet.died() == []
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in processes]
        fleet.stop()
    assert alive == [None] * len(processes), "a worker or relay died instead of reconnecting"
    assert codes == [0] * len(codes)
    # A step whose attempts all fell in the outage may have used up its retries: its
    # saga compensates, or parks at the pivot (which may have acted) for an operator.
    # Either way nothing is lost, nothing lands twice, and what landed is accounted for.
    assert {state for _, state in ends} <= {"completed", "compensated", "failed"}, ends
    assert all(ends[n][1] != "completed" for n in range(0, SAGAS, 4)), ends
    found, undone_first = _fleet.effects(url)
    assert undone_first == []
    assert set(found.values()) == {1}, [key for key, n in found.items() if n > 1]
    kinds = {(key, kind) for _table, key, kind in found}
    for saga_id, state in ends:
        done = {kind for key, kind in kinds if key.startswith(f"{saga_id}:")}
        if state == "completed":
            assert done == {"reserve", "charge", "ship"}, (saga_id, done)
        elif state == "compensated":  # whatever landed was undone, the pivot never
            assert "ship" not in done, (saga_id, done)
            assert ("reserve" in done) <= ("release" in done), (saga_id, done)
            assert ("charge" in done) <= ("refund" in done), (saga_id, done)
        else:  # parked at the pivot, nothing undone
            assert not done & {"release", "refund"}, (saga_id, done)
            assert {"reserve", "charge"} <= done, (saga_id, done)

"""The order services as separate ``saga-fsm participant`` processes on PostgreSQL (inboxes
and tables), killed -9 at random moments and replaced, then a broker restarted under
them: every command is answered, none is handled twice, no forward effect lands after
its undo, and answers to one step never differ."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.messaging._brokers import Broker, postgres_url
from tests.participant import _fleet

KILLS = 20
ORDERS = 24


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> _fleet.Fleet:
    """On SQLite, the broker's file holds the inboxes and tables too (the reply commits
    with them); elsewhere they are in the test's PostgreSQL schema."""
    module = _fleet.services_module(tmp_path, broker.prefix)
    if broker.kind == "sqlite":
        inbox = broker.url
    else:
        inbox = postgres_url(request.getfixturevalue("postgres_dsn"))
    return _fleet.Fleet(broker.url, inbox, module, tmp_path)


def check_effects(broker: Broker, fleet: _fleet.Fleet) -> None:
    found, undone_first = _fleet.effects(fleet.inbox_url)
    assert undone_first == []
    assert found == _fleet.expected_effects(broker.prefix, ORDERS)


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["sqlite", "postgresql", "amqp", "nats"], indirect=True)
def test_participants_killed_at_random_moments(broker: Broker, fleet: _fleet.Fleet) -> None:
    rng = random.Random(20)
    fleet.start_all(replicas=2)

    async def kill() -> None:
        while fleet.kills < KILLS:
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            await asyncio.to_thread(fleet.kill_one, rng)

    try:
        ends = asyncio.run(_fleet.run_orders(broker, ORDERS, spread=0.4, during=kill))
        assert fleet.died() == []
    finally:
        codes = fleet.stop()
    assert codes == [0] * len(codes)  # SIGTERM: a clean exit
    assert fleet.kills >= KILLS
    assert ends.count("compensated") == ORDERS // 4
    check_effects(broker, fleet)


def wait_for_port(port: int, up: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still {'down' if up else 'up'} after {timeout}s")


def restart_rabbitmq(outage: float) -> None:
    def ctl(command: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", command], capture_output=True, timeout=120, check=True)

    ctl("stop_app")
    try:
        wait_for_port(5672, up=False)
        time.sleep(outage)
    finally:  # never leave the shared broker stopped
        ctl("start_app")
        wait_for_port(5672, up=True)


def nats_server() -> tuple[int, list[str]]:
    """The pid and command line of the nats-server listening on 4222."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        args = [a.decode() for a in argv]
        if args and Path(args[0]).name == "nats-server" and "4222" in args:
            return int(entry.name), args
    raise AssertionError("no nats-server listening on 4222 found")


def restart_nats(outage: float) -> None:
    pid, args = nats_server()
    os.kill(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(outage)
    finally:  # the same server again: same arguments, same store directory
        subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(4222, up=True)


@pytest.mark.slow
@pytest.mark.restarts_server
@pytest.mark.parametrize("broker", ["amqp", "nats"], indirect=True)
def test_participants_ride_out_a_broker_restart(broker: Broker, fleet: _fleet.Fleet) -> None:
    if broker.kind == "amqp" and shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to restart RabbitMQ")
    restart = restart_rabbitmq if broker.kind == "amqp" else restart_nats
    fleet.start_all()

    async def restart_mid_run() -> None:
        await asyncio.sleep(ORDERS * 0.4 / 3)
        await asyncio.to_thread(restart, 2.0)

    try:
        ends = asyncio.run(_fleet.run_orders(broker, ORDERS, spread=0.4, during=restart_mid_run))
        assert fleet.died() == []
    finally:
        codes = fleet.stop()
    assert codes == [0] * len(codes)
    assert ends.count("compensated") == ORDERS // 4
    check_effects(broker, fleet)

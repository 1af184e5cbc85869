"""A participant as a real process, killed -9 while it handles commands: what it wrote
without committing is gone, the command comes back, and the inbox makes sure each
step's business write lands exactly once, on every transport that crosses processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from saga_fsm.messaging import Headers, Message, MessageKind, Outcome, reply_from_payload
from tests.messaging._brokers import Broker, postgres_url

ROOT = Path(__file__).resolve().parents[2]
CROSS_PROCESS = ["sqlite", pytest.param("postgresql"), "amqp", "nats"]


def start_service(broker: Broker, dsn: str, marker: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.participant._service", broker.url, dsn, broker.prefix]
    process = subprocess.Popen(
        [*args, *([str(marker)] if marker else [])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        pytest.fail(f"participant did not start: {line}{process.communicate()[1][-3000:]}")
    return process


def kill9(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def reserve(broker: Broker, key: str) -> Message:
    return Message(
        broker.channel("reserve"),
        MessageKind.COMMAND,
        {"sku": "A-1"},
        Headers(saga_id=key, idempotency_key=key, reply_channel=broker.channel("replies")),
    )


def reservations(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, count(*) FROM reservations GROUP BY 1"
        ).fetchall()
    return dict(rows)


async def collect_replies(broker: Broker, count: int, timeout: float) -> dict[str, Any]:
    """Replies by saga id until ``count`` distinct sagas answered (or ``timeout``)."""
    transport = await broker.connect()
    answers: dict[str, Any] = {}
    try:
        subscription = await transport.subscribe(broker.channel("replies"))
        deadline = time.monotonic() + timeout
        while len(answers) < count and time.monotonic() < deadline:
            delivery = await subscription.receive(timeout=1.0)
            if delivery is not None:
                answers[str(delivery.message.headers.saga_id)] = reply_from_payload(
                    delivery.message.payload
                )
                await delivery.ack()
    finally:
        await transport.close()
    return answers


async def publish(broker: Broker, *messages: Message) -> None:
    transport = await broker.connect()
    try:
        for message in messages:
            await transport.publish(message)
    finally:
        await transport.close()


@pytest.fixture
def dsn(postgres_dsn: str) -> str:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE reservations (idempotency_key text NOT NULL, sku text)")
    return postgres_url(postgres_dsn)


@pytest.mark.parametrize("broker", CROSS_PROCESS, indirect=True)
def test_killed_mid_handling_the_command_is_handled_once_by_a_replacement(
    broker: Broker, dsn: str, tmp_path: Path
) -> None:
    first = reserve(broker, "saga-1")
    asyncio.run(publish(broker, first))
    marker = tmp_path / "handling"
    doomed = start_service(broker, dsn, marker)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the participant never started handling the command"
    finally:
        kill9(doomed)
    assert reservations(dsn) == {}  # its uncommitted write died with it
    replacement = start_service(broker, dsn)
    try:
        answers = asyncio.run(collect_replies(broker, 1, timeout=30))
        assert answers["saga-1"].outcome is Outcome.SUCCEEDED
        # The same command again (a relay re-publishing it) and a retry of the step.
        asyncio.run(publish(broker, first, reserve(broker, "saga-1")))
        again = asyncio.run(collect_replies(broker, 1, timeout=30))
        assert again["saga-1"] == answers["saga-1"]
    finally:
        kill9(replacement)
    assert reservations(dsn) == {"saga-1": 1}


@pytest.mark.slow
@pytest.mark.parametrize("broker", CROSS_PROCESS, indirect=True)
def test_killed_at_random_moments_every_step_lands_exactly_once(broker: Broker, dsn: str) -> None:
    keys = [f"saga-{n}" for n in range(40)]
    # Every command twice: as the relay would after a crash, and as a retry of the step.
    commands = [reserve(broker, key) for key in keys]
    asyncio.run(publish(broker, *commands, *commands, *(reserve(broker, key) for key in keys)))
    rng = random.Random(12)
    for _ in range(5):
        doomed = start_service(broker, dsn)
        time.sleep(rng.uniform(0.05, 0.6))
        kill9(doomed)
    survivor = start_service(broker, dsn)
    try:
        answers = asyncio.run(collect_replies(broker, len(keys), timeout=60))
    finally:
        kill9(survivor)
    assert sorted(answers) == sorted(keys)
    assert {a.outcome for a in answers.values()} == {Outcome.SUCCEEDED}
    assert reservations(dsn) == dict.fromkeys(keys, 1)

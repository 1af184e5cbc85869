"""``saga-fsm demo --choreography``: the order services as processes, on the embedded
transport (the SQLite store's own file) and on RabbitMQ and NATS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from saga_fsm.choreography import TRACKER
from tests.choreography.test_tracker import cli
from tests.messaging._brokers import Broker, amqp_url, nats_url, require

SERVICES = ("orders", "inventory", "payment", "shipping")


def test_the_choreography_demo_runs_on_the_sqlite_store_alone(tmp_path: Path) -> None:
    demo = cli("demo", "--choreography", "--sagas", "12", "--seed", "4", cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "12 of 12 orders followed" in demo.stdout
    listed = json.loads(
        cli("ls", "--json", "--definition", "order_choreography", cwd=tmp_path).stdout
    )
    assert len(listed) == 12
    assert {row["state"] for row in listed} == {"completed", "compensated"}


def test_broker_needs_choreography(tmp_path: Path) -> None:
    refused = cli("demo", "--broker", "nats://127.0.0.1:4222", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--broker goes with --choreography" in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["amqp", "nats"])
def test_the_choreography_demo_runs_on_a_broker(kind: str, tmp_path: Path) -> None:
    url = amqp_url() if kind == "amqp" else nats_url()
    require(url, kind, 5672 if kind == "amqp" else 4222)
    broker = Broker(kind, url, prefix="order_choreography")
    for reader in (TRACKER, *SERVICES):
        broker.channel(reader)
    try:
        demo = cli("demo", "--choreography", "--sagas", "12", "--broker", url, cwd=tmp_path)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "12 of 12 orders followed" in demo.stdout
    finally:
        asyncio.run(broker.clean())

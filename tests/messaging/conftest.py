"""The ``broker`` fixture: every messaging test runs once per transport."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.messaging import _brokers

TRANSPORTS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("amqp", marks=pytest.mark.broker),
    pytest.param("nats", marks=pytest.mark.broker),
]


@pytest.fixture(params=TRANSPORTS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_brokers.Broker]:
    kind = request.param
    if kind == "memory":
        url = f"memory://{secrets.token_hex(6)}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'messages.db'}"
    elif kind == "postgresql":
        url = _brokers.postgres_url(request.getfixturevalue("postgres_dsn"))
    elif kind == "amqp":
        url = _brokers.amqp_url()
        _brokers.require(url, "RabbitMQ", 5672)
    else:
        url = _brokers.nats_url()
        _brokers.require(url, "NATS", 4222)
    broker = _brokers.Broker(kind, url)
    try:
        yield broker
    finally:
        asyncio.run(broker.clean())

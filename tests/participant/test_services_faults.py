"""The order services as separate ``saga-fsm participant`` processes on PostgreSQL (inboxes
and tables), killed -9 at random moments and replaced, then a broker restarted under
them: every command is answered, none is handled twice, no forward effect lands after
its undo, and answers to one step never differ."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.messaging._brokers import Broker, postgres_url
from tests.participant import _fleet

KILLS = 20
ORDERS = 24


@pytest.fixture
def fleet(broker: Broker, postgres_dsn: str, tmp_path: Path) -> _fleet.Fleet:
    module = _fleet.services_module(tmp_path, broker.prefix)
    return _fleet.Fleet(broker.url, postgres_url(postgres_dsn), module, tmp_path)


def check_effects(broker: Broker, postgres_dsn: str) -> None:
    found, undone_first = _fleet.effects(postgres_dsn)
    assert undone_first == []
    assert found == _fleet.expected_effects(broker.prefix, ORDERS)


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["postgresql", "amqp", "nats"], indirect=True)
def test_participants_killed_at_random_moments(
    broker: Broker, fleet: _fleet.Fleet, postgres_dsn: str
) -> None:
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
    check_effects(broker, postgres_dsn)

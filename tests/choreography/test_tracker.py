"""The tracker's policies, one at a time: unknown instances (create, discard, hold),
illegal and early events, duplicates, secondary correlation keys, stuck instances and
the one compensating event it may publish; and the CLI reading what it stored."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from saga_fsm._clock import FakeClock
from saga_fsm.choreography import Tracker, Unknown, event_messages
from saga_fsm.choreography._tracker import from_snapshot
from saga_fsm.examples.order_choreography import choreography
from saga_fsm.messaging import Delivery, Message
from saga_fsm.stores import SnapshotStore, open_store
from saga_fsm.stores.memory import MemoryStore

ID = "order_choreography-o1"


@attrs.define
class Settled:
    how: list[str] = attrs.field(factory=list)

    async def ack(self) -> None:
        self.how.append("ack")

    async def nack(self, delay: float) -> None:
        self.how.append("nack")

    async def dead_letter(self, reason: str) -> None:
        self.how.append(f"dead: {reason}")


class Published:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def publish(self, message: Message) -> None:
        self.messages.append(message)


def event(name: str, event_id: str | None = None, **payload: Any) -> Message:
    payload = payload or {"order_id": "o1"}
    return event_messages(choreography, name, payload, event_id=event_id or name)[0]


async def deliver(tracker: Tracker, message: Message, count: int = 1) -> str:
    settled = Settled()
    await tracker.handle(Delivery(message, count, settle=settled))
    return settled.how[0]


def tracker(store: SnapshotStore | None = None, **options: Any) -> Tracker:
    options.setdefault("clock", FakeClock())
    return Tracker(choreography, store or MemoryStore(), Published(), **options)  # type: ignore[arg-type]


async def follow(t: Tracker, *names: str) -> None:
    for name in names:
        assert await deliver(t, event(name)) == "ack"


def test_an_instance_is_recorded_as_a_saga_with_its_path_and_history() -> None:
    async def scenario() -> None:
        t = tracker()
        await follow(t, "OrderCreated", "InventoryReserved")
        snapshot = await t.store.load(ID)
        assert snapshot.state == "running:charging"
        assert [(s.name, s.status.value) for s in snapshot.steps] == [
            ("reserving", "succeeded"),
            ("charging", "running"),
        ]
        history = await t.store.history(ID)
        assert [(h.trigger, h.to_state) for h in history] == [
            ("OrderCreated", "running:reserving"),
            ("InventoryReserved", "running:charging"),
        ]
        assert snapshot.wake_at is not None  # PaymentProcessed is expected within 30 s

    asyncio.run(scenario())


def test_a_duplicate_is_acknowledged_and_changes_nothing() -> None:
    async def scenario() -> None:
        t = tracker()
        await follow(t, "OrderCreated", "InventoryReserved")
        before = await t.store.load(ID)
        assert await deliver(t, event("InventoryReserved")) == "ack"
        assert await t.store.load(ID) == before
        assert t.counts["duplicates"] == 1

    asyncio.run(scenario())


def test_an_illegal_event_is_an_anomaly_on_record_never_a_crash() -> None:
    async def scenario() -> None:
        t = tracker(reorder_window=0)
        await follow(t, "OrderCreated", "InventoryReserved")
        assert await deliver(t, event("InventoryFailed")) == "ack"  # never legal from charging
        snapshot = await t.store.load(ID)
        instance, anomalies = from_snapshot(snapshot)
        assert instance.state == "running:charging"
        assert [(a["kind"], a["event"]) for a in anomalies] == [("illegal", "InventoryFailed")]
        assert (await t.store.history(ID))[-1].trigger == "anomaly:InventoryFailed"
        assert await deliver(t, event("InventoryFailed")) == "ack"  # again: a duplicate now
        assert from_snapshot(await t.store.load(ID))[1] == anomalies

    asyncio.run(scenario())


def test_an_early_event_waits_for_those_before_it_within_the_window() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        t = tracker(clock=clock, reorder_window=10)
        await follow(t, "OrderCreated")
        early = event("PaymentProcessed", payment_id="p1", order_id="o1")
        assert await deliver(t, early) == "nack"
        await follow(t, "InventoryReserved")
        assert await deliver(t, early) == "ack"
        assert (await t.store.load(ID)).state == "running:shipping"
        # Past the window an event still early is recorded as an anomaly.
        late = event("OrderFulfilled")
        assert await deliver(t, late) == "nack"
        clock.advance(11)
        assert await deliver(t, late) == "ack"
        assert from_snapshot(await t.store.load(ID))[1][0]["kind"] == "early"

    asyncio.run(scenario())


@pytest.mark.parametrize("policy", list(Unknown))
def test_an_event_for_an_unknown_instance_follows_the_policy(policy: Unknown) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        t = tracker(clock=clock, unknown=policy, hold_for=5, reorder_window=0)
        first = await deliver(t, event("InventoryReserved"))
        if policy is Unknown.DISCARD:
            assert first == "ack" and t.counts["discarded"] == 1
            assert await t.store.list() == []
        elif policy is Unknown.CREATE:
            assert first == "ack"
            instance, anomalies = from_snapshot(await t.store.load(ID))
            assert instance.state == "pending" and anomalies[0]["event"] == "InventoryReserved"
        else:
            assert first == "nack"
            await follow(t, "OrderCreated")  # its start arrives: the held event applies
            assert await deliver(t, event("InventoryReserved")) == "ack"
            assert (await t.store.load(ID)).state == "running:charging"
            stray = event("InventoryReserved", order_id="o2")
            assert await deliver(t, stray) == "nack"
            clock.advance(6)
            assert (await deliver(t, stray)).startswith("dead: event InventoryReserved")

    asyncio.run(scenario())


def test_an_event_found_by_a_secondary_key_after_a_restart() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        t = tracker(store)
        await follow(t, "OrderCreated", "InventoryReserved")
        paid = event("PaymentProcessed", order_id="o1", payment_id="p1")
        assert await deliver(t, paid) == "ack"
        assert await deliver(t, event("ShipmentFailed", order_id="o1", payment_id="p1")) == "ack"
        restarted = tracker(store)
        await restarted.load_index()
        assert await deliver(restarted, event("PaymentRefunded", payment_id="p1")) == "ack"
        instance, _ = from_snapshot(await store.load(ID))
        assert instance.compensations_seen == ("PaymentRefunded",)

    asyncio.run(scenario())


def test_a_duplicate_found_by_a_secondary_key_of_a_finished_instance_after_a_restart() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        t = tracker(store)
        await follow(t, "OrderCreated", "InventoryReserved")
        assert await deliver(t, event("PaymentProcessed", order_id="o1", payment_id="p1")) == "ack"
        assert await deliver(t, event("ShipmentFailed", order_id="o1", payment_id="p1")) == "ack"
        await follow(t, "InventoryReleased")
        refunded = event("PaymentRefunded", payment_id="p1")
        assert await deliver(t, refunded) == "ack"
        assert (await store.load(ID)).state == "compensated"
        restarted = tracker(store)
        await restarted.load_index()
        assert await deliver(restarted, refunded) == "ack"  # not held until dead-lettered
        assert restarted.counts["duplicates"] == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("publish", [False, True])
def test_an_overdue_event_marks_the_instance_stuck_and_compensates_once_if_asked(
    publish: bool,
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        t = tracker(clock=clock, publish_compensations=publish)
        await follow(t, "OrderCreated", "InventoryReserved")
        clock.advance(29)
        assert await t.check_deadlines() == []
        clock.advance(2)
        (stuck,) = await t.check_deadlines()
        assert stuck.data["stuck"] == "PaymentProcessed"
        assert (await t.store.history(ID))[-1].detail["missing"] == "PaymentProcessed"
        assert await t.check_deadlines() == []  # once
        published = t.transport.messages  # type: ignore[attr-defined]
        if publish:
            assert {m.headers.step for m in published} == {"PaymentFailed"}
            assert len({m.headers.idempotency_key for m in published}) == 1
            assert sorted(m.channel for m in published) == [
                "order_choreography.inventory",
                "order_choreography.orders",
                "order_choreography.tracker",
            ]
        else:
            assert published == []

    asyncio.run(scenario())


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_ls_show_history_and_ls_stuck_read_tracked_instances(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'saga_fsm.db'}"

    async def scenario() -> None:
        async with open_store(url) as store:
            clock = FakeClock()
            t = tracker(store, clock=clock)
            await follow(t, "OrderCreated", "InventoryReserved")
            clock.advance(3600)
            await t.check_deadlines()

    asyncio.run(scenario())
    listed = json.loads(cli("ls", "--stuck", "--json", "--store", url, cwd=tmp_path).stdout)
    assert [row["id"] for row in listed] == [ID]
    shown = cli("show", ID, "--json", "--store", url, cwd=tmp_path)
    assert json.loads(shown.stdout)["data"]["stuck"] == "PaymentProcessed"
    history = json.loads(cli("history", ID, "--json", "--store", url, cwd=tmp_path).stdout)[
        "transitions"
    ]
    assert [h["trigger"] for h in history] == ["OrderCreated", "InventoryReserved", "stuck"]

"""Property: whatever the order, duplication, loss and crashes of a choreography's
events, the tracker ends every instance where the delivered events in causal order
lead, and every instance is completed, compensated, or stuck naming the missing event;
no compensating event is published twice.

The very ``Tracker.handle`` and ``Tracker.check_deadlines`` a tracker process runs are
driven here, on a memory store, with deliveries settled by the simulated broker: a nack
puts the event back at the end of the queue."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_fsm._clock import FakeClock
from saga_fsm.choreography import (
    COMPENSATED,
    COMPLETED,
    PENDING,
    Instance,
    Observed,
    Tracker,
    deadline,
    event_messages,
    expect,
    track,
)
from saga_fsm.choreography._tracker import from_snapshot
from saga_fsm.examples.order_choreography import choreography as order
from saga_fsm.messaging import Delivery, Message
from saga_fsm.stores.memory import MemoryStore

# Every awaited event is expected, so a lost one always leaves a named stuck instance.
CHOREOGRAPHY = attrs.evolve(
    order,
    expectations=[
        expect(
            e.name, within=60, compensate="PaymentFailed" if e.name == "PaymentProcessed" else None
        )
        for e in order.events
        if e.name not in {order.start, *(f.event for f in order.failures)}
    ],
)

# The causal stages of each outcome; the events of one stage are concurrent.
PATHS: dict[str, list[list[str]]] = {
    "completed": [
        ["OrderCreated"],
        ["InventoryReserved"],
        ["PaymentProcessed"],
        ["ShipmentCreated"],
        ["OrderFulfilled"],
    ],
    "out_of_stock": [["OrderCreated"], ["InventoryFailed"], ["OrderFailed"]],
    "payment_failed": [
        ["OrderCreated"],
        ["InventoryReserved"],
        ["PaymentFailed"],
        ["InventoryReleased", "OrderFailed"],
    ],
    "shipment_failed": [
        ["OrderCreated"],
        ["InventoryReserved"],
        ["PaymentProcessed"],
        ["ShipmentFailed"],
        ["PaymentRefunded", "InventoryReleased"],
    ],
}
REACTIONS = {"PaymentFailed": ["InventoryReleased", "OrderFailed"]}  # what participants do next


def alternatives(state: str, event: str) -> set[str]:
    """The events that may come instead of ``event`` in ``state``."""
    step = state.partition(":")[2]
    return {f.event for f in CHOREOGRAPHY.failures if f.state == step} | {event}


def payload(order_id: str, name: str) -> dict[str, Any]:
    if name == "PaymentRefunded":
        return {"payment_id": f"pay-{order_id}"}
    paid = name in ("PaymentProcessed", "ShipmentCreated", "ShipmentFailed")
    return {"order_id": order_id, **({"payment_id": f"pay-{order_id}"} if paid else {})}


def tracker_copy(order_id: str, name: str, event_id: str) -> Message:
    return event_messages(CHOREOGRAPHY, name, payload(order_id, name), event_id=event_id)[0]


class Broker:
    """The tracker's channel: a queue the test picks from; what the tracker publishes is
    recorded (and its tracker copy queued, with what the participants do next)."""

    def __init__(self) -> None:
        self.queue: list[tuple[Message, int]] = []
        self.published: list[Message] = []
        self.dead: list[Message] = []
        self.extra: dict[str, list[tuple[str, str]]] = {}

    async def publish(self, message: Message) -> None:
        self.published.append(message)
        if message.channel.endswith(".tracker"):
            order_id = str(message.payload["order_id"])
            self.queue.append((message, 1))
            caused = [
                (n, f"{message.headers.idempotency_key}-{n}")
                for n in REACTIONS.get(message.headers.step or "", [])
            ]
            self.extra.setdefault(order_id, []).append(
                (message.headers.step or "", message.headers.idempotency_key or "")
            )
            self.extra[order_id].extend(caused)
            self.queue.extend((tracker_copy(order_id, n, i), 1) for n, i in caused)


@attrs.define
class Settle:
    broker: Broker
    message: Message
    count: int

    async def ack(self) -> None:
        return None

    async def nack(self, delay: float) -> None:
        self.broker.queue.append((self.message, self.count + 1))

    async def dead_letter(self, reason: str) -> None:
        self.broker.dead.append(self.message)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    orders = draw(st.lists(st.sampled_from(sorted(PATHS)), min_size=1, max_size=4))
    plans = []
    for n, outcome in enumerate(orders):
        stages = PATHS[outcome]
        lost = draw(st.none() | st.tuples(st.integers(1, len(stages) - 1), st.integers(0, 1)))
        produced: list[str] = []
        missing = None
        for i, stage in enumerate(stages):
            for j, name in enumerate(stage):
                if lost is not None and lost[0] == i and lost[1] % len(stage) == j:
                    missing = name
                else:
                    produced.append(name)
            if missing is not None:
                break
        plans.append((f"o{n}", produced, missing))
    return {"plans": plans}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_the_tracker_follows_any_delivery_of_the_events(
    scenario: dict[str, Any], data: st.DataObject
) -> None:
    asyncio.run(check(scenario["plans"], data))


async def check(plans: list[tuple[str, list[str], str | None]], data: st.DataObject) -> None:
    clock = FakeClock()
    store = MemoryStore()
    broker = Broker()

    def new_tracker() -> Tracker:
        return Tracker(
            CHOREOGRAPHY,
            store,
            broker,  # type: ignore[arg-type]
            clock=clock,
            reorder_window=600,
            hold_for=600,
            publish_compensations=True,
        )

    tracker = new_tracker()
    for order_id, produced, _ in plans:
        for name in produced:
            message = tracker_copy(order_id, name, f"{order_id}-{name}")
            broker.queue.append((message, 1))
            copies = data.draw(st.integers(0, 2), label="duplicates")  # participant crashes
            broker.queue.extend((message, 1) for _ in range(copies))
    steps = 0
    while broker.queue:
        steps += 1
        assert steps < 5000, "the tracker never settles its queue"
        index = data.draw(st.integers(0, len(broker.queue) - 1), label="next delivery")
        message, count = broker.queue.pop(index)
        await tracker.handle(Delivery(message, count, settle=Settle(broker, message, count)))
        clock.advance(0.01)
        if data.draw(st.integers(0, 30), label="tracker crash") == 0:
            tracker = new_tracker()
            await tracker.load_index()
        if not broker.queue:
            clock.advance(120)
            await tracker.check_deadlines()
            await new_tracker().check_deadlines()  # a second look, by a restarted tracker

    assert broker.dead == []
    compensations = Counter(
        m.headers.idempotency_key for m in broker.published if m.channel.endswith(".tracker")
    )
    assert all(n == 1 for n in compensations.values()), compensations
    for order_id, produced, missing in plans:
        snapshot = await store.load(f"{CHOREOGRAPHY.name}-{order_id}")
        instance, anomalies = from_snapshot(snapshot)
        assert anomalies == []
        expected = Instance(PENDING, clock.now())
        causal = [(n, f"{order_id}-{n}") for n in produced] + broker.extra.get(order_id, [])
        for name, event_id in causal:
            observed = Observed(name, payload(order_id, name), event_id, clock.now())
            expected = track(CHOREOGRAPHY, expected, observed).instance
        assert instance.state == expected.state
        assert instance.path[0] == "OrderCreated"
        stopped = Instance(PENDING, clock.now())
        for name in produced:
            observed = Observed(name, payload(order_id, name), f"{order_id}-{name}", clock.now())
            stopped = track(CHOREOGRAPHY, stopped, observed).instance
        awaited = deadline(CHOREOGRAPHY, stopped)
        if missing is None:
            assert instance.state in (COMPLETED, COMPENSATED)
            assert instance.stuck is None and instance.published == ()
            continue
        assert awaited is not None and missing in alternatives(stopped.state, awaited[0])
        expectation = CHOREOGRAPHY.expectation(awaited[0])
        assert expectation is not None
        if expectation.compensate is not None:
            # The tracker published the compensating event, once, and the rest followed.
            assert instance.published == (expectation.compensate,)
            assert instance.state == COMPENSATED
        else:
            # Stuck where the lost event was due, naming the event that state awaits.
            assert instance.state == stopped.state
            assert instance.stuck == awaited[0]

"""How many events a second the choreography tracker follows on a transport, against a
bare consumer of the same events, in the same run.

    .venv/bin/python bench/choreography.py --broker URL --store URL [--orders 300]

The order choreography's events for ``--orders`` orders (every outcome, 3 to 6 events
each, order by order as participants would publish them) are put on the tracker's
channel twice, under two choreography names: ``floor`` receives and acks each (the
transport's own consume path, nothing decided, nothing stored); ``tracker`` follows them
with ``saga_fsm.choreography.Tracker`` into the ``--store`` (one snapshot write and one
history row per event). One JSON line each: events, seconds, events per second.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import secrets
import sys
import time
from typing import Any

import attrs

from saga_fsm.choreography import Choreography, Tracker, channel, event_messages
from saga_fsm.choreography._process import MAX_DELIVERIES
from saga_fsm.examples.order_choreography import choreography
from saga_fsm.messaging import Transport, connect_transport
from saga_fsm.stores import open_store

PATHS = (
    ("OrderCreated", "InventoryReserved", "PaymentProcessed", "ShipmentCreated", "OrderFulfilled"),
    ("OrderCreated", "InventoryFailed", "OrderFailed"),
    ("OrderCreated", "InventoryReserved", "PaymentFailed", "InventoryReleased", "OrderFailed"),
    (
        "OrderCreated",
        "InventoryReserved",
        "PaymentProcessed",
        "ShipmentFailed",
        "PaymentRefunded",
        "InventoryReleased",
    ),
)


def payload(order_id: str, name: str) -> dict[str, Any]:
    if name == "PaymentRefunded":
        return {"payment_id": f"pay-{order_id}"}
    return {"order_id": order_id, "payment_id": f"pay-{order_id}"}


async def publish(transport: Transport, table: Choreography, orders: int) -> int:
    count = 0
    for n in range(orders):
        order_id = f"o{n}"
        digest = hashlib.sha256(order_id.encode()).digest()
        for name in PATHS[digest[0] % len(PATHS)]:
            tracker_copy = event_messages(
                table, name, payload(order_id, name), event_id=f"{order_id}-{name}"
            )[0]
            await transport.publish(tracker_copy)
            count += 1
    return count


async def floor(transport: Transport, table: Choreography, events: int) -> float:
    subscription = await transport.subscribe(channel(table, "tracker"), prefetch=64)
    began = time.perf_counter()
    for _ in range(events):
        delivery = await subscription.receive(timeout=30)
        assert delivery is not None, "the floor ran dry"
        await delivery.ack()
    elapsed = time.perf_counter() - began
    await subscription.close()
    return elapsed


async def follow(transport: Transport, store_url: str, table: Choreography, events: int) -> float:
    async with open_store(store_url) as store:
        tracker = Tracker(table, store, transport, retry_delay=0.01)
        stop = asyncio.Event()
        began = time.perf_counter()
        serving = asyncio.create_task(tracker.serve(stop=stop, check_every=3600))
        while tracker.counts["events"] < events:
            await asyncio.sleep(0.01)
            if serving.done():
                serving.result()
        elapsed = time.perf_counter() - began
        stop.set()
        await serving
        finished = [
            s for s in await store.list(definition=table.name) if not isinstance(s, Exception)
        ]
        assert all(s.is_terminal for s in finished), "an order was not followed to its end"
        return elapsed


async def run(broker: str, store_url: str, orders: int) -> None:
    transport = await connect_transport(broker, max_deliveries=MAX_DELIVERIES)
    try:
        run_id = secrets.token_hex(3)
        bare = attrs.evolve(choreography, name=f"bench_floor_{run_id}")
        tracked = attrs.evolve(choreography, name=f"bench_tracker_{run_id}")
        events = await publish(transport, bare, orders)
        await publish(transport, tracked, orders)
        for engine, seconds in (
            ("floor", await floor(transport, bare, events)),
            ("tracker", await follow(transport, store_url, tracked, events)),
        ):
            line = {
                "engine": engine,
                "transport": transport.name,
                "store": store_url.split("://")[0],
                "events": events,
                "seconds": round(seconds, 3),
                "events_per_second": round(events / seconds),
            }
            print(json.dumps(line), flush=True)
    finally:
        await transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, metavar="URL")
    parser.add_argument("--store", required=True, metavar="URL")
    parser.add_argument("--orders", type=int, default=300)
    args = parser.parse_args()
    if args.orders < 1:
        sys.exit("--orders must be >= 1")
    asyncio.run(run(args.broker, args.store, args.orders))


if __name__ == "__main__":
    main()

"""Remote steps when the wire misbehaves (memory transport behind a proxy): duplicate
replies, lost commands and replies (a timeout, then a retry with the same idempotency
key, or compensation), a late reply after the saga compensated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import attrs

from saga_fsm._client import SagaClient
from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, StepKind
from saga_fsm._executor import SagaExecutor
from saga_fsm._worker import Worker
from saga_fsm.examples import order_services
from saga_fsm.messaging import Message, MessageKind
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.participant import MemoryInbox
from saga_fsm.stores import MemoryStore
from tests.remote._harness import Proxy, Verdict, replies_to, running

FAST = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.05)
ORDER = {"order_id": "o-1", "quantity": 1, "card": "4111"}


def saga(*, timeout: float = 0.3, retry: RetryPolicy = FAST) -> SagaDefinition:
    return SagaDefinition(
        "remote_order",
        [
            Step(
                "reserve_inventory",
                command="inventory.reserve",
                compensation_command="inventory.release",
                timeout=timeout,
                retry=retry,
                compensation_retry=FAST,
            ),
            Step("ship", command="shipping.ship", kind=StepKind.PIVOT, timeout=timeout, retry=FAST),
        ],
    )


def scenario(
    decide: Callable[[Message], Verdict],
    body: Callable[[Any, Proxy], Coroutine[Any, Any, None]],
    definition: SagaDefinition | None = None,
) -> None:
    order_services.tables.clear()

    async def go() -> None:
        proxy = Proxy(MemoryTransport(), decide)
        async with running(MemoryStore(), proxy, definition or saga()) as run:
            await body(run, proxy)

    asyncio.run(go())


def test_every_reply_twice_is_applied_once() -> None:
    async def body(run: Any, proxy: Proxy) -> None:
        [final] = await run.finished([await run.start(ORDER)])
        assert final.state == "completed"
        counts = run.executor.reply_counts
        assert counts["applied"] == 2
        assert counts["stale"] + counts["duplicate"] == 2

    def twice(m: Message) -> Verdict:
        return "twice" if m.kind is MessageKind.REPLY else "deliver"

    scenario(twice, body)
    assert max(order_services.tables.applied.values()) == 1


def test_a_redelivered_reply_with_its_own_id_is_a_duplicate() -> None:
    async def body(run: Any, proxy: Proxy) -> None:
        [final] = await run.finished([await run.start(ORDER)])
        assert final.state == "completed"
        first = next(m for m in proxy.seen if m.kind is MessageKind.REPLY)
        broker = proxy.inner.broker  # type: ignore[attr-defined]
        broker.seen[first.channel].discard(first.message_id)  # the broker forgot it
        await proxy.inner.publish(first)
        for _ in range(100):
            if run.executor.reply_counts["duplicate"]:
                break
            await asyncio.sleep(0.02)
        assert run.executor.reply_counts["duplicate"] == 1
        assert (await run.store.load(final.saga_id)).version == final.version

    scenario(lambda m: "deliver", body)


def test_a_lost_command_times_out_and_is_sent_again_with_the_same_key() -> None:
    lost: list[Message] = []

    def lose_first(m: Message) -> Verdict:
        if m.kind is MessageKind.COMMAND and m.channel == "inventory.reserve" and not lost:
            lost.append(m)
            return "drop"
        return "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        [final] = await run.finished([await run.start(ORDER)])
        assert final.state == "completed"
        assert final.step("reserve_inventory").attempts == 2
        sent = [m for m in proxy.seen if m.channel == "inventory.reserve"]
        assert [m.headers.attempt for m in sent] == [1, 2]
        assert len({m.headers.idempotency_key for m in sent}) == 1
        assert len({m.headers.request_id for m in sent}) == 2

    scenario(lose_first, body)
    assert max(order_services.tables.applied.values()) == 1


def test_lost_replies_are_retried_then_answered_from_the_inbox() -> None:
    dropped: list[Message] = []

    def lose_two(m: Message) -> Verdict:
        if replies_to("reserve_inventory")(m) and len(dropped) < 2:
            dropped.append(m)
            return "drop"
        return "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        [final] = await run.finished([await run.start(ORDER)])
        assert final.state == "completed"
        assert final.step("reserve_inventory").attempts == 3

    scenario(lose_two, body)
    # Three commands, one reservation: the participant answered twice from its inbox.
    applied = order_services.tables.applied
    assert sorted(k.split(":")[0] for k in applied) == ["inventory.reserve", "shipping.ship"]
    assert set(applied.values()) == {1}


def test_replies_that_never_come_end_in_compensation() -> None:
    def lose_all(m: Message) -> Verdict:
        return "drop" if replies_to("reserve_inventory")(m) else "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        [final] = await run.finished([await run.start(ORDER)])
        assert final.state == "compensated"
        record = final.step("reserve_inventory")
        assert record.attempts == 3 and record.status.value == "compensated"
        assert final.failure is not None and final.failure.type == "StepTimedOut"

    scenario(lose_all, body)
    applied = order_services.tables.applied
    # It may have acted (it had): its compensation ran, once.
    assert sorted(k.split(":")[0] for k in applied) == ["inventory.release", "inventory.reserve"]
    assert order_services.tables.reservations == {}


def test_a_reply_after_compensation_is_dropped_never_applied() -> None:
    def hold(m: Message) -> Verdict:
        return "hold" if replies_to("reserve_inventory")(m) else "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        saga_id = await run.start(ORDER)
        await asyncio.sleep(0.1)
        assert proxy.held  # the forward reply is on its way, slowly
        [final] = await run.finished([saga_id])
        assert final.state == "compensated"
        before = run.executor.reply_counts["stale"]
        await proxy.release()  # every late forward reply arrives now
        for _ in range(100):
            if run.executor.reply_counts["stale"] > before:
                break
            await asyncio.sleep(0.02)
        assert run.executor.reply_counts["stale"] > before
        after = await run.store.load(saga_id)
        assert after.state == "compensated" and after.version == final.version

    scenario(hold, body, saga(retry=RetryPolicy(max_attempts=1)))


def test_replies_out_of_order_apply_only_the_current_attempt() -> None:
    held: list[Message] = []

    def reorder(m: Message) -> Verdict:
        # Attempt 1's reply waits; attempt 2's overtakes it.
        if replies_to("reserve_inventory")(m) and m.headers.attempt == 1:
            held.append(m)
            return "hold"
        return "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        [final] = await run.finished([await run.start(ORDER)])
        assert final.state == "completed"
        await proxy.release()
        for _ in range(100):
            if run.executor.reply_counts["stale"]:
                break
            await asyncio.sleep(0.02)
        assert run.executor.reply_counts["stale"] == 1
        assert (await run.store.load(final.saga_id)).version == final.version

    scenario(reorder, body)
    assert held and max(order_services.tables.applied.values()) == 1


def test_dropped_replies_are_counted_in_the_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from saga_fsm.observability.metrics import SagaMetrics

    registry = CollectorRegistry()
    metrics = SagaMetrics(registry)

    async def go() -> None:
        proxy = Proxy(
            MemoryTransport(), lambda m: "twice" if m.kind is MessageKind.REPLY else "deliver"
        )
        store = MemoryStore()
        executor = SagaExecutor(store, [saga()], observer=metrics)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(Worker(executor, transport=proxy, poll_interval=0.02).run(stop)),
            asyncio.create_task(order_services.participant.serve(proxy, MemoryInbox(), stop=stop)),
        ]
        try:
            saga_id = (await SagaClient(store, [saga()]).start(saga(), ORDER)).saga_id
            for _ in range(300):
                if (await store.load(saga_id)).is_terminal and executor.reply_counts["stale"] == 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(go())
    assert registry.get_sample_value("saga_fsm_stale_replies_total") == 2


def test_headers_name_the_saga_step_attempt_and_where_to_answer() -> None:
    async def body(run: Any, proxy: Proxy) -> None:
        saga_id = await run.start(ORDER | {"order_id": "o-7"})
        await run.finished([saga_id])
        command = next(m for m in proxy.seen if m.kind is MessageKind.COMMAND)
        h = command.headers
        assert attrs.asdict(h) | {"traceparent": None} == {
            "saga_id": saga_id,
            "definition": "remote_order",
            "step": "reserve_inventory",
            "attempt": 1,
            "idempotency_key": f"{saga_id}:reserve_inventory",
            "request_id": f"{saga_id}:reserve_inventory:1",
            "reply_channel": "saga_fsm.replies.remote_order",
            "correlation_id": None,
            "traceparent": None,
        }
        assert command.payload == ORDER | {"order_id": "o-7"}

    scenario(lambda m: "deliver", body)


def test_a_cancel_starts_a_remote_compensation_through_the_outbox() -> None:
    def lose_forward(m: Message) -> Verdict:
        return "drop" if replies_to("reserve_inventory")(m) else "deliver"

    slow = RetryPolicy(max_attempts=3, initial_interval=60, max_interval=60)

    async def body(run: Any, proxy: Proxy) -> None:
        saga_id = await run.start(ORDER)
        for _ in range(200):  # the reply is lost: the step times out, a retry waits
            if (await run.store.load(saga_id)).step("reserve_inventory").status.value == (
                "timed_out"
            ):
                break
            await asyncio.sleep(0.02)
        cancelled = await run.client.cancel(saga_id)
        assert cancelled.state == "compensating:reserve_inventory"
        [final] = await run.finished([saga_id])
        assert final.state == "compensated"
        sent = [m.channel for m in proxy.seen if m.kind is MessageKind.COMMAND]
        assert sent == ["inventory.reserve", "inventory.release"]

    scenario(lose_forward, body, saga(retry=slow))
    assert sorted(k.split(":")[0] for k in order_services.tables.applied) == [
        "inventory.release",
        "inventory.reserve",
    ]


def test_a_reply_that_is_not_one_goes_to_the_dead_letters_and_frees_the_saga() -> None:
    def hold(m: Message) -> Verdict:
        return "hold" if replies_to("reserve_inventory")(m) else "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        saga_id = await run.start(ORDER)
        for _ in range(200):
            if proxy.held:
                break
            await asyncio.sleep(0.02)
        [real] = proxy.held
        poison = attrs.evolve(real, payload={"outcome": "maybe"}, message_id="poison-1")
        await proxy.inner.publish(poison)
        dead = proxy.inner.dead_letters
        for _ in range(200):
            if await dead.list("saga_fsm.replies.remote_order"):
                break
            await asyncio.sleep(0.02)
        [letter] = await dead.list("saga_fsm.replies.remote_order")
        assert letter.message_id == "poison-1" and "not a reply" in letter.reason
        assert await run.store.lease(saga_id) is None  # nobody holds the saga for it
        proxy.decide = lambda m: "deliver"
        await proxy.release()
        [final] = await run.finished([saga_id])
        assert final.state == "completed"

    scenario(hold, body)


def test_workers_serving_other_definitions_share_one_reply_channel() -> None:
    order_services.tables.clear()
    reserve = saga()
    ship = SagaDefinition(
        "remote_shipping", [Step("ship", command="shipping.ship", kind=StepKind.PIVOT, timeout=5)]
    )

    async def go() -> None:
        store, transport = MemoryStore(), MemoryTransport()
        executors = [
            SagaExecutor(store, [reserve], lease_seconds=5),
            SagaExecutor(store, [ship], lease_seconds=5),
        ]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(Worker(e, transport=transport, poll_interval=0.02).run(stop))
            for e in executors
        ]
        tasks.append(
            asyncio.create_task(
                order_services.participant.serve(transport, MemoryInbox(), stop=stop)
            )
        )
        try:
            client = SagaClient(store, [reserve, ship])
            ids = [(await client.start(d, ORDER)).saga_id for d in (reserve, ship) * 4]
            for _ in range(500):
                finals = [await store.load(i) for i in ids]
                if all(f.is_terminal for f in finals):
                    break
                await asyncio.sleep(0.02)
            assert [f.state for f in finals] == ["completed"] * 8
            # Each reply was applied by the worker serving its saga, once.
            assert sum(e.reply_counts["applied"] for e in executors) == 4 * 3
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(go())


def test_a_remote_pivot_whose_replies_never_come_parks_then_an_operator_retry_completes() -> None:
    # The shipment was made, its replies lost: the reservation must stay.
    losing = [True]

    def lose_ship(m: Message) -> Verdict:
        return "drop" if losing[0] and replies_to("ship")(m) else "deliver"

    async def body(run: Any, proxy: Proxy) -> None:
        [parked] = await run.finished([await run.start(ORDER)])
        assert parked.state == "failed" and parked.parked_at == "running:ship"
        assert parked.failure is not None and parked.failure.type == "StepTimedOut"
        assert parked.step("reserve_inventory").status.value == "succeeded"
        assert parked.step("ship").attempts == 3
        losing[0] = False
        await run.client.retry(parked.saga_id)
        [final] = await run.finished([parked.saga_id])
        assert final.state == "completed" and final.step("ship").attempts == 4

    scenario(lose_ship, body)
    applied = order_services.tables.applied
    # Four commands, one shipment (the inbox answered the rest), nothing released.
    assert sorted(k.split(":")[0] for k in applied) == ["inventory.reserve", "shipping.ship"]
    assert set(applied.values()) == {1}

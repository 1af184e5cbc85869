"""Workers, leases and durable timers on the in-memory store (the PostgreSQL fault
tests live in tests/durability)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest

from saga_fsm import (
    ConcurrencyConflict,
    FakeClock,
    MemoryStore,
    Orchestrator,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    StepContext,
    StepStatus,
)
from saga_fsm._errors import SagaLeased, StoreError
from saga_fsm._fingerprint import definition_fingerprint
from saga_fsm._worker import Worker

SERVED = [("w", 1)]


def definition(calls: list[str], *, fail_first: int = 0, backoff: float = 0.01) -> SagaDefinition:
    remaining = {"n": fail_first}

    async def act(ctx: StepContext) -> None:
        calls.append(f"{ctx.step}#{ctx.attempt}")
        if ctx.step == "b" and remaining["n"] > 0:
            remaining["n"] -= 1
            raise ConnectionError("flaky")

    async def undo(ctx: StepContext) -> None:
        calls.append(f"undo {ctx.step}")

    policy = RetryPolicy(max_attempts=5, initial_interval=backoff, max_interval=backoff)
    return SagaBuilder("w").step("a", act, compensation=undo).pivot("b", act, retry=policy).build()


async def serve_until_finished(worker: Worker, store: MemoryStore, timeout: float = 10) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, grace=1))
    try:
        async with asyncio.timeout(timeout):
            while not all(s.is_terminal for s in await store.list()):
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


def test_a_worker_runs_what_was_started_elsewhere() -> None:
    calls: list[str] = []
    saga = definition(calls)

    async def go() -> list[str]:
        store = MemoryStore()
        starter = Orchestrator(store, [saga], worker_id="api")
        for n in range(20):
            await starter.start(saga, {"n": n})
        worker = Worker(
            Orchestrator(store, [saga], worker_id="w1"), concurrency=4, poll_interval=0.01
        )
        await serve_until_finished(worker, store)
        finals = await store.list()
        assert [await store.lease(s.saga_id) for s in finals] == [None] * 20
        return [s.state for s in finals]

    assert asyncio.run(go()) == ["completed"] * 20
    assert len(calls) == 40


def test_a_dead_workers_saga_is_taken_over_after_its_lease_expires() -> None:
    calls: list[str] = []
    saga = definition(calls)

    async def go() -> Any:
        clock = FakeClock()
        store = MemoryStore()
        started = await Orchestrator(store, [saga], clock=clock).start(saga, {})
        # Worker "dead" claims the saga, marks step a running, then vanishes.
        (claimed,) = await store.claim_due(
            "dead", now=clock.now(), lease_seconds=5, limit=10, definitions=SERVED
        )
        from saga_fsm import Event, decide

        decision = decide(saga, claimed, Event.start(clock.now()))
        await store.save(decision.snapshot, decision.history, expected_version=claimed.version)
        assert (
            await store.claim_due(
                "live", now=clock.now(), lease_seconds=5, limit=10, definitions=SERVED
            )
            == []
        )
        with pytest.raises(SagaLeased, match="dead"):
            await Orchestrator(store, [saga], clock=clock, worker_id="live").resume(started.saga_id)
        clock.advance(5.1)
        (taken,) = await store.claim_due(
            "live", now=clock.now(), lease_seconds=5, limit=10, definitions=SERVED
        )
        lease = await store.lease(taken.saga_id)
        assert lease is not None and lease.owner == "live" and taken.version > claimed.version
        # The dead worker's late write is refused at once, before the new holder wrote
        # anything: the takeover itself bumped the version.

        with pytest.raises(ConcurrencyConflict):
            await store.save(decision.snapshot, (), expected_version=claimed.version + 1)
        assert await store.load(started.saga_id) == taken
        return await Orchestrator(store, [saga], clock=clock, worker_id="live").drive(taken)

    final = asyncio.run(go())
    assert final.state == "completed"
    # Step a ran again after the takeover, with the same idempotency key (attempt 1).
    assert calls == ["a#1", "b#1"]


def test_long_backoff_releases_the_lease_and_the_timer_fires_later() -> None:
    calls: list[str] = []
    saga = definition(calls, fail_first=1, backoff=30)

    async def go() -> None:
        clock = FakeClock()
        store = MemoryStore()
        orchestrator = Orchestrator(store, [saga], clock=clock, worker_id="w1")
        started = await orchestrator.start(saga, {})
        (claimed,) = await store.claim_due(
            "w1", now=clock.now(), lease_seconds=10, limit=1, definitions=SERVED
        )
        waiting = await orchestrator.drive(claimed, max_hold=1.0)
        assert waiting.state == "running:b" and await store.lease(waiting.saga_id) is None
        assert waiting.wake_at == waiting.due_at and waiting.wake_at is not None
        assert (
            await store.claim_due(
                "w2", now=clock.now(), lease_seconds=10, limit=1, definitions=SERVED
            )
            == []
        )
        clock.advance(31)
        (due,) = await store.claim_due(
            "w2", now=clock.now(), lease_seconds=10, limit=1, definitions=SERVED
        )
        assert due.saga_id == started.saga_id
        final = await Orchestrator(store, [saga], clock=clock, worker_id="w2").drive(due)
        assert final.state == "completed"

    asyncio.run(go())
    assert calls == ["a#1", "b#1", "b#2"]


def test_finished_sagas_are_never_due_even_with_an_old_timer() -> None:
    calls: list[str] = []
    saga = definition(calls, fail_first=1, backoff=30)

    async def go() -> None:
        clock = FakeClock()
        store = MemoryStore()
        orchestrator = Orchestrator(store, [saga], clock=clock, worker_id="w1")
        started = await orchestrator.start(saga, {})
        (claimed,) = await store.claim_due(
            "w1", now=clock.now(), lease_seconds=10, limit=1, definitions=SERVED
        )
        await orchestrator.drive(claimed, max_hold=1.0)  # waiting on a 30 s timer
        # The pivot awaits a retry and may have acted: the cancel is recorded and its
        # next attempt decides (it succeeds: forward, the cancel dropped).
        cancelled = await orchestrator.cancel(started.saga_id)
        assert cancelled.state == "running:b" and cancelled.cancel_requested
        clock.advance(31)
        final = await orchestrator.resume(started.saga_id)
        assert final.state == "completed" and final.due_at is None and final.wake_at is None
        clock.advance(3600)
        assert (
            await store.claim_due(
                "w2", now=clock.now(), lease_seconds=10, limit=5, definitions=SERVED
            )
            == []
        )

    asyncio.run(go())


def test_a_corrupt_snapshot_is_skipped_and_the_rest_are_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    saga = definition(calls)

    async def go() -> list[str]:
        store = MemoryStore()
        starter = Orchestrator(store, [saga])
        ids = [(await starter.start(saga, {"n": n})).saga_id for n in range(3)]
        store._rows[ids[1]].encoded = '{"schema_version": 99}'
        worker = Worker(Orchestrator(store, [saga], worker_id="w1"), poll_interval=0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop, grace=1))
        await asyncio.sleep(0.3)
        stop.set()
        await task
        return [(await store.load(i)).state for i in (ids[0], ids[2])]

    with caplog.at_level(logging.ERROR, logger="saga_fsm.worker"):
        assert asyncio.run(go()) == ["completed", "completed"]
    assert any("schema_version 99" in r.getMessage() for r in caplog.records)


def test_graceful_shutdown_releases_unfinished_sagas_for_others() -> None:
    async def slow(ctx: StepContext) -> None:
        await asyncio.sleep(3600)

    saga = SagaBuilder("slow").step("a", slow, compensation=slow).pivot("b", slow).build()

    async def go() -> Any:
        store = MemoryStore()
        started = await Orchestrator(store, [saga]).start(saga, {})
        worker = Worker(Orchestrator(store, [saga], worker_id="w1"), poll_interval=0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop, grace=0.05))
        while (await store.load(started.saga_id)).state == "pending":
            await asyncio.sleep(0.01)
        stop.set()
        await task
        return await store.load(started.saga_id), await store.lease(started.saga_id)

    left, lease = asyncio.run(go())
    assert left.state == "running:a" and lease is None
    assert left.due_at == left.created_at  # due at once: another worker re-runs step a


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.renewals: list[list[str]] = []

    async def renew_leases(self, saga_ids: Any, worker_id: str, *, expires_at: Any) -> set[str]:
        self.renewals.append(sorted(saga_ids))
        return await super().renew_leases(saga_ids, worker_id, expires_at=expires_at)


def blocking_saga(release: asyncio.Event, inside: list[str]) -> SagaDefinition:
    async def slow(ctx: StepContext) -> None:
        inside.append(ctx.saga_id)
        await release.wait()

    async def undo(ctx: StepContext) -> None:
        return None

    return SagaBuilder("slow").step("a", slow, compensation=undo).build()


def test_leases_of_sagas_in_flight_are_renewed_together_and_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> tuple[list[list[str]], list[str]]:
        release, inside = asyncio.Event(), []
        saga = blocking_saga(release, inside)
        store = CountingStore()
        orchestrator = Orchestrator(store, [saga], worker_id="w1", lease_seconds=0.3)
        runs = [asyncio.create_task(orchestrator.run(saga, {"n": n})) for n in range(5)]
        while len(inside) < 5:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.8)  # well past the first lease: only renewals kept it
        for snapshot in await store.list():
            lease = await store.lease(snapshot.saga_id)
            assert lease is not None and lease.owner == "w1"
        while_all_held = list(store.renewals)  # later ones miss the sagas that finished
        release.set()
        finals = await asyncio.gather(*runs)
        return while_all_held, [s.state for s in finals]

    with caplog.at_level(logging.WARNING, logger="saga_fsm"):
        renewals, states = asyncio.run(go())
    assert states == ["completed"] * 5
    assert "no longer held" not in caplog.text
    # Every renewal carried all five sagas in one call.
    assert len(renewals) >= 2
    assert all(len(ids) == 5 for ids in renewals)


def test_a_lease_taken_by_another_worker_stops_renewal_and_driving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> tuple[Any, Any]:
        release, inside = asyncio.Event(), []
        saga = blocking_saga(release, inside)
        store = CountingStore()
        orchestrator = Orchestrator(store, [saga], worker_id="w1", lease_seconds=0.3)
        run = asyncio.create_task(orchestrator.run(saga, {}))
        while not inside:
            await asyncio.sleep(0.01)
        # Another worker whose clock says the lease expired takes the saga.
        later = orchestrator.clock.now() + timedelta(hours=1)
        await store.acquire(inside[0], "w2", now=later, lease_seconds=3600)
        renewals_at_theft = len(store.renewals)
        await asyncio.sleep(0.5)
        release.set()
        final = await run
        return (final, await store.lease(final.saga_id)), (renewals_at_theft, store.renewals)

    with caplog.at_level(logging.WARNING, logger="saga_fsm"):
        (final, lease), (at_theft, renewals) = asyncio.run(go())
    assert lease is not None and lease.owner == "w2" and final.state == "running:a"
    assert "lease no longer held by w1" in caplog.text
    assert len(renewals) == at_theft + 1  # tried once more, then stopped renewing it


# -- served definitions, quarantine, what a worker says ----------------------------------------


def test_a_worker_needs_the_definitions_it_serves() -> None:
    with pytest.raises(ValueError, match="definitions it serves"):
        Worker(Orchestrator(MemoryStore()))


def test_a_worker_runs_only_its_definitions_and_never_loads_a_rows_reference() -> None:
    calls: list[str] = []
    mine, other = definition(calls), SagaBuilder("other").step("x", _noop, read_only=True).build()

    async def go() -> tuple[str, str]:
        store = MemoryStore()
        starter = Orchestrator(store, [mine, other])
        ran = await starter.start(mine, {}, definition_ref="no.such.module:definition")
        left = await starter.start(other, {}, definition_ref="no.such.module:definition")
        worker = Worker(Orchestrator(store, [mine]), poll_interval=0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(10):
            while (await store.load(ran.saga_id)).state != "completed":
                await asyncio.sleep(0.01)
        stop.set()
        await task
        return (await store.load(ran.saga_id)).state, (await store.load(left.saga_id)).state

    assert asyncio.run(go()) == ("completed", "pending")


class _QuarantineDown(MemoryStore):
    """A store that cannot take a quarantine right now (an outage at that moment)."""

    async def quarantine(self, saga_id: str, reason: str, *, now: Any) -> None:
        raise StoreError("store unavailable")


@pytest.mark.parametrize("store_kind", ["working", "quarantine fails"])
def test_a_worker_quarantines_an_undecodable_row_and_runs_the_others(store_kind: str) -> None:
    calls: list[str] = []
    saga = definition(calls)

    async def go() -> None:
        clock = FakeClock()
        store = MemoryStore() if store_kind == "working" else _QuarantineDown()
        starter = Orchestrator(store, [saga], clock=clock)
        bad = await starter.start(saga, {"n": 0})
        good = await starter.start(saga, {"n": 1})
        store._rows[bad.saga_id].encoded = '{"x": 1}'
        worker = Worker(
            Orchestrator(store, [saga], clock=clock, worker_id="w1"), poll_interval=0.01
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(10):
            while (await store.load(good.saga_id)).state != "completed":
                await asyncio.sleep(0.01)
        stop.set()
        await task
        if store_kind == "working":
            (quarantined,) = await store.list_quarantined()
            assert quarantined.saga_id == bad.saga_id and "schema_version" in quarantined.reason
            clock.advance(3600)  # long after any lease: still nobody claims it
        # Not quarantined: its lease was released at shutdown, so the next worker
        # tries again at once instead of waiting for the lease to run out.
        claim = await store.claim_due(
            "w2", now=clock.now(), lease_seconds=30, limit=5, definitions=SERVED
        )
        assert len(claim) == (0 if store_kind == "working" else 1)

    asyncio.run(go())


def test_worker_log_records_carry_the_saga_step_and_correlation_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    saga = definition(calls, fail_first=1)

    async def go() -> str:
        store = MemoryStore()
        started = await Orchestrator(store, [saga]).start(saga, {}, correlation_id="order-7")
        worker = Worker(
            Orchestrator(store, [saga], worker_id="w1"),
            poll_interval=0.01,
            summary_every=0.0,
            store_name="sqlite:///x.db",
        )
        await serve_until_finished(worker, store)
        return started.saga_id

    with caplog.at_level(logging.DEBUG, logger="saga_fsm"):
        saga_id = asyncio.run(go())
    messages = [r.getMessage() for r in caplog.records]
    table = definition_fingerprint(saga)[:12]
    assert f"worker w1 serving w v1 ({table}) from sqlite:///x.db, concurrency 8" in messages
    summaries = [m for m in messages if m.startswith("worker w1: claimed")]
    totals = [0, 0, 0, 0]
    for line in summaries:  # "worker w1: claimed 1, completed 0, ..., in flight 1"
        numbers = [int(word.strip(",")) for word in line.split() if word.strip(",").isdigit()]
        totals = [t + n for t, n in zip(totals, numbers[:4], strict=True)]
    assert totals == [1, 1, 0, 0], summaries
    assert summaries[-1].endswith("in flight 0")
    steps = [r for r in caplog.records if r.getMessage().startswith("step b")]
    assert steps and all(
        (r.saga_id, r.step, r.correlation_id) == (saga_id, "b", "order-7")  # type: ignore[attr-defined]
        for r in steps
    )
    claims = [r for r in caplog.records if r.getMessage().startswith("claimed saga")]
    assert claims and claims[0].getMessage().startswith(f"claimed saga {saga_id}")
    # Outside a saga, the fields are there and empty.
    start_line = next(r for r in caplog.records if "serving" in r.getMessage())
    assert start_line.saga_id is None  # type: ignore[attr-defined]


async def _noop(ctx: StepContext) -> None:
    return None


class FlakyStore(MemoryStore):
    """Refuses the first ``outages`` claims, as a store that cannot be reached."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    async def claim_due(self, worker_id: str, **options: Any) -> Any:
        if self.outages > 0:
            self.outages -= 1
            from saga_fsm._errors import StoreError

            raise StoreError("connection refused")
        return await super().claim_due(worker_id, **options)


def test_a_worker_drives_at_most_its_concurrency_under_its_own_lease_and_polls_for_more() -> None:
    """Never more than ``concurrency`` sagas in flight (and that many reached), each
    leased to this worker while it runs; a saga started while the worker idles is
    picked up by a later poll; every saga driven to the end is counted."""
    inside: list[str] = []
    peak = 0
    owners: set[str | None] = set()

    async def act(ctx: StepContext) -> None:
        nonlocal peak
        inside.append(ctx.saga_id)
        peak = max(peak, len(inside))
        lease = await store.lease(ctx.saga_id)
        owners.add(lease.owner if lease else None)
        await asyncio.sleep(0.02)
        inside.remove(ctx.saga_id)

    saga = SagaBuilder("bounded").step("a", act, compensation=act).pivot("b", act).build()
    store = MemoryStore()

    async def go() -> int:
        starter = Orchestrator(store, [saga])
        for n in range(12):
            await starter.start(saga, {"n": n})
        worker = Worker(
            Orchestrator(store, [saga], worker_id="w1"), concurrency=3, poll_interval=0.01
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop, grace=1))
        while not all(s.is_terminal for s in await store.list()):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # idle now
        await starter.start(saga, {"n": "late"})
        async with asyncio.timeout(10):
            while not all(s.is_terminal for s in await store.list()):
                await asyncio.sleep(0.01)
        stop.set()
        await task
        return worker.driven

    assert asyncio.run(go()) == 13
    assert peak == 3
    assert owners == {"w1"}


def test_a_worker_outlasts_a_store_outage_backing_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    saga = definition(calls)

    async def go() -> list[str]:
        store = FlakyStore(outages=5)
        await Orchestrator(store, [saga]).start(saga, {})
        worker = Worker(
            Orchestrator(store, [saga], worker_id="w1"), poll_interval=0.1, max_backoff=0.4
        )
        await serve_until_finished(worker, store)
        return [s.state for s in await store.list()]

    with caplog.at_level(logging.INFO, logger="saga_fsm.worker"):
        assert asyncio.run(go()) == ["completed"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The wait doubles from the poll interval up to max_backoff.
    assert warnings == [
        f"worker w1: store unavailable (connection refused); retrying in {s}s"
        for s in ("0.1", "0.2", "0.4", "0.4", "0.4")
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos[0].startswith("worker w1 serving ") and infos[-1] == "worker w1 stopped"


def test_a_worker_hands_back_a_saga_whose_backoff_is_longer_than_max_hold() -> None:
    calls: list[str] = []
    saga = definition(calls, fail_first=1, backoff=3)

    async def go() -> Any:
        clock = FakeClock()  # a back-off it waited out would pass at once
        store = MemoryStore()
        started = await Orchestrator(store, [saga], clock=clock).start(saga, {})
        worker = Worker(
            Orchestrator(store, [saga], clock=clock, worker_id="w1"),
            poll_interval=0.01,
            max_hold=1.0,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop, grace=1))
        await asyncio.sleep(0.3)
        stop.set()
        await task
        return await store.load(started.saga_id), await store.lease(started.saga_id)

    waiting, waiting_lease = asyncio.run(go())
    assert waiting.state == "running:b" and waiting_lease is None
    assert waiting.wake_at is not None and calls == ["a#1", "b#1"]


def test_a_step_whose_deadline_passed_while_unwatched_times_out_on_takeover() -> None:
    """The deadline is stored: the taking-over worker does not call the action of an
    attempt whose time ran out while nobody watched it; the attempt is timed out."""
    calls: list[str] = []

    async def act(ctx: StepContext) -> None:
        calls.append(f"{ctx.step}#{ctx.attempt}")

    saga = (
        SagaBuilder("deadline").step("a", act, compensation=act, timeout=2).pivot("b", act).build()
    )

    async def go() -> Any:
        clock = FakeClock()
        store = MemoryStore()
        await Orchestrator(store, [saga], clock=clock).start(saga, {})
        (claimed,) = await store.claim_due(
            "dead", now=clock.now(), lease_seconds=5, limit=1, definitions=[("deadline", 1)]
        )
        from saga_fsm import Event, decide

        decision = decide(saga, claimed, Event.start(clock.now()))
        await store.save(decision.snapshot, decision.history, expected_version=claimed.version)
        clock.advance(10)  # the lease and the step's deadline both ran out
        (taken,) = await store.claim_due(
            "live", now=clock.now(), lease_seconds=5, limit=1, definitions=[("deadline", 1)]
        )
        final = await Orchestrator(store, [saga], clock=clock, worker_id="live").drive(taken)
        return final, await store.history(final.saga_id)

    final, history = asyncio.run(go())
    assert "a#1" not in calls
    assert ("step_timed_out", {"step": "a", "attempt": 1}) in [
        (h.trigger, h.detail) for h in history
    ]
    assert final.is_terminal


@pytest.mark.parametrize("store_kind", ["memory", "postgres"])
def test_a_pivot_timing_out_on_every_attempt_parks_and_an_operator_retry_completes(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    # The pivot's effect may have landed with its reply lost: the reservation before it
    # must stay, and the saga waits for an operator instead of compensating.
    calls: list[str] = []
    replying = asyncio.Event()

    async def reserve(ctx: StepContext) -> None:
        calls.append("reserve")

    async def release(ctx: StepContext) -> None:
        calls.append("release")

    async def ship(ctx: StepContext) -> None:
        calls.append(f"ship#{ctx.attempt}:{ctx.idempotency_key}")
        await replying.wait()

    policy = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.01)
    saga = (
        SagaBuilder("pivot_park")
        .step("reserve", reserve, compensation=release)
        .pivot("ship", ship, retry=policy, timeout=0.05)
        .build()
    )

    async def go() -> None:
        if store_kind == "memory":
            store: Any = MemoryStore()
        else:
            from saga_fsm.stores.postgres import PostgresStore

            store = await PostgresStore.open(request.getfixturevalue("postgres_dsn"))
        try:
            started = await Orchestrator(store, [saga]).start(saga, {})
            worker = Worker(Orchestrator(store, [saga], worker_id="w1"), poll_interval=0.01)
            await serve_until_finished(worker, store)
            parked = await store.load(started.saga_id)
            assert parked.state == "failed" and parked.parked_at == "running:ship"
            assert parked.failure is not None and parked.failure.type == "StepTimedOut"
            assert calls == [
                "reserve",
                f"ship#1:{started.saga_id}:ship",
                f"ship#2:{started.saga_id}:ship",
            ]
            assert parked.step("reserve").status is StepStatus.SUCCEEDED

            replying.set()  # the participant answers now
            await Orchestrator(store, [saga]).retry(started.saga_id)
            worker = Worker(Orchestrator(store, [saga], worker_id="w2"), poll_interval=0.01)
            await serve_until_finished(worker, store)
            done = await store.load(started.saga_id)
            assert done.state == "completed" and done.failure is None
            assert calls[-1] == f"ship#3:{started.saga_id}:ship"
            assert "release" not in calls
        finally:
            if store_kind == "postgres":
                await store.close()

    asyncio.run(go())

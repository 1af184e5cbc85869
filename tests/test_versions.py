"""Versioned definitions: versions side by side, sagas pinned to their table, the lock
of released fingerprints, and migrations between versions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from saga_fsm import (
    DefinitionsNotLocked,
    ErrorInfo,
    InvalidArgument,
    MemoryStore,
    MigrationRefused,
    Orchestrator,
    PostgresStore,
    SagaStore,
    Snapshot,
    StepRecord,
    StepStatus,
    TableChanged,
    UnknownDefinition,
    Worker,
    definition_fingerprint,
    find_unrunnable,
    migrate_sagas,
    new_snapshot,
)
from saga_fsm.testing import assert_definitions_locked
from tests import versioned_sagas
from tests.readme import ROOT, printed_output, python_example, readme_section, run_example
from tests.versioned_sagas import RAN, order_v1, order_v1_edited, order_v2

V1, V1_EDITED, V2 = (definition_fingerprint(d) for d in (order_v1, order_v1_edited, order_v2))


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    RAN.clear()
    versioned_sagas.BROKEN["release"] = False
    yield
    versioned_sagas.BROKEN["release"] = False


def tables_run(saga_id: str) -> set[str]:
    return {table for ran, table, _ in RAN if ran == saga_id}


async def serve(worker: Worker, done: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Run ``worker`` until ``done()`` holds."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, grace=1))
    try:
        async with asyncio.timeout(timeout):
            while not await done():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


async def polls(worker: Worker, count: int) -> None:
    """Let ``worker`` claim ``count`` times (nothing to wait for: it must leave things)."""
    calls = 0
    claim = worker.orchestrator.store.claim_due

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await claim(*args, **kwargs)  # type: ignore[arg-type]

    worker.orchestrator.store.claim_due = counted  # type: ignore[method-assign]

    async def enough() -> bool:
        return calls >= count

    await serve(worker, enough)


def all_finished(store: SagaStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(isinstance(s, Snapshot) and s.is_terminal for s in await store.list())

    return check


# -- versions side by side ------------------------------------------------------------------


def test_new_starts_take_the_newest_version_unless_told_and_each_runs_its_own_table() -> None:
    async def go() -> None:
        store = MemoryStore()
        orchestrator = Orchestrator(store, [order_v1, order_v2], worker_id="w")
        newest = await orchestrator.start("order", {})
        older = await orchestrator.start("order", {}, version=1)
        given = await orchestrator.start(order_v1, {})
        assert (newest.definition_version, older.definition_version) == (2, 1)
        assert (newest.definition_fingerprint, older.definition_fingerprint) == (V2, V1)
        assert given.definition_fingerprint == V1
        await serve(Worker(orchestrator, poll_interval=0.01), all_finished(store))
        assert tables_run(newest.saga_id) == {"v2"}
        assert tables_run(older.saga_id) == tables_run(given.saga_id) == {"v1"}
        ran = await orchestrator.run("order", {"n": 1})
        assert (ran.state, ran.definition_version) == ("completed", 2)
        assert [s.name for s in ran.steps] == ["reserve", "charge_card"]
        with pytest.raises(UnknownDefinition, match="registered versions: 1, 2"):
            await orchestrator.start("order", {}, version=3)
        with pytest.raises(UnknownDefinition, match="'refund'"):
            await orchestrator.start("refund", {})
        with pytest.raises(InvalidArgument, match="version=2 but"):
            await orchestrator.start(order_v1, {}, version=2)

    asyncio.run(go())


def test_a_worker_never_runs_a_saga_pinned_to_another_table_of_its_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Version 1 was edited without a bump: a worker with the edited table leaves the
    sagas started on the old one (logging it once), runs those pinned to its own and the
    unpinned ones written before fingerprints; a worker with the old table runs the old."""

    async def go() -> tuple[str, str, str]:
        store = MemoryStore()
        old = await Orchestrator(store, [order_v1]).start(order_v1, {})
        mine = await Orchestrator(store, [order_v1_edited]).start(order_v1_edited, {})
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        unpinned, _ = await store.create(new_snapshot(order_v1_edited, "unpinned", {}, an_hour_ago))
        # Unpinned too, but its step records show the table it started on.
        legacy, _ = await store.create(new_snapshot(order_v1, "legacy", {}, an_hour_ago))
        edited = Orchestrator(store, [order_v1_edited], worker_id="edited")
        await polls(Worker(edited, poll_interval=0.01), 5)
        left = await store.load(old.saga_id)
        assert (left.state, left.version) == ("pending", old.version)  # untouched
        assert await store.history(old.saga_id) == []
        assert await store.lease(old.saga_id) is None
        assert (await store.load(mine.saga_id)).state == "completed"
        assert (await store.load(unpinned.saga_id)).state == "completed"
        # Asked to drive it anyway, it refuses and leaves the lease free.
        with pytest.raises(TableChanged, match=f"pinned to table {V1[:12]}") as refused:
            await edited.resume(old.saga_id)
        assert (refused.value.pinned, refused.value.registered) == (V1, V1_EDITED)
        assert await store.lease(old.saga_id) is None
        assert (await store.load(legacy.saga_id)).state == "pending"
        found = await find_unrunnable(store, [order_v1_edited, order_v2])
        assert [u.snapshot.saga_id for u in found] == ["legacy", old.saga_id]
        assert "(unpinned) has the steps reserve, charge, not those" in found[0].reason
        assert "changed without a version bump" in found[1].reason
        original = Orchestrator(store, [order_v1], worker_id="original")
        await serve(Worker(original, poll_interval=0.01), all_finished(store))
        assert await find_unrunnable(store, [order_v1_edited]) == []
        return old.saga_id, mine.saga_id, unpinned.saga_id

    with caplog.at_level(logging.INFO, logger="saga_fsm"):
        old, mine, unpinned = asyncio.run(go())
    assert tables_run(old) == tables_run("legacy") == {"v1"}
    assert tables_run(mine) == tables_run(unpinned) == {"v1-edited"}
    leaving = [r.getMessage() for r in caplog.records if "edited: leaving" in r.getMessage()]
    assert sorted(leaving) == [
        f"worker edited: leaving 1 saga(s) of order v1 pinned to table {V1[:12]}, not the"
        " table registered here: they need a worker with theirs (saga-fsm ls --unrunnable)",
        "worker edited: leaving 1 saga(s) of order v1 started before fingerprints, on other"
        " steps, not the table registered here: they need a worker with theirs"
        " (saga-fsm ls --unrunnable)",
        "worker edited: leaving saga legacy: no definition 'order' version 1 is registered:"
        " saga legacy (unpinned) has the steps reserve, charge, not those of the registered"
        " table: register the one it started with, or migrate it",
    ]


def test_unrunnable_sagas_name_why() -> None:
    async def go() -> None:
        store = MemoryStore()
        client = Orchestrator(store, [order_v1, order_v2])
        a = await client.start("order", {}, version=1)
        b = await client.start("order", {})
        found = await find_unrunnable(store, [order_v2])
        assert [(u.snapshot.saga_id, u.reason) for u in found] == [
            (
                a.saga_id,
                "no definition 'order' version 1 is registered: register it with this orchestrator",
            )
        ]
        assert await find_unrunnable(store, [order_v1, order_v2]) == []
        assert [u.snapshot.saga_id for u in await find_unrunnable(store, [])] == [
            a.saga_id,
            b.saga_id,
        ]
        assert await find_unrunnable(store, [], names=["refund"]) == []
        (newest,) = await find_unrunnable(store, [], limit=1)
        assert newest.snapshot.saga_id == b.saga_id

    asyncio.run(go())


# -- the lock of released fingerprints ------------------------------------------------------


def test_assert_definitions_locked(tmp_path: Path) -> None:
    lock = tmp_path / "saga_definitions.lock"
    with pytest.raises(DefinitionsNotLocked, match="no lock file"):
        assert_definitions_locked([order_v1], lock)
    lock.write_text(
        json.dumps(
            {"format": 1, "definitions": [{"name": "order", "version": 1, "fingerprint": V1}]}
        )
    )
    assert_definitions_locked([order_v1], lock)
    with pytest.raises(DefinitionsNotLocked) as changed:
        assert_definitions_locked([order_v1_edited, order_v2], lock)
    assert changed.value.problems == [
        f"order version 1: fingerprint {V1} is now {V1_EDITED} (a released version changed:"
        " bump its version, or run with --update)",
        f"order version 2: not in the lock (fingerprint {V2}): add it with saga-fsm"
        " check-definitions --lock",
    ]
    assert isinstance(changed.value, AssertionError)
    lock.write_text("{}")
    with pytest.raises(InvalidArgument, match="not a saga definitions lock file"):
        assert_definitions_locked([order_v1], lock)


# -- migrations -----------------------------------------------------------------------------

RENAME = {"running:charge": "running:charge_card"}
NOW = datetime(2030, 1, 1, tzinfo=UTC)


async def parked_and_pending(store: MemoryStore) -> tuple[Snapshot, Snapshot]:
    """A version 1 saga parked in failed (its charge declined, its release failed) and
    one still pending."""
    orchestrator = Orchestrator(store, [order_v1, order_v2], worker_id="w")
    versioned_sagas.BROKEN["release"] = True
    parked = await orchestrator.run("order", {"decline": True}, version=1)
    assert (parked.state, parked.parked_at) == ("failed", "compensating:reserve")
    pending = await orchestrator.start("order", {}, version=1)
    versioned_sagas.BROKEN["release"] = False
    return parked, pending


def test_migrate_moves_parked_and_pending_sagas_with_the_state_mapping() -> None:
    async def go() -> None:
        store = MemoryStore()
        parked, pending = await parked_and_pending(store)
        done = await migrate_sagas(
            store, [order_v2], "order", from_version=1, to_version=2, state_map=RENAME, now=NOW
        )
        assert {s.saga_id for s in done.migrated} == {parked.saga_id, pending.saga_id}
        assert done.left == ()
        moved = await store.load(parked.saga_id)
        assert (moved.definition_version, moved.definition_fingerprint) == (2, V2)
        assert (moved.state, moved.parked_at) == ("failed", "compensating:reserve")
        assert [(r.name, r.status.value) for r in moved.steps] == [
            ("reserve", "compensation_failed"),
            ("charge_card", "failed"),
        ]
        assert moved.steps[1].error == parked.steps[1].error  # the record, re-keyed
        last = (await store.history(parked.saga_id))[-1]
        assert (last.from_state, last.to_state, last.trigger) == ("failed", "failed", "migrate")
        assert last.detail == {
            "from_version": 1,
            "to_version": 2,
            "from_fingerprint": V1,
            "to_fingerprint": V2,
            "steps": {"charge": "charge_card"},
        }
        # Now on version 2: a worker with version 2 only runs them to the end.
        v2 = Orchestrator(store, [order_v2], worker_id="v2")
        assert (await v2.retry(parked.saga_id)).state == "compensating:reserve"
        await serve(Worker(v2, poll_interval=0.01), all_finished(store))
        assert (await store.load(parked.saga_id)).state == "compensated"
        assert (await store.load(pending.saga_id)).state == "completed"
        assert tables_run(pending.saga_id) == {"v2"}

    asyncio.run(go())


def test_migrate_refuses_what_the_target_table_cannot_hold_and_changes_nothing() -> None:
    async def go() -> None:
        store = MemoryStore()
        parked, pending = await parked_and_pending(store)
        before = {s.saga_id: s for s in await store.list() if isinstance(s, Snapshot)}
        with pytest.raises(MigrationRefused) as refused:
            await migrate_sagas(store, [order_v2], "order", from_version=1, to_version=2, now=NOW)
        assert refused.value.reasons == {
            parked.saga_id: "step 'charge' is failed and version 2 has no step 'charge': map it"
            " with --state running:charge=running:STEP"
        }
        with pytest.raises(MigrationRefused) as refused:
            await migrate_sagas(
                store,
                [order_v2],
                "order",
                from_version=1,
                to_version=2,
                state_map={"pending": "running:charge_card", **RENAME},
                now=NOW,
            )
        assert refused.value.reasons == {
            pending.saga_id: "step 'reserve' comes before 'charge_card' in version 2 but is"
            " pending, not succeeded"
        }
        with pytest.raises(MigrationRefused, match="mapped to both"):
            await migrate_sagas(
                store,
                [order_v2],
                "order",
                from_version=1,
                to_version=2,
                state_map={**RENAME, "compensating:charge": "compensating:reserve"},
                now=NOW,
            )
        with pytest.raises(MigrationRefused, match="'nowhere' is not a saga state"):
            await migrate_sagas(
                store,
                [order_v2],
                "order",
                from_version=1,
                to_version=2,
                state_map={"failed": "nowhere"},
                now=NOW,
            )
        with pytest.raises(UnknownDefinition, match="version 2"):
            await migrate_sagas(store, [order_v1], "order", from_version=1, to_version=2, now=NOW)
        after = {s.saga_id: s for s in await store.list() if isinstance(s, Snapshot)}
        assert after == before

    asyncio.run(go())


def test_migrate_refuses_a_saga_a_live_worker_holds() -> None:
    async def go() -> None:
        store = MemoryStore()
        parked, pending = await parked_and_pending(store)
        await store.acquire(pending.saga_id, "busy", now=NOW, lease_seconds=60)
        with pytest.raises(MigrationRefused) as refused:
            await migrate_sagas(
                store,
                [order_v2],
                "order",
                from_version=1,
                to_version=2,
                state_map=RENAME,
                ids=[pending.saga_id, parked.saga_id],
                now=NOW,
            )
        assert refused.value.reasons == {
            pending.saga_id: "a live worker holds its lease: stop it, or wait for it to hand"
            " the saga back"
        }
        assert (await store.load(parked.saga_id)).definition_version == 1
        # Given no ids, the held one is left (and said so), the others move.
        done = await migrate_sagas(
            store, [order_v2], "order", from_version=1, to_version=2, state_map=RENAME, now=NOW
        )
        assert [s.saga_id for s in done.migrated] == [parked.saga_id]
        assert [saga_id for saga_id, _ in done.left] == [pending.saga_id]
        # Once the lease ran out it may move.
        later = NOW + timedelta(minutes=5)
        done = await migrate_sagas(
            store, [order_v2], "order", from_version=1, to_version=2, state_map=RENAME, now=later
        )
        assert [s.saga_id for s in done.migrated] == [pending.saga_id]

    asyncio.run(go())


def test_migrate_moves_a_saga_between_attempts_and_refuses_one_in_flight() -> None:
    async def go() -> None:
        store = MemoryStore()
        at = datetime.now(UTC)
        fresh = new_snapshot(order_v1, "waiting", {}, at, fingerprint=V1)
        waiting = attrs.evolve(
            fresh,
            state="running:charge",
            steps=(
                StepRecord("reserve", StepStatus.SUCCEEDED, 1),
                StepRecord("charge", StepStatus.FAILED, 1, error=ErrorInfo("E", "try again")),
            ),
            wake_at=at,
        )
        await store.create(waiting)
        in_flight = attrs.evolve(
            new_snapshot(order_v1, "in-flight", {}, at, fingerprint=V1),
            state="running:reserve",
            steps=(StepRecord("reserve", StepStatus.RUNNING, 1), StepRecord("charge")),
        )
        await store.create(in_flight)
        with pytest.raises(MigrationRefused) as refused:
            await migrate_sagas(
                store,
                [order_v2],
                "order",
                from_version=1,
                to_version=2,
                state_map=RENAME,
                ids=["waiting", "in-flight"],
                now=at,
            )
        assert refused.value.reasons == {
            "in-flight": "step 'reserve' is in flight (it may be acting now): resume it first"
        }
        done = await migrate_sagas(
            store, [order_v2], "order", from_version=1, to_version=2, state_map=RENAME, now=at
        )
        assert [s.saga_id for s in done.migrated] == ["waiting"]
        assert done.left == (
            ("in-flight", "step 'reserve' is in flight (it may be acting now): resume it first"),
        )
        moved = await store.load("waiting")
        assert (moved.state, moved.step("charge_card").attempts) == ("running:charge_card", 1)
        v2 = Orchestrator(store, [order_v2], worker_id="v2")
        assert (await v2.resume("waiting")).state == "completed"
        assert tables_run("waiting") == {"v2"}

    asyncio.run(go())


# -- PostgreSQL: two workers, two versions, one store --------------------------------------


def test_two_workers_with_different_versions_share_a_postgres_store(postgres_dsn: str) -> None:
    """One worker serves version 1, the other version 2 and the edited version 1 (another
    table under the same version): each saga runs on exactly the table it started on."""

    async def go() -> dict[str, str]:
        first = await PostgresStore.open(postgres_dsn, max_size=4)
        second = await PostgresStore.open(postgres_dsn, max_size=4)
        try:
            starters = {
                "v1": Orchestrator(first, [order_v1]),
                "v1-edited": Orchestrator(first, [order_v1_edited]),
                "v2": Orchestrator(second, [order_v2]),
            }
            started: dict[str, str] = {}
            for n in range(12):
                for table, client in starters.items():
                    saga = await client.start("order", {"n": n})
                    started[saga.saga_id] = table
            old = Worker(Orchestrator(first, [order_v1], worker_id="old"), poll_interval=0.01)
            new = Worker(
                Orchestrator(second, [order_v2, order_v1_edited], worker_id="new"),
                poll_interval=0.01,
            )
            stop = asyncio.Event()
            tasks = [asyncio.create_task(w.run(stop, grace=1)) for w in (old, new)]
            try:
                async with asyncio.timeout(60):
                    while not await all_finished(first)():
                        await asyncio.sleep(0.02)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            assert old.driven == 12 and new.driven == 24
            for saga in await first.list():
                assert isinstance(saga, Snapshot) and saga.state == "completed"
            return started
        finally:
            await first.close()
            await second.close()

    started = asyncio.run(go())
    for saga_id, table in started.items():
        assert tables_run(saga_id) == {table}, saga_id


# -- the README ------------------------------------------------------------------------------


def test_the_readme_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    section = readme_section("Versioned definitions")
    done = run_example(python_example(section), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed_output(section)
    # The shell session, command by command.
    session = re.findall(r"^\$ (saga-fsm .*)\n((?:(?!\$ ).*\n)*?)(?=\$ |```)", section, re.M)
    assert len(session) == 2
    for command, output in session:
        ran = subprocess.run(
            [sys.executable, "-m", "saga_fsm.cli", *command.split()[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert (ran.returncode, ran.stdout) == (0, output), ran.stderr

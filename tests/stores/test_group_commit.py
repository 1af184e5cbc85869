"""Group commit: writes of sagas driven at once share a transaction, and each still gets
its own outcome, exactly as if it had been written alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from saga_fsm import ConcurrencyConflict, PostgresStore, StoreError
from saga_fsm._core import Event, decide, new_snapshot
from saga_fsm.stores._group import GroupCommit
from tests.helpers import three_step

NOW = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)


class Recorder:
    def __init__(self, *, fail_on: str | None = None, error: Exception | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.error = error or ValueError("bad item")

    async def execute(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0.001)
        if self.fail_on in items:
            raise self.error
        return [item.upper() for item in items]


def test_a_lone_write_goes_at_once_and_writes_that_meet_share_a_batch() -> None:
    async def go() -> tuple[Recorder, list[str]]:
        recorder = Recorder()
        group: GroupCommit[str, str] = GroupCommit(recorder.execute)
        assert await group.submit("a", "first") == "FIRST"
        results = await asyncio.gather(*(group.submit(k, k) for k in "bcdefg"))
        return recorder, results

    recorder, results = asyncio.run(go())
    assert recorder.batches[0] == ["first"]
    assert results == list("BCDEFG")
    assert len(recorder.batches) < 1 + 6  # the six queued behind one another's batch


def test_one_key_per_batch() -> None:
    async def go() -> Recorder:
        recorder = Recorder()
        group: GroupCommit[str, str] = GroupCommit(recorder.execute)
        await asyncio.gather(*(group.submit("same", f"w{n}") for n in range(4)))
        return recorder

    assert all(len(batch) == 1 for batch in asyncio.run(go()).batches)


def test_a_bad_write_fails_alone() -> None:
    async def go() -> list[object]:
        recorder = Recorder(fail_on="bad")
        group: GroupCommit[str, str] = GroupCommit(recorder.execute)
        return await asyncio.gather(
            *(group.submit(k, k) for k in ("x", "y", "bad", "z")), return_exceptions=True
        )

    results = asyncio.run(go())
    assert results[:2] == ["X", "Y"] and results[3] == "Z"
    assert isinstance(results[2], ValueError)


def test_an_error_every_write_would_meet_reaches_all_at_once() -> None:
    async def go() -> tuple[Recorder, list[object]]:
        recorder = Recorder(fail_on="w1", error=ConnectionError("down"))
        group: GroupCommit[str, str] = GroupCommit(
            recorder.execute, retry_alone=lambda err: not isinstance(err, ConnectionError)
        )
        first = asyncio.ensure_future(group.submit("w0", "w0"))
        await asyncio.sleep(0)
        rest = [group.submit(f"w{n}", f"w{n}") for n in range(1, 5)]
        return recorder, list(await asyncio.gather(first, *rest, return_exceptions=True))

    recorder, results = asyncio.run(go())
    assert results[0] == "W0"
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    assert len(recorder.batches) == 2  # not retried one by one


# -- PostgreSQL --------------------------------------------------------------------------


def test_postgres_saves_of_many_sagas_share_commits(postgres_dsn: str) -> None:
    definition = three_step()

    async def go() -> None:
        store = await PostgresStore.open(postgres_dsn, max_size=4)
        try:
            created = await asyncio.gather(
                *(store.create(new_snapshot(definition, f"s{n}", {"n": n}, NOW)) for n in range(20))
            )
            snapshots = [s for s, fresh in created if fresh]
            assert len(snapshots) == 20
            decisions = [decide(definition, s, Event.start(NOW)) for s in snapshots]
            saved = await asyncio.gather(
                *(store.save(d.snapshot, d.history, expected_version=1) for d in decisions[2:])
            )
            assert [s.version for s in saved] == [2] * 18
            assert store._saves.items == 18 and store._saves.batches < 18
            # A stale write (wrong expected version) and one PostgreSQL refuses (\u0000
            # cannot be stored in JSONB) in the same batch as good ones.
            bad = decide(
                definition,
                new_snapshot(definition, "s1", {"n": "\u0000"}, NOW).with_version(1),
                Event.start(NOW),
            )
            second = [
                decide(definition, s, Event("step_succeeded", NOW, step="reserve", attempt=1))
                for s in saved[:4]
            ]
            first = asyncio.ensure_future(
                store.save(second[0].snapshot, second[0].history, expected_version=2)
            )
            await asyncio.sleep(0)  # the rest queue behind it and go as one batch
            results = await asyncio.gather(
                first,
                *(store.save(d.snapshot, d.history, expected_version=2) for d in second[1:]),
                store.save(decisions[0].snapshot, decisions[0].history, expected_version=7),
                store.save(bad.snapshot, bad.history, expected_version=1),
                return_exceptions=True,
            )
            assert [r.version for r in results[:4]] == [3] * 4  # type: ignore[union-attr]
            assert isinstance(results[4], ConcurrencyConflict)
            assert isinstance(results[5], StoreError)
            for n in range(2, 20):
                loaded = await store.load(f"s{n}")
                assert loaded.version == (3 if n < 6 else 2)
                triggers = [h.trigger for h in await store.history(f"s{n}")]
                assert triggers == (["start", "step_succeeded"] if n < 6 else ["start"])
            for n in (0, 1):
                assert (await store.load(f"s{n}")).version == 1
                assert await store.history(f"s{n}") == []
        finally:
            await store.close()

    asyncio.run(go())


def test_postgres_concurrent_creates_with_one_idempotency_key(postgres_dsn: str) -> None:
    definition = three_step()

    async def go() -> None:
        store = await PostgresStore.open(postgres_dsn, max_size=4)
        try:
            results = await asyncio.gather(
                *(
                    store.create(new_snapshot(definition, f"k{n}", {}, NOW, idempotency_key="one"))
                    for n in range(5)
                ),
                *(store.create(new_snapshot(definition, f"o{n}", {}, NOW)) for n in range(5)),
            )
            assert sum(created for _, created in results[:5]) == 1
            assert len({s.saga_id for s, _ in results[:5]}) == 1
            assert all(created for _, created in results[5:])
        finally:
            await store.close()

    asyncio.run(go())


@pytest.mark.parametrize("size", [1, 3])
def test_postgres_duplicate_saga_id_is_a_conflict_in_a_batch_too(
    postgres_dsn: str, size: int
) -> None:
    definition = three_step()

    async def go() -> list[object]:
        store = await PostgresStore.open(postgres_dsn, max_size=4)
        try:
            await store.create(new_snapshot(definition, "dup", {}, NOW))
            return list(
                await asyncio.gather(
                    store.create(new_snapshot(definition, "dup", {}, NOW)),
                    *(
                        store.create(new_snapshot(definition, f"f{n}", {}, NOW))
                        for n in range(size - 1)
                    ),
                    return_exceptions=True,
                )
            )
        finally:
            await store.close()

    results = asyncio.run(go())
    assert isinstance(results[0], ConcurrencyConflict)
    assert all(isinstance(r, tuple) and r[1] for r in results[1:])

"""The store contract, run against every store: memory, SQLite and PostgreSQL: its
SnapshotStore half (snapshots, history) and its WorkerLeases half (claims, leases).

A store that passes here can replace any other under the orchestrator.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
import pytest
from attrs import evolve, frozen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_fsm._codec import snapshot_to_json
from saga_fsm._core import Event, decide, new_snapshot
from saga_fsm._definition import SagaBuilder, SagaDefinition, StepContext
from saga_fsm._errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    NotQuarantined,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
)
from saga_fsm._snapshot import (
    ErrorInfo,
    HistoryEntry,
    SagaStatus,
    Snapshot,
    StepRecord,
    StepStatus,
)
from saga_fsm.stores import (
    Lease,
    MemoryStore,
    PostgresStore,
    QuarantinedSaga,
    SagaStore,
    SnapshotStore,
    SqliteStore,
    WorkerLeases,
)

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))


def _noop(ctx: StepContext) -> None:
    return None


ORDER = (
    SagaBuilder("order")
    .step("reserve", _noop, compensation=_noop)
    .pivot("charge", _noop)
    .retriable("notify", _noop)
    .build()
)
REFUND = SagaBuilder("refund").step("credit", _noop, compensation=_noop).build()


# -- harness ---------------------------------------------------------------------------------
@frozen
class Harness:
    """One store, the event loop it lives on, and a back door to corrupt its rows."""

    kind: str
    store: SagaStore
    runner: asyncio.Runner
    write_raw: Callable[[str, str], None]
    """(saga_id, text) -> put ``text`` in the stored snapshot, bypassing the codec."""

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await awaitable

        return self.runner.run(wrap())


def _memory_raw(store: MemoryStore) -> Callable[[str, str], None]:
    def write(saga_id: str, text: str) -> None:
        store._rows[saga_id].encoded = text

    return write


def _sqlite_raw(path: str) -> Callable[[str, str], None]:
    def write(saga_id: str, text: str) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE saga_fsm_sagas SET snapshot = ? WHERE saga_id = ?", (text, saga_id)
            )
        conn.close()

    return write


def _postgres_raw(conninfo: str) -> Callable[[str, str], None]:
    def write(saga_id: str, text: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "UPDATE saga_fsm_sagas SET snapshot = %s::jsonb WHERE saga_id = %s",
                (text, saga_id),
            )

    return write


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def harness(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Harness]:
    kind: str = request.param
    with asyncio.Runner() as runner:
        store: SagaStore
        if kind == "memory":
            memory = MemoryStore()
            store, raw = memory, _memory_raw(memory)
        elif kind == "sqlite":
            path = str(tmp_path / "sagas.db")
            store, raw = SqliteStore(path), _sqlite_raw(path)
        else:
            conninfo: str = request.getfixturevalue("postgres_dsn")
            store = runner.run(PostgresStore.open(conninfo, max_size=4))
            raw = _postgres_raw(conninfo)
        try:
            yield Harness(kind, store, runner, raw)
        finally:
            runner.run(store.close())


# -- snapshots ---------------------------------------------------------------------------------
def started(
    saga_id: str = "s-1",
    *,
    definition: SagaDefinition = ORDER,
    at: datetime = T0,
    key: str | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[Snapshot, tuple[HistoryEntry, ...]]:
    """A saga just started: ``running:<first step>`` with its step marked running."""
    fresh = new_snapshot(
        definition,
        saga_id,
        {"order": {"id": 7, "lines": [{"sku": "A", "qty": 2}], "note": "ünïcødé"}}
        if data is None
        else data,
        at,
        correlation_id="corr-1",
        idempotency_key=key,
    )
    decision = decide(definition, fresh, Event.start(at))
    return decision.snapshot, decision.history


def advanced(snapshot: Snapshot) -> tuple[Snapshot, tuple[HistoryEntry, ...]]:
    """The running step failed (retryable): an error, a back-off ``wake_at``."""
    step = snapshot.current_step
    attempt = snapshot.step(step).attempts if step else None
    error = ErrorInfo("TimeoutError", "gateway slow", retryable=True)
    at = snapshot.updated_at + timedelta(seconds=3)
    decision = decide(ORDER, snapshot, Event("step_failed", at, step, attempt, error=error))
    return decision.snapshot, decision.history


def rich_snapshot() -> Snapshot:
    """Every kind of field set, datetimes in several zones, nested data."""
    return Snapshot(
        saga_id="rich",
        definition="order",
        definition_version=3,
        state="compensating:reserve",
        steps=(
            StepRecord(
                "reserve",
                StepStatus.COMPENSATING,
                attempts=2,
                compensation_attempts=1,
                result={"reservation": {"id": "r-1", "items": [1, 2.5, None, True]}},
                started_at=datetime(2024, 5, 1, 14, 0, tzinfo=CEST),
                finished_at=datetime(2024, 5, 1, 12, 0, 1, 500, tzinfo=UTC),
                deadline=datetime(2024, 5, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5))),
            ),
            StepRecord(
                "charge",
                StepStatus.FAILED,
                attempts=3,
                error=ErrorInfo("payments.Declined", "card declined: 'insufficient'", False),
            ),
            StepRecord("notify", StepStatus.SKIPPED),
        ),
        data={"nested": {"deep": {"list": [{"a": 1}, [], {}]}}, "empty": "", "big": 2**70},
        created_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        updated_at=datetime(2024, 5, 1, 14, 0, 2, 123456, tzinfo=CEST),
        correlation_id="corr-9",
        idempotency_key="order-9",
        wake_at=datetime(2024, 5, 1, 12, 5, tzinfo=UTC),
        cancel_requested=True,
        parked_at=None,
        failure=ErrorInfo("payments.Declined", "card declined", retryable=False),
        definition_ref="shop.sagas:ORDER",
    )


# -- SnapshotStore: what persists snapshots -----------------------------------------------
def test_is_a_snapshot_store(harness: Harness) -> None:
    assert isinstance(harness.store, SnapshotStore)


def test_create_then_load_round_trips(harness: Harness) -> None:
    snapshot = rich_snapshot()
    history = (
        HistoryEntry("pending", "running:reserve", "start", T0, {"step": "reserve"}),
        HistoryEntry("running:reserve", "running:charge", "step_succeeded", T0, {}),
    )
    stored, created = harness.run(harness.store.create(snapshot, history))
    assert created
    assert stored == evolve(snapshot, version=1)
    loaded = harness.run(harness.store.load("rich"))
    assert loaded == stored
    # Timezones survive as written, not merely as the same instant.
    assert loaded.updated_at.utcoffset() == timedelta(hours=2)
    assert loaded.steps[0].deadline is not None
    assert loaded.steps[0].deadline.utcoffset() == timedelta(hours=-5)
    assert harness.run(harness.store.history("rich")) == list(history)


def test_create_from_the_core(harness: Harness) -> None:
    snapshot, history = started("s-1")
    stored, created = harness.run(harness.store.create(snapshot, history))
    assert created and stored.version == 1
    assert harness.run(harness.store.load("s-1")) == stored
    assert [h.to_state for h in harness.run(harness.store.history("s-1"))] == ["running:reserve"]


def test_duplicate_idempotency_key_returns_the_existing_saga(harness: Harness) -> None:
    first, history = started("s-1", key="order-42")
    stored, _ = harness.run(harness.store.create(first, history))
    again, again_history = started("s-2", key="order-42")  # the same request again
    existing, created = harness.run(harness.store.create(again, again_history))
    assert not created
    assert existing == stored
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.load("s-2"))
    assert len(harness.run(harness.store.history("s-1"))) == len(history)
    assert harness.run(harness.store.list()) == [stored]


@pytest.mark.parametrize("other", ["data", "definition"])
def test_an_idempotency_key_reused_for_another_request_is_refused(
    harness: Harness, other: str
) -> None:
    stored, _ = harness.run(harness.store.create(started("s-1", key="order-42")[0]))
    # The saga moving on (its data growing) does not change what the key stood for.
    harness.run(harness.store.save(*advanced(stored), expected_version=1))
    if other == "data":
        clash, _ = started("s-2", key="order-42", data={"other": True})
    else:
        clash, _ = started("s-2", key="order-42", definition=REFUND)
    with pytest.raises(IdempotencyKeyReused) as caught:
        harness.run(harness.store.create(clash))
    assert (caught.value.key, caught.value.saga_id) == ("order-42", "s-1")
    with pytest.raises(IdempotencyKeyReused):
        harness.run(harness.store.create_many([started("s-3")[0], clash]))
    assert [s.saga_id for s in harness.run(harness.store.list())] == ["s-1"]
    same, created = harness.run(harness.store.create(started("s-4", key="order-42")[0]))
    assert (same.saga_id, created) == ("s-1", False)


def test_create_many_writes_all_or_nothing(harness: Harness) -> None:
    keyed = started("k-1", key="batch:1")[0]
    harness.run(harness.store.create(keyed))
    batch = [started("m-1")[0], started("m-2", key="batch:1")[0], started("m-3")[0]]
    stored = harness.run(harness.store.create_many(batch))
    # New ones at version 1; a key already taken (the same request) gives its saga.
    assert [s.saga_id for s in stored] == ["m-1", "k-1", "m-3"]
    assert stored[0] == batch[0].with_version(1)
    assert harness.run(harness.store.load("m-3")) == stored[2]
    assert harness.run(harness.store.history("m-1")) == []
    assert harness.run(harness.store.create_many([])) == []
    before = harness.run(harness.store.list())
    # A taken saga id in the middle of a batch: nothing of it is written.
    with pytest.raises(ConcurrencyConflict):
        harness.run(
            harness.store.create_many([started("n-1")[0], started("m-2")[0], started("m-1")[0]])
        )
    # A value JSON cannot hold: refused before anything is written.
    bad = evolve(started("n-3")[0], data={"x": float("nan")})
    with pytest.raises(ValueError):
        harness.run(harness.store.create_many([started("n-2")[0], bad]))
    assert harness.run(harness.store.list()) == before


def test_sagas_without_a_key_never_collide(harness: Harness) -> None:
    for saga_id in ("a", "b"):
        harness.run(harness.store.create(started(saga_id)[0]))
    assert len(harness.run(harness.store.list())) == 2


def test_duplicate_saga_id_conflicts_and_writes_nothing(harness: Harness) -> None:
    first, history = started("s-1")
    stored, _ = harness.run(harness.store.create(first, history))
    clash, clash_history = started("s-1", definition=REFUND, key="fresh-key")
    with pytest.raises(ConcurrencyConflict) as caught:
        harness.run(harness.store.create(clash, clash_history))
    assert caught.value.saga_id == "s-1"
    assert caught.value.actual_version == 1
    assert harness.run(harness.store.load("s-1")) == stored
    assert len(harness.run(harness.store.history("s-1"))) == len(history)
    # The failed create did not claim its idempotency key either.
    reuse, _ = started("s-2", key="fresh-key")
    assert harness.run(harness.store.create(reuse))[1]


def test_save_bumps_version_and_appends_history(harness: Harness) -> None:
    first, history = started("s-1")
    stored, _ = harness.run(harness.store.create(first, history))
    second, more = advanced(stored)
    saved = harness.run(harness.store.save(second, more, expected_version=1))
    assert saved == evolve(second, version=2)
    assert harness.run(harness.store.load("s-1")) == saved
    assert harness.run(harness.store.history("s-1")) == [*history, *more]
    third = evolve(saved, data={"x": 1})
    extra = [HistoryEntry("a", "b", "t1", T0 + timedelta(seconds=i), {"i": i}) for i in range(12)]
    assert harness.run(harness.store.save(third, extra, expected_version=2)).version == 3
    assert harness.run(harness.store.history("s-1"))[-12:] == extra  # order kept
    assert harness.run(harness.store.load("s-1")).version == 3


def test_stale_save_conflicts_and_changes_nothing(harness: Harness) -> None:
    first, history = started("s-1")
    stored, _ = harness.run(harness.store.create(first, history))
    second, more = advanced(stored)
    saved = harness.run(harness.store.save(second, more, expected_version=1))
    for stale in (0, 1, 5):
        with pytest.raises(ConcurrencyConflict) as caught:
            harness.run(
                harness.store.save(evolve(stored, state="failed"), more, expected_version=stale)
            )
        assert (caught.value.expected_version, caught.value.actual_version) == (stale, 2)
    assert harness.run(harness.store.load("s-1")) == saved
    assert harness.run(harness.store.history("s-1")) == [*history, *more]


def test_racing_saves_one_wins(harness: Harness) -> None:
    stored, _ = harness.run(harness.store.create(started("s-1")[0]))
    a = evolve(stored, data={"winner": "a"})
    b = evolve(stored, data={"winner": "b"})
    entry = HistoryEntry("x", "y", "race", T0)

    async def race() -> tuple[object, ...]:
        return await asyncio.gather(
            harness.store.save(a, [entry], expected_version=1),
            harness.store.save(b, [entry], expected_version=1),
            return_exceptions=True,
        )

    results = harness.run(race())
    winners = [r for r in results if isinstance(r, Snapshot)]
    losers = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert harness.run(harness.store.load("s-1")) == winners[0]
    assert len(harness.run(harness.store.history("s-1"))) == 1


def test_racing_creates_with_one_key_make_one_saga(harness: Harness) -> None:
    attempts = [started(f"s-{i}", key="order-1")[0] for i in range(8)]

    async def race() -> tuple[tuple[Snapshot, bool], ...]:
        return tuple(await asyncio.gather(*(harness.store.create(s) for s in attempts)))

    results = harness.run(race())
    assert sum(created for _, created in results) == 1
    assert all(snapshot == results[0][0] for snapshot, _ in results)
    assert len(harness.run(harness.store.list())) == 1


def test_save_of_an_unknown_saga_is_not_found(harness: Harness) -> None:
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.save(started("ghost")[0], [], expected_version=1))


def test_unknown_ids_are_not_found(harness: Harness) -> None:
    with pytest.raises(SagaNotFound) as caught:
        harness.run(harness.store.load("nope"))
    assert caught.value.saga_id == "nope"
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.history("nope"))


def test_a_saga_without_history_has_an_empty_one(harness: Harness) -> None:
    harness.run(harness.store.create(started("s-1")[0]))
    assert harness.run(harness.store.history("s-1")) == []


def test_values_json_cannot_hold_change_nothing(harness: Harness) -> None:
    stored, _ = harness.run(harness.store.create(started("s-1")[0]))
    with pytest.raises(TypeError):
        harness.run(
            harness.store.save(evolve(stored, data={"x": object()}), [], expected_version=1)
        )
    with pytest.raises(TypeError):
        harness.run(harness.store.create(started("s-2", data={"x": object()})[0]))
    assert harness.run(harness.store.load("s-1")) == stored
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.load("s-2"))
    # The store still works afterwards.
    assert harness.run(harness.store.save(stored, [], expected_version=1)).version == 2


def _populate(harness: Harness) -> dict[str, Snapshot]:
    """Sagas in several states and definitions, created at known times."""
    spec = [
        ("c", ORDER, T0, "running:reserve"),
        ("a", ORDER, T0, "running:charge"),
        ("B", ORDER, T0, "compensating:reserve"),  # "B" < "a" < "c" by code point
        ("d", REFUND, T0 - timedelta(hours=1), "running:credit"),
        # Same instant as T0 + 1 min, written in another zone.
        ("e", REFUND, (T0 + timedelta(minutes=1)).astimezone(CEST), "completed"),
        ("f", ORDER, T0 + timedelta(days=1), "running"),
    ]
    made = {}
    for saga_id, definition, at, state in spec:
        snapshot = evolve(started(saga_id, definition=definition, at=at)[0], state=state)
        made[saga_id] = harness.run(harness.store.create(snapshot))[0]
    return made


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["d", "B", "a", "c", "e", "f"]),
        ({"state": "running"}, ["d", "a", "c", "f"]),
        ({"state": "running:charge"}, ["a"]),
        ({"state": "compensating"}, ["B"]),
        ({"state": "completed"}, ["e"]),
        ({"state": "runnin"}, []),  # a status matches whole words only
        ({"state": "running_"}, []),  # and "_" is no wildcard
        ({"state": "running:"}, []),
        ({"state": "failed"}, []),
        ({"definition": "refund"}, ["d", "e"]),
        ({"definition": "refund", "state": "running"}, ["d"]),
        ({"definition": "nope"}, []),
        ({"limit": 2}, ["d", "B"]),
        ({"limit": 0}, []),
        ({"state": "running", "limit": 3}, ["d", "a", "c"]),
        ({"updated_before": T0}, ["d"]),  # strictly before
        ({"updated_before": T0 + timedelta(minutes=1)}, ["d", "B", "a", "c"]),
        ({"updated_before": T0 + timedelta(days=2), "definition": "refund"}, ["d", "e"]),
    ],
)
def test_list_filters_and_orders(
    harness: Harness, filters: dict[str, Any], expected: list[str]
) -> None:
    made = _populate(harness)
    found = harness.run(harness.store.list(**filters))
    assert [s.saga_id for s in found] == expected
    assert found == [made[i] for i in expected]


def test_list_sees_saved_states(harness: Harness) -> None:
    made = _populate(harness)
    harness.run(harness.store.save(evolve(made["a"], state="completed"), [], expected_version=1))
    assert [s.saga_id for s in harness.run(harness.store.list(state="completed"))] == ["a", "e"]
    assert [s.saga_id for s in harness.run(harness.store.list(state="running"))] == ["d", "c", "f"]


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"schema_version": 99, "saga_id": "s-1"}', "unknown schema_version 99"),
        ('{"saga_id": "s-1"}', "unknown schema_version None"),
        ("SNAPSHOT_WITH_BAD_STEPS", "steps"),
    ],
)
def test_a_corrupt_row_raises_snapshot_decode_error(
    harness: Harness, garbage: str, reason: str
) -> None:
    if garbage == "{not json" and harness.kind == "postgres":
        pytest.skip("a JSONB column cannot hold text that is not JSON")
    stored, _ = harness.run(harness.store.create(started("s-1")[0]))
    harness.run(harness.store.create(started("s-2")[0]))
    if garbage == "SNAPSHOT_WITH_BAD_STEPS":
        from saga_fsm._codec import dumps, snapshot_to_dict

        encoded = snapshot_to_dict(stored)
        encoded["steps"] = [{"name": "reserve", "status": "exploded"}]
        garbage = dumps(encoded)
    harness.write_raw("s-1", garbage)
    with pytest.raises(SnapshotDecodeError) as caught:
        harness.run(harness.store.load("s-1"))
    # A list returns the error in the row's place, and the others as they are.
    listed, other = harness.run(harness.store.list())
    assert isinstance(listed, SnapshotDecodeError)
    for error in (caught.value, listed):
        assert error.saga_id == "s-1"
        assert "s-1" in str(error)
        assert reason in str(error)
    assert isinstance(other, Snapshot) and other.saga_id == "s-2"
    assert harness.run(harness.store.load("s-2")).saga_id == "s-2"


# -- WorkerLeases: what coordinates workers (claims, leases, quarantine) ---------------------
W1, W2 = "worker-1", "worker-2"
NOW = datetime(2024, 5, 1, 14, 0, tzinfo=CEST)  # == T0 + 0h, written in another zone
LEASE = 30.0
SERVED = [("order", 1), ("refund", 1)]


def test_a_negative_limit_is_refused(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "s-1", {}, T0))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        harness.run(harness.store.list(limit=-1))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        harness.run(
            harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=-1, definitions=SERVED)
        )
    assert _lease(harness, "s-1") is None  # nothing claimed


def _create(harness: Harness, snapshot: Snapshot, lease: Lease | None = None) -> Snapshot:
    return harness.run(harness.store.create(snapshot, lease=lease))[0]


def _lease(harness: Harness, saga_id: str) -> Lease | None:
    return harness.run(harness.store.lease(saga_id))


def _due_world(harness: Harness) -> dict[str, Snapshot]:
    """Sagas due at different times, or never, or held by a live lease."""
    pending = new_snapshot(ORDER, "pending", {}, T0 - timedelta(hours=2))
    in_flight, _ = started("in-flight", at=T0 - timedelta(hours=1))
    backing_off, _ = advanced(started("backing-off", at=T0 - timedelta(minutes=30))[0])
    future, _ = advanced(started("future", at=T0 + timedelta(hours=1))[0])
    done = evolve(pending, saga_id="done", state="completed")
    held = evolve(pending, saga_id="held", created_at=T0 - timedelta(hours=3))
    expired = evolve(pending, saga_id="expired", created_at=T0 - timedelta(hours=4))
    made = [pending, in_flight, backing_off, future, done]
    world = {s.saga_id: _create(harness, s) for s in made}
    world["held"] = _create(harness, held, Lease(W2, T0 + timedelta(minutes=1)))
    world["expired"] = _create(harness, expired, Lease(W2, T0 - timedelta(minutes=1)))
    return world


def test_due_at_is_what_the_snapshot_says(harness: Harness) -> None:
    world = _due_world(harness)
    assert world["backing-off"].wake_at is not None
    assert world["backing-off"].due_at == world["backing-off"].wake_at
    assert world["in-flight"].due_at == world["in-flight"].updated_at
    assert world["done"].due_at is None


def test_claim_due_leases_due_sagas_in_due_order(harness: Harness) -> None:
    world = _due_world(harness)
    claimed = harness.run(
        harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    expected = ["expired", "pending", "in-flight", "backing-off"]
    assert [c.saga_id for c in claimed if isinstance(c, Snapshot)] == expected
    for snapshot in claimed:
        assert isinstance(snapshot, Snapshot)
        before = world[snapshot.saga_id]
        # Exactly the old snapshot at a new version; the lease is in the store's columns.
        leased = evolve(before, version=before.version + 1)
        assert snapshot == leased
        assert harness.run(harness.store.load(snapshot.saga_id)) == leased
        assert _lease(harness, snapshot.saga_id) == Lease(W1, NOW + timedelta(seconds=LEASE))
    # Everything due is leased now; the history is untouched by leases.
    assert (
        harness.run(
            harness.store.claim_due(W2, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
        )
        == []
    )
    assert harness.run(harness.store.history("in-flight")) == []


def test_claim_due_takes_over_expired_leases_and_respects_limit(harness: Harness) -> None:
    _due_world(harness)
    first = harness.run(
        harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=2, definitions=SERVED)
    )
    assert [c.saga_id for c in first] == ["expired", "pending"]
    assert (
        harness.run(
            harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=0, definitions=SERVED)
        )
        == []
    )
    later = NOW + timedelta(seconds=LEASE + 1)  # W1's leases ran out; "held" still live
    taken = harness.run(
        harness.store.claim_due(W2, now=later, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert [c.saga_id for c in taken] == ["expired", "pending", "in-flight", "backing-off"]
    until = later + timedelta(seconds=LEASE)
    assert all(_lease(harness, c.saga_id) == Lease(W2, until) for c in taken)
    assert [c.version for c in taken if isinstance(c, Snapshot)] == [3, 3, 2, 2]


def test_concurrent_claimers_never_share_a_saga(harness: Harness) -> None:
    for i in range(20):
        _create(harness, new_snapshot(ORDER, f"s-{i:02}", {}, T0 - timedelta(minutes=i)))

    async def claim_all() -> list[list[Snapshot | SnapshotDecodeError]]:
        return list(
            await asyncio.gather(
                *(
                    harness.store.claim_due(
                        f"w{n}", now=NOW, lease_seconds=LEASE, limit=6, definitions=SERVED
                    )
                    for n in range(5)
                )
            )
        )

    batches = harness.run(claim_all())
    ids = [str(c.saga_id) for batch in batches for c in batch]
    assert len(ids) == len(set(ids))
    assert all(len(batch) <= 6 for batch in batches)
    rest = harness.run(
        harness.store.claim_due("w9", now=NOW, lease_seconds=LEASE, limit=20, definitions=SERVED)
    )
    assert sorted([*ids, *(str(c.saga_id) for c in rest)]) == [f"s-{i:02}" for i in range(20)]
    for batch in batches:
        for snapshot in batch:
            assert isinstance(snapshot, Snapshot)
            assert harness.run(harness.store.load(snapshot.saga_id)) == snapshot


def test_claim_due_leases_an_undecodable_row_and_returns_its_error(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "good", {}, T0 - timedelta(hours=1)))
    _create(harness, new_snapshot(ORDER, "bad", {}, T0 - timedelta(hours=2)))
    harness.write_raw("bad", '{"schema_version": 99, "saga_id": "bad"}')
    claimed = harness.run(
        harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert isinstance(claimed[0], SnapshotDecodeError) and claimed[0].saga_id == "bad"
    assert isinstance(claimed[1], Snapshot) and claimed[1].saga_id == "good"
    # Leased, so not handed out again until the lease runs out.
    assert (
        harness.run(
            harness.store.claim_due(W2, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
        )
        == []
    )
    later = NOW + timedelta(seconds=LEASE + 1)
    again = harness.run(
        harness.store.claim_due(W2, now=later, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert [c.saga_id for c in again] == ["bad", "good"]
    assert isinstance(again[0], SnapshotDecodeError)


def test_an_undecodable_row_is_listed_as_its_error_and_hides_nothing(harness: Harness) -> None:
    for n in range(3):
        _create(harness, new_snapshot(ORDER, f"s-{n}", {}, T0 + timedelta(minutes=n)))
    harness.write_raw("s-1", '{"x": 1}')
    listed = harness.run(harness.store.list())
    assert [type(item).__name__ for item in listed] == [
        "Snapshot",
        "SnapshotDecodeError",
        "Snapshot",
    ]
    assert [item.saga_id for item in listed] == ["s-0", "s-1", "s-2"]
    bad = listed[1]
    assert isinstance(bad, SnapshotDecodeError) and "schema_version" in bad.reason
    # Filters work on the row's columns: the bad row is found (or not) like any other.
    assert len(harness.run(harness.store.list(state="pending", limit=2))) == 2
    assert len(harness.run(harness.store.list(unfinished=True))) == 3


def test_list_unfinished_leaves_finished_and_failed_sagas_out(harness: Harness) -> None:
    for n, state in enumerate(["completed", "running:charge", "compensated", "failed", "pending"]):
        snapshot = evolve(new_snapshot(ORDER, f"s-{n}", {}, T0 + timedelta(minutes=n)), state=state)
        _create(harness, snapshot)
    harness.write_raw("s-0", '{"x": 1}')  # a finished row is never even decoded
    found = harness.run(harness.store.list(unfinished=True))
    assert [s.saga_id for s in found] == ["s-1", "s-4"]
    assert all(isinstance(s, Snapshot) for s in found)
    assert [s.saga_id for s in harness.run(harness.store.list(unfinished=True, limit=1))] == ["s-1"]
    older = T0 + timedelta(minutes=2)
    assert harness.run(harness.store.list(unfinished=True, updated_before=older)) == found[:1]


def test_quarantine_sets_a_row_aside_until_it_is_fixed(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "good", {}, T0 - timedelta(hours=1)))
    bad = _create(harness, new_snapshot(ORDER, "bad", {}, T0 - timedelta(hours=2)))
    harness.write_raw("bad", '{"x": 1}')
    (error, _good) = harness.run(
        harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert isinstance(error, SnapshotDecodeError)
    with pytest.raises(NotQuarantined):
        harness.run(harness.store.unquarantine("bad"))
    harness.run(harness.store.quarantine("bad", error.reason, now=NOW))
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.quarantine("nope", "why", now=NOW))
    (listed,) = harness.run(harness.store.list_quarantined())
    assert listed == QuarantinedSaga("bad", error.reason, NOW)
    assert harness.run(harness.store.list_quarantined(limit=0)) == []
    # Its lease was dropped, yet no worker claims it again, however late.
    later = NOW + timedelta(days=1)
    claim = harness.store.claim_due(
        W2, now=later, lease_seconds=LEASE, limit=10, definitions=SERVED
    )
    assert [c.saga_id for c in harness.run(claim)] == ["good"]
    # Still undecodable: refused, and it stays quarantined.
    with pytest.raises(SnapshotDecodeError):
        harness.run(harness.store.unquarantine("bad"))
    assert len(harness.run(harness.store.list_quarantined())) == 1
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.unquarantine("nope"))
    # Fixed by an operator: claimable again.
    harness.write_raw("bad", snapshot_to_json(bad))
    assert harness.run(harness.store.unquarantine("bad")) == evolve(bad, version=2)  # claimed once
    assert harness.run(harness.store.list_quarantined()) == []
    (again,) = harness.run(
        harness.store.claim_due(W2, now=later, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert again.saga_id == "bad"


def test_release_frees_an_undecodable_row(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "bad", {}, T0))
    harness.write_raw("bad", '{"x": 1}')
    (error,) = harness.run(
        harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert isinstance(error, SnapshotDecodeError)
    harness.run(harness.store.release("bad", W1))
    (again,) = harness.run(
        harness.store.claim_due(W2, now=NOW, lease_seconds=LEASE, limit=10, definitions=SERVED)
    )
    assert isinstance(again, SnapshotDecodeError)


def test_claim_due_takes_only_the_served_definitions(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "o-1", {}, T0))
    _create(harness, new_snapshot(REFUND, "r-1", {}, T0))
    _create(harness, evolve(new_snapshot(ORDER, "o-2", {}, T0), definition_version=2))

    def claim(worker: str, served: list[tuple[str, int]]) -> list[str]:
        found = harness.store.claim_due(
            worker, now=NOW, lease_seconds=LEASE, limit=10, definitions=served
        )
        return [c.saga_id for c in harness.run(found)]

    assert claim(W1, []) == []
    assert claim(W1, [("refund", 1)]) == ["r-1"]
    assert claim(W1, [("order", 2), ("refund", 1)]) == ["o-2"]
    assert claim(W2, [("order", 1), ("order", 1)]) == ["o-1"]


def test_claim_due_leaves_sagas_pinned_to_another_table(harness: Harness) -> None:
    """(name, version, fingerprint): a saga pinned to another table of that version is
    left; one pinned to none (written before fingerprints) runs on whatever is given."""
    old, new = "a" * 64, "b" * 64
    _create(harness, new_snapshot(ORDER, "on-old", {}, T0 - timedelta(minutes=3), fingerprint=old))
    _create(harness, new_snapshot(ORDER, "on-new", {}, T0 - timedelta(minutes=2), fingerprint=new))
    _create(harness, new_snapshot(ORDER, "unpinned", {}, T0 - timedelta(minutes=1)))

    def claim(worker: str, served: list[Any], now: datetime = NOW) -> list[str]:
        found = harness.store.claim_due(
            worker, now=now, lease_seconds=LEASE, limit=10, definitions=served
        )
        return [c.saga_id for c in harness.run(found)]

    assert claim(W1, [("order", 1, new)]) == ["on-new", "unpinned"]
    assert claim(W2, [("order", 2, old), ("refund", 1, old)]) == []
    assert claim(W2, [("order", 1, old)]) == ["on-old"]
    # A (name, version) pair takes any table of that version.
    later = NOW + timedelta(seconds=LEASE + 1)
    assert claim(W1, [("order", 1)], later) == ["on-old", "on-new", "unpinned"]


def test_acquire(harness: Harness) -> None:
    done = _create(harness, evolve(new_snapshot(ORDER, "s-1", {}, T0), state="completed"))
    with pytest.raises(SagaNotFound):
        harness.run(harness.store.acquire("nope", W1, now=NOW, lease_seconds=LEASE))
    # Due or not, a saga can be acquired.
    mine = harness.run(harness.store.acquire("s-1", W1, now=NOW, lease_seconds=LEASE))
    expires = NOW + timedelta(seconds=LEASE)
    assert mine == evolve(done, version=2)
    assert _lease(harness, "s-1") == Lease(W1, expires)
    assert harness.run(harness.store.load("s-1")) == mine
    with pytest.raises(SagaLeased) as caught:
        harness.run(harness.store.acquire("s-1", W2, now=NOW, lease_seconds=LEASE))
    assert (caught.value.saga_id, caught.value.owner, caught.value.until) == ("s-1", W1, expires)
    assert harness.run(harness.store.load("s-1")) == mine
    assert _lease(harness, "s-1") == Lease(W1, expires)
    # The holder may acquire again; anyone may once the lease has run out.
    again = harness.run(harness.store.acquire("s-1", W1, now=NOW, lease_seconds=LEASE))
    assert again.version == 3
    later = NOW + timedelta(seconds=LEASE)  # expiry is not "live"
    taken = harness.run(harness.store.acquire("s-1", W2, now=later, lease_seconds=LEASE))
    assert taken.version == 4
    assert _lease(harness, "s-1") == Lease(W2, later + timedelta(seconds=LEASE))
    with pytest.raises(SagaNotFound):
        _lease(harness, "nope")
    # Each acquire bumped the version: a writer holding an older one is fenced off.
    with pytest.raises(ConcurrencyConflict):
        harness.run(harness.store.save(again, [], expected_version=again.version))


def test_renew_leases(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "s-1", {}, T0))
    leased = harness.run(harness.store.acquire("s-1", W1, now=NOW, lease_seconds=LEASE))
    store = harness.store
    assert (
        harness.run(store.renew_leases(["s-1"], W2, expires_at=NOW + timedelta(hours=1))) == set()
    )
    assert harness.run(store.renew_leases(["nope"], W1, expires_at=NOW)) == set()
    assert harness.run(store.renew_leases([], W1, expires_at=NOW)) == set()
    assert harness.run(store.load("s-1")) == leased
    assert _lease(harness, "s-1") == Lease(W1, NOW + timedelta(seconds=LEASE))
    later = NOW + timedelta(minutes=5)  # past expiry, but nobody took it: still W1's
    assert harness.run(store.renew_leases(["s-1", "nope", "s-1"], W1, expires_at=later)) == {"s-1"}
    renewed = harness.run(store.load("s-1"))
    assert renewed == leased  # no version bump
    assert _lease(harness, "s-1") == Lease(W1, later)
    assert (
        harness.run(store.claim_due(W2, now=NOW, lease_seconds=LEASE, limit=5, definitions=SERVED))
        == []
    )
    # The holder still saves at the same version.
    assert harness.run(store.save(renewed, [], expected_version=leased.version))
    with pytest.raises(TypeError, match="collection of saga ids"):
        harness.run(store.renew_leases("s-1", W1, expires_at=later))


def test_renew_leases_many_at_once(harness: Harness) -> None:
    """More ids than one statement carries (PostgreSQL renews 1000 per statement), a
    mix of held, foreign and unknown ones: exactly the held ones come back, renewed."""
    count = 1205
    for n in range(count):
        _create(harness, new_snapshot(ORDER, f"s-{n:04}", {}, T0))
    claimed = harness.run(
        harness.store.claim_due(W1, now=NOW, lease_seconds=LEASE, limit=count, definitions=SERVED)
    )
    assert len(claimed) == count
    harness.run(harness.store.acquire("s-0007", W2, now=NOW + timedelta(hours=1), lease_seconds=1))
    later = NOW + timedelta(minutes=5)
    wanted = [f"s-{n:04}" for n in range(count)] + ["unknown"]
    held = harness.run(harness.store.renew_leases(wanted, W1, expires_at=later))
    assert held == set(wanted) - {"s-0007", "unknown"}
    assert _lease(harness, "s-1204") == Lease(W1, later)
    lease = _lease(harness, "s-0007")
    assert lease is not None and lease.owner == W2


def test_release(harness: Harness) -> None:
    _create(harness, new_snapshot(ORDER, "s-1", {}, T0))
    leased = harness.run(harness.store.acquire("s-1", W1, now=NOW, lease_seconds=LEASE))
    harness.run(harness.store.release("s-1", W2))  # not W2's: nothing happens
    harness.run(harness.store.release("nope", W1))
    assert _lease(harness, "s-1") == Lease(W1, NOW + timedelta(seconds=LEASE))
    harness.run(harness.store.release("s-1", W1))
    assert harness.run(harness.store.load("s-1")) == leased  # no version bump
    assert _lease(harness, "s-1") is None
    # Free at once: claimable and acquirable by another worker.
    claimed = harness.run(
        harness.store.claim_due(W2, now=NOW, lease_seconds=LEASE, limit=5, definitions=SERVED)
    )
    assert [c.saga_id for c in claimed] == ["s-1"]


def test_a_save_keeps_the_lease_until_the_saga_is_no_longer_due(harness: Harness) -> None:
    held = Lease(W1, T0 + timedelta(minutes=1))
    stored = _create(harness, new_snapshot(ORDER, "s-1", {}, T0 - timedelta(hours=1)), held)
    assert _lease(harness, "s-1") == held
    running, _ = advanced(started()[0])
    saved = harness.run(harness.store.save(running, [], expected_version=1))
    assert _lease(harness, "s-1") == held  # a write leaves the lease alone
    assert (
        harness.run(
            harness.store.claim_due(W2, now=T0, lease_seconds=LEASE, limit=5, definitions=SERVED)
        )
        == []
    )
    harness.run(harness.store.save(evolve(saved, state="completed"), [], expected_version=2))
    assert _lease(harness, "s-1") is None  # finished: no lease left
    # A saga created finished has none either, whatever its creator asked.
    _create(harness, evolve(stored, saga_id="s-2", state="completed"), held)
    assert _lease(harness, "s-2") is None


def test_a_store_is_both_halves(harness: Harness) -> None:
    assert isinstance(harness.store, SnapshotStore)
    assert isinstance(harness.store, WorkerLeases)
    assert isinstance(harness.store, SagaStore)


# -- property: any snapshot round-trips --------------------------------------------------------
_offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=_offsets
)
_maybe_naive = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.one_of(st.none(), _offsets),
)
# JSONB rejects U+0000 and lone surrogates, and turns floats written with an exponent
# >= 16 into ints (see saga_fsm/stores/postgres.py). Data within those limits must
# survive every store.
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(_text, _json, max_size=4)
_errors = st.builds(ErrorInfo, _text, _text, st.booleans())
_steps = st.builds(
    StepRecord,
    name=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    status=st.sampled_from(StepStatus),
    attempts=st.integers(0, 50),
    compensation_attempts=st.integers(0, 50),
    result=st.none() | _objects,
    error=st.none() | _errors,
    started_at=st.none() | _maybe_naive,
    finished_at=st.none() | _maybe_naive,
    deadline=st.none() | _maybe_naive,
)
_states = st.builds(
    lambda status, step: status.value if step is None else f"{status.value}:{step}",
    st.sampled_from(SagaStatus),
    st.none() | st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
)


@st.composite
def _snapshots(draw: st.DrawFn) -> Snapshot:
    """Consistent where the stores look inside (the state's step is one of the steps, so
    ``due_at`` is defined), arbitrary everywhere else."""
    steps = tuple(draw(st.lists(_steps, max_size=4, unique_by=lambda s: s.name)))
    status = draw(st.sampled_from(SagaStatus))
    step = draw(st.none() | st.sampled_from([s.name for s in steps])) if steps else None
    return draw(
        st.builds(
            Snapshot,
            saga_id=_text,
            definition=_text,
            definition_version=st.integers(1, 2**31 - 1),
            state=st.just(status.value if step is None else f"{status.value}:{step}"),
            steps=st.just(steps),
            data=_objects,
            created_at=_maybe_naive,
            updated_at=_maybe_naive,
            correlation_id=st.none() | _text,
            idempotency_key=st.none() | _text,
            version=st.integers(0, 1000),
            wake_at=st.none() | _maybe_naive,
            cancel_requested=st.booleans(),
            parked_at=st.none() | _states,
            failure=st.none() | _errors,
            definition_ref=st.none() | _text,
            traceparent=st.none() | _text,
        )
    )


_histories = st.lists(
    st.builds(HistoryEntry, _states, _states, _text, _datetimes, _objects), max_size=3
)


@settings(
    max_examples=40,
    deadline=None,
    # One store serves every example; each example uses its own saga id and key.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(snapshot=_snapshots(), history=_histories)
def test_any_snapshot_round_trips(
    harness: Harness, snapshot: Snapshot, history: list[HistoryEntry]
) -> None:
    unique = uuid.uuid4().hex
    snapshot = evolve(
        snapshot,
        saga_id=snapshot.saga_id + unique,
        idempotency_key=None
        if snapshot.idempotency_key is None
        else snapshot.idempotency_key + unique,
    )
    stored, created = harness.run(harness.store.create(snapshot, history))
    assert created
    assert harness.run(harness.store.load(snapshot.saga_id)) == stored == snapshot.with_version(1)
    assert harness.run(harness.store.history(snapshot.saga_id)) == history
    saved = harness.run(harness.store.save(snapshot, history, expected_version=1))
    assert harness.run(harness.store.load(snapshot.saga_id)) == saved == snapshot.with_version(2)


# -- ids by prefix -------------------------------------------------------------------------------
def test_find_ids_by_prefix(harness: Harness) -> None:
    for saga_id in ("ab12-x", "ab12-y", "ab13", "AB12-upper", "a%b", "a_c", "a\\d", "zz", "ab1"):
        _create(harness, new_snapshot(ORDER, saga_id, {}, T0))
    find = harness.store.find_ids
    assert harness.run(find("ab12", 10)) == ["ab12-x", "ab12-y"]
    assert harness.run(find("ab1", 10)) == ["ab1", "ab12-x", "ab12-y", "ab13"]
    assert harness.run(find("ab1", 2)) == ["ab1", "ab12-x"]
    assert harness.run(find("ab12-y", 10)) == ["ab12-y"]
    assert harness.run(find("ab12-yz", 10)) == []
    # Taken literally: LIKE's wildcards and its escape character are plain characters.
    assert harness.run(find("a%", 10)) == ["a%b"]
    assert harness.run(find("a_", 10)) == ["a_c"]
    assert harness.run(find("a\\", 10)) == ["a\\d"]
    assert harness.run(find("A", 10)) == ["AB12-upper"]
    assert len(harness.run(find("", 100))) == 9
    assert harness.run(find("ab", 0)) == []
    with pytest.raises(ValueError, match="limit"):
        harness.run(find("ab", -1))


def test_count_and_newest_first(harness: Harness) -> None:
    for n in range(5):
        snapshot, history = started(f"s-{n}", at=T0 + timedelta(seconds=n))
        harness.run(harness.store.create(snapshot, history))
    harness.run(harness.store.create(new_snapshot(REFUND, "r-1", {}, T0 + timedelta(hours=1))))
    store = harness.store
    assert harness.run(store.count()) == 6
    assert harness.run(store.count(state="running")) == 5
    assert harness.run(store.count(state="pending", definition="refund")) == 1
    assert harness.run(store.count(definition="order", state="completed")) == 0
    assert harness.run(store.count(updated_before=T0 + timedelta(seconds=2))) == 2
    newest = harness.run(store.list(limit=3, newest_first=True))
    assert [s.saga_id for s in newest] == ["r-1", "s-4", "s-3"]
    newest = harness.run(store.list(state="running", limit=2, newest_first=True))
    assert [s.saga_id for s in newest] == ["s-4", "s-3"]
    oldest = harness.run(store.list(limit=2))
    assert [s.saga_id for s in oldest] == ["s-0", "s-1"]

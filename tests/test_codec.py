"""The codec's fast encoding is the converter's, byte for byte: the stored format has
one definition (cattrs, pinned by tests/test_golden.py), the fast path only skips work."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_fsm import ErrorInfo, HistoryEntry, Snapshot, StepRecord, StepStatus
from saga_fsm._codec import (
    dumps,
    history_to_dict,
    snapshot_from_json,
    snapshot_to_dict,
    snapshot_to_json,
)
from saga_fsm.stores.postgres import _aware, _history_json, _write_json
from tests.test_golden import golden_snapshot


def reference_json(snapshot: Snapshot) -> str:
    return json.dumps(
        snapshot_to_dict(snapshot), separators=(",", ":"), sort_keys=True, allow_nan=False
    )


class Colour(enum.StrEnum):
    RED = "red"


texts = st.text(max_size=12)
times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.none()
) | st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(texts, inner, max_size=3)
        | st.tuples(inner, inner)
    ),
    max_leaves=8,
)
errors = st.none() | st.builds(ErrorInfo, texts, texts, st.booleans())
records = st.builds(
    StepRecord,
    name=texts,
    status=st.sampled_from(StepStatus),
    attempts=st.integers(0, 10),
    compensation_attempts=st.integers(0, 10),
    result=st.none() | st.dictionaries(texts, json_values, max_size=3),
    error=errors,
    started_at=st.none() | times,
    finished_at=st.none() | times,
    deadline=st.none() | times,
)
snapshots = st.builds(
    Snapshot,
    saga_id=texts,
    definition=texts,
    definition_version=st.integers(1, 5),
    state=texts,
    steps=st.lists(records, max_size=4),
    data=st.dictionaries(texts, json_values, max_size=4),
    created_at=times,
    updated_at=times,
    correlation_id=st.none() | texts,
    idempotency_key=st.none() | texts,
    version=st.integers(0, 1000),
    wake_at=st.none() | times,
    cancel_requested=st.booleans(),
    parked_at=st.none() | texts,
    failure=errors,
    definition_ref=st.none() | texts,
    traceparent=st.none() | texts,
    definition_fingerprint=st.none() | texts,
)


@settings(max_examples=300, deadline=None)
@given(snapshots)
def test_fast_encoding_is_the_converters(snapshot: Snapshot) -> None:
    assert snapshot_to_json(snapshot) == reference_json(snapshot)


def reference_history(history: list[HistoryEntry]) -> str:
    rows = []
    for entry in history:
        row = history_to_dict(entry)
        row["at"] = _aware(entry.at).isoformat()  # type: ignore[union-attr]
        rows.append(row)
    return dumps(rows)


entries = st.builds(
    HistoryEntry, texts, texts, texts, times, st.dictionaries(texts, json_values, max_size=3)
)


@settings(max_examples=100, deadline=None)
@given(st.lists(entries, max_size=3))
def test_postgres_history_encoding_is_the_converters(history: list[HistoryEntry]) -> None:
    assert _history_json(history) == reference_history(history)


@pytest.mark.parametrize(
    "data",
    [
        {"when": datetime(2026, 1, 1, tzinfo=UTC)},  # the converter rewrites it
        {"colour": Colour.RED, "ints": (1, 2)},
    ],
)
def test_values_json_cannot_hold_as_they_are_go_through_the_converter(data: dict[str, Any]) -> None:
    snapshot = evolve(golden_snapshot(), data=data)
    assert snapshot_to_json(snapshot) == reference_json(snapshot)


def test_what_json_cannot_hold_is_refused_as_before() -> None:
    snapshot = evolve(golden_snapshot(), data={"x": float("nan")})
    with pytest.raises(ValueError):
        snapshot_to_json(snapshot)
    with pytest.raises(ValueError):
        reference_json(snapshot)


def test_golden_snapshot_round_trips() -> None:
    golden = golden_snapshot()
    assert snapshot_from_json(snapshot_to_json(golden)) == golden


def _utc_text(value: datetime | None) -> str | None:
    aware = _aware(value)
    return None if aware is None else aware.isoformat()


@settings(max_examples=100, deadline=None)
@given(
    snapshots,
    st.sampled_from(["pending", "completed", "failed"]),
    st.lists(entries, max_size=2),
    st.none() | st.integers(0, 1000),
)
def test_postgres_write_element_holds_the_columns_snapshot_and_history(
    snapshot: Snapshot, state: str, history: list[HistoryEntry], expected_version: int | None
) -> None:
    snapshot = evolve(snapshot, state=state)  # due_at reads the state
    element = json.loads(_write_json(snapshot, history, expected_version))
    assert element == {
        "saga_id": snapshot.saga_id,
        "expected_version": expected_version,
        "version": snapshot.version,
        "definition": snapshot.definition,
        "definition_version": snapshot.definition_version,
        "state": snapshot.state,
        "correlation_id": snapshot.correlation_id,
        "idempotency_key": snapshot.idempotency_key,
        "wake_at": _utc_text(snapshot.wake_at),
        "due_at": _utc_text(snapshot.due_at),
        "lease_owner": None,
        "lease_expires_at": None,
        "created_at": _utc_text(snapshot.created_at),
        "updated_at": _utc_text(snapshot.updated_at),
        "request_fingerprint": None,
        "snapshot": json.loads(snapshot_to_json(snapshot)),
        "history": json.loads(_history_json(history)),
    }

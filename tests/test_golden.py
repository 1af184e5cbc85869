"""Golden files guard the storage format: a change here breaks stored sagas."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from saga_fsm import ErrorInfo, Snapshot, SnapshotDecodeError, StepRecord, StepStatus
from saga_fsm._codec import snapshot_from_json, snapshot_to_dict, snapshot_to_json

GOLDEN_V1 = Path(__file__).parent / "golden" / "snapshot_v1.json"
GOLDEN = Path(__file__).parent / "golden" / "snapshot_v2.json"
T = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


def golden_snapshot() -> Snapshot:
    return Snapshot(
        saga_id="0b7e2c52-golden",
        definition="order_fulfillment",
        definition_version=1,
        state="compensating:reserve_inventory",
        steps=(
            StepRecord(
                "reserve_inventory",
                StepStatus.COMPENSATING,
                1,
                1,
                {"reservation_id": "r-1"},
                None,
                T,
                T,
                T,
            ),
            StepRecord(
                "process_payment",
                StepStatus.FAILED,
                3,
                0,
                None,
                ErrorInfo("saga_fsm.StepFailed", "card declined", retryable=False),
                T,
                T,
                None,
            ),
            StepRecord("create_shipment", StepStatus.SKIPPED),
            StepRecord("send_confirmation", StepStatus.SKIPPED),
        ),
        data={
            "order_id": "o-1",
            "amount": 30,
            "lines": [{"sku": "a", "qty": 2}],
            "reservation_id": "r-1",
        },
        created_at=T,
        updated_at=T,
        correlation_id="o-1",
        idempotency_key="start-o-1",
        wake_at=T,
        cancel_requested=False,
        parked_at=None,
        failure=ErrorInfo("saga_fsm.StepFailed", "card declined", retryable=False),
        definition_ref="saga_fsm.examples.order_fulfillment:definition",
    )


def test_encoding_matches_the_golden_file() -> None:
    expected = json.loads(GOLDEN.read_text())
    assert snapshot_to_dict(golden_snapshot()) == expected, (
        "the snapshot encoding changed: bump SCHEMA_VERSION, keep reading the older"
        " versions, and add a new golden file"
    )


def test_golden_file_decodes() -> None:
    assert snapshot_from_json(GOLDEN.read_text()) == golden_snapshot()


def test_version_1_with_the_store_columns_inside_still_decodes() -> None:
    """Version 1 documents carried the optimistic version and the lease, which are the
    store's columns now: read past, never written again."""
    old = json.loads(GOLDEN_V1.read_text())
    assert (old["schema_version"], old["version"], old["lease_owner"]) == (1, 7, "worker-1")
    assert snapshot_from_json(GOLDEN_V1.read_text()) == golden_snapshot()
    assert {"version", "lease_owner", "lease_expires_at"}.isdisjoint(json.loads(GOLDEN.read_text()))


def test_unknown_schema_version_is_refused_naming_the_saga() -> None:
    body = json.loads(GOLDEN.read_text())
    body["schema_version"] = 99
    with pytest.raises(SnapshotDecodeError, match=r"0b7e2c52-golden.*schema_version 99"):
        snapshot_from_json(json.dumps(body))
    with pytest.raises(SnapshotDecodeError, match="not JSON"):
        snapshot_from_json("{", saga_id="x")


GOLDEN_TRACED = Path(__file__).parent / "golden" / "snapshot_v2_traceparent.json"
GOLDEN_V1_TRACED = Path(__file__).parent / "golden" / "snapshot_v1_traceparent.json"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_trace_context_is_encoded_only_when_set() -> None:
    traced = attrs.evolve(golden_snapshot(), traceparent=TRACEPARENT)
    assert snapshot_to_dict(traced) == json.loads(GOLDEN_TRACED.read_text())
    assert snapshot_from_json(GOLDEN_TRACED.read_text()) == traced
    assert snapshot_from_json(GOLDEN_V1_TRACED.read_text()) == traced
    assert json.loads(snapshot_to_json(traced)) == snapshot_to_dict(traced)
    assert "traceparent" not in snapshot_to_json(golden_snapshot())


GOLDEN_PINNED = Path(__file__).parent / "golden" / "snapshot_v2_fingerprint.json"
FINGERPRINT = "5f1d3b9c" * 8


def test_a_table_fingerprint_is_encoded_only_when_set() -> None:
    """Pinned snapshots carry ``definition_fingerprint``; those written before it existed
    have none and decode unpinned (they run on whatever table is registered under their
    name and version). Optional like the trace context: schema version 2 still."""
    pinned = attrs.evolve(golden_snapshot(), definition_fingerprint=FINGERPRINT)
    assert snapshot_to_dict(pinned) == json.loads(GOLDEN_PINNED.read_text())
    assert snapshot_from_json(GOLDEN_PINNED.read_text()) == pinned
    assert json.loads(snapshot_to_json(pinned)) == snapshot_to_dict(pinned)
    assert "definition_fingerprint" not in snapshot_to_json(golden_snapshot())
    for older in (GOLDEN, GOLDEN_V1, GOLDEN_TRACED, GOLDEN_V1_TRACED):
        assert snapshot_from_json(older.read_text()).definition_fingerprint is None

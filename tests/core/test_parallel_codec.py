"""A parallel group's branches in the snapshot JSON: encoded only on the group's record,
the fast path writes what the converter does, and everything round-trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from saga_fsm import BranchRecord, ErrorInfo, Snapshot, StepRecord, StepStatus
from saga_fsm._codec import (
    _ENCODE,
    snapshot_from_json,
    snapshot_to_dict,
    snapshot_to_json,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def snapshot(*records: StepRecord) -> Snapshot:
    return Snapshot(
        saga_id="s1",
        definition="p",
        definition_version=1,
        state="running:g",
        steps=records,
        data={"parcels": ["a"]},
        created_at=T0,
        updated_at=T0,
    )


def test_a_record_without_branches_encodes_as_before() -> None:
    encoded = json.loads(snapshot_to_json(snapshot(StepRecord("a"))))
    assert "branches" not in encoded["steps"][0]


def test_branches_round_trip_and_the_fast_path_is_the_converters() -> None:
    branches = (
        BranchRecord(
            "0",
            "compensating:hold",
            (
                StepRecord("hold", StepStatus.COMPENSATING, 1, 1, {"x": 1}, None, T0, T0, T0),
                StepRecord("_join", StepStatus.SKIPPED),
            ),
            data={"x": 1},
            item={"parcel": "a"},
            wake_at=T0,
            cancel_requested=True,
            failure=ErrorInfo("Refused", "no", retryable=False),
            held=True,
        ),
        BranchRecord("1", "pending", (StepRecord("hold"), StepRecord("_join"))),
    )
    s = snapshot(StepRecord("g", StepStatus.RUNNING, 1, branches=branches))
    text = snapshot_to_json(s)
    assert text == _ENCODE(snapshot_to_dict(s))
    assert snapshot_from_json(text) == s
    encoded = json.loads(text)["steps"][0]["branches"]
    assert encoded[1] == {
        "data": {},
        "key": "1",
        "state": "pending",
        "steps": encoded[1]["steps"],
    }  # defaults are left out
    assert encoded[0]["held"] is True and encoded[0]["item"] == {"parcel": "a"}

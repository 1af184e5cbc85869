"""JSON encoding of persisted values through saga_fsm's own cattrs Converter.

Every encoded snapshot carries ``schema_version``; decoding refuses versions it does
not know rather than guessing. Never pickle.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import cattrs
from cattrs.preconf.json import make_converter

from saga_fsm._errors import SnapshotDecodeError
from saga_fsm._snapshot import ErrorInfo, HistoryEntry, Snapshot

SCHEMA_VERSION = 1

converter = make_converter(forbid_extra_keys=True)
converter.register_unstructure_hook(datetime, datetime.isoformat)
converter.register_structure_hook(datetime, lambda v, _: datetime.fromisoformat(v))


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    encoded: dict[str, Any] = converter.unstructure(snapshot)
    encoded["schema_version"] = SCHEMA_VERSION
    return encoded


def snapshot_from_dict(encoded: Any, *, saga_id: str | None = None) -> Snapshot:
    if not isinstance(encoded, dict):
        raise SnapshotDecodeError(saga_id, f"expected a JSON object, got {type(encoded).__name__}")
    body = dict(encoded)
    version = body.pop("schema_version", None)
    if version != SCHEMA_VERSION:
        raise SnapshotDecodeError(
            saga_id or body.get("saga_id"),
            f"unknown schema_version {version!r} (this release reads {SCHEMA_VERSION})",
        )
    try:
        return converter.structure(body, Snapshot)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as err:
        detail = (
            "; ".join(cattrs.transform_error(err))
            if isinstance(err, cattrs.BaseValidationError)
            else str(err)
        )
        raise SnapshotDecodeError(saga_id or body.get("saga_id"), detail) from None


def snapshot_to_json(snapshot: Snapshot) -> str:
    """The snapshot's JSON text: exactly ``dumps(snapshot_to_dict(snapshot))``, built on
    the fast path when the saga data is plain JSON (see ``_plain_snapshot``)."""
    # allow_nan=False: every store must refuse what PostgreSQL's JSONB cannot hold.
    try:
        return _ENCODE(_plain_snapshot(snapshot))
    except (TypeError, ValueError):
        # Data the converter would rewrite first (or refuse with its own message).
        return _ENCODE(snapshot_to_dict(snapshot))


_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "retryable": error.retryable}


def _plain_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    """What ``snapshot_to_dict`` gives, field for field, without the converter's generic
    dispatch (the most expensive part of a transition). The saga data and step results
    are handed to ``json`` as they are, not copied: for values JSON encodes natively this
    is the converter's output, and anything else makes ``json`` raise, which sends the
    caller back to the converter. tests/test_codec.py pins the two together."""
    return {
        "saga_id": snapshot.saga_id,
        "definition": snapshot.definition,
        "definition_version": snapshot.definition_version,
        "state": snapshot.state,
        "steps": [
            {
                "name": r.name,
                "status": r.status.value,
                "attempts": r.attempts,
                "compensation_attempts": r.compensation_attempts,
                "result": r.result,
                "error": _error(r.error),
                "started_at": _time(r.started_at),
                "finished_at": _time(r.finished_at),
                "deadline": _time(r.deadline),
            }
            for r in snapshot.steps
        ],
        "data": snapshot.data,
        "created_at": snapshot.created_at.isoformat(),
        "updated_at": snapshot.updated_at.isoformat(),
        "correlation_id": snapshot.correlation_id,
        "idempotency_key": snapshot.idempotency_key,
        "version": snapshot.version,
        "wake_at": _time(snapshot.wake_at),
        "lease_owner": snapshot.lease_owner,
        "lease_expires_at": _time(snapshot.lease_expires_at),
        "cancel_requested": snapshot.cancel_requested,
        "parked_at": snapshot.parked_at,
        "failure": _error(snapshot.failure),
        "definition_ref": snapshot.definition_ref,
        "schema_version": SCHEMA_VERSION,
    }


def snapshot_from_json(text: str | bytes, *, saga_id: str | None = None) -> Snapshot:
    try:
        encoded = json.loads(text)
    except (ValueError, TypeError) as err:
        raise SnapshotDecodeError(saga_id, f"not JSON: {err}") from None
    return snapshot_from_dict(encoded, saga_id=saga_id)


def history_to_dict(entry: HistoryEntry) -> dict[str, Any]:
    encoded: dict[str, Any] = converter.unstructure(entry)
    return encoded


def history_from_dict(encoded: Any) -> HistoryEntry:
    return converter.structure(encoded, HistoryEntry)


def dumps(value: Any) -> str:
    """Compact JSON for saga data and details; rejects anything JSON cannot hold."""
    return _ENCODE(value)

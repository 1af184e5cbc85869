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
from saga_fsm._snapshot import HistoryEntry, Snapshot

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
    # allow_nan=False: every store must refuse what PostgreSQL's JSONB cannot hold.
    return json.dumps(
        snapshot_to_dict(snapshot), separators=(",", ":"), sort_keys=True, allow_nan=False
    )


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
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)

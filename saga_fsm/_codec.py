"""JSON encoding of persisted values through saga_fsm's own cattrs Converter.

Every encoded snapshot carries ``schema_version``; decoding refuses versions it does
not know rather than guessing. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from saga_fsm._errors import InvalidSagaData, SnapshotDecodeError
from saga_fsm._snapshot import BranchRecord, ErrorInfo, HistoryEntry, Snapshot, StepRecord

SCHEMA_VERSION = 2
# Version 1 also held the store's columns: the optimistic version and the lease. They
# are read past (the store's columns are the truth) and never written again.
_STORE_FIELDS_OF_V1 = ("version", "lease_owner", "lease_expires_at")

converter = make_converter(forbid_extra_keys=True)
converter.register_unstructure_hook(datetime, datetime.isoformat)
converter.register_structure_hook(datetime, lambda v, _: datetime.fromisoformat(v))
# A step record without a request id (a local step) encodes as before remote steps
# (registered before Snapshot's hook, which is built with it).
# A parallel group's branches: only a group's record has them, and only then are they
# encoded. (Hooks written out: a branch holds step records, which may hold branches.)
_BRANCH_DEFAULTS = {"item": None, "wake_at": None, "cancel_requested": False}
_BRANCH_DEFAULTS |= {"parked_at": None, "failure": None, "held": False}


def _branch_to_dict(b: BranchRecord) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "key": b.key,
        "state": b.state,
        "steps": [converter.unstructure(r, StepRecord) for r in b.steps],
        "data": converter.unstructure(b.data),
    }
    for name, default in _BRANCH_DEFAULTS.items():
        value = getattr(b, name)
        if value != default or (name == "item" and value is not None):
            encoded[name] = converter.unstructure(value)
    return encoded


def _branch_from_dict(encoded: Any, _: Any) -> BranchRecord:
    if not isinstance(encoded, dict):
        raise ValueError(f"a branch must be an object, got {type(encoded).__name__}")
    unknown = set(encoded) - {"key", "state", "steps", "data", *_BRANCH_DEFAULTS}
    if unknown:
        raise ValueError(f"unknown branch fields {sorted(unknown)}")
    wake_at, failure = encoded.get("wake_at"), encoded.get("failure")
    return BranchRecord(
        key=str(encoded["key"]),
        state=str(encoded["state"]),
        steps=[converter.structure(r, StepRecord) for r in encoded["steps"]],
        data=dict(encoded.get("data") or {}),
        item=encoded.get("item"),
        wake_at=None if wake_at is None else datetime.fromisoformat(wake_at),
        cancel_requested=bool(encoded.get("cancel_requested", False)),
        parked_at=encoded.get("parked_at"),
        failure=None if failure is None else converter.structure(failure, ErrorInfo),
        held=bool(encoded.get("held", False)),
    )


converter.register_unstructure_hook(BranchRecord, _branch_to_dict)
converter.register_structure_hook(BranchRecord, _branch_from_dict)
converter.register_unstructure_hook(
    StepRecord,
    make_dict_unstructure_fn(
        StepRecord,
        converter,
        request_id=override(omit_if_default=True),
        branches=override(omit_if_default=True),
        signal=override(omit_if_default=True),
    ),
)
# ``Snapshot.version`` is the store's column, handed back with the snapshot: not encoded.
# A snapshot without a trace context or a fingerprint encodes exactly as before those
# fields existed (and those written before decode, as unpinned: see Snapshot).
converter.register_unstructure_hook(
    Snapshot,
    make_dict_unstructure_fn(
        Snapshot,
        converter,
        version=override(omit=True),
        traceparent=override(omit_if_default=True),
        definition_fingerprint=override(omit_if_default=True),
        parent_id=override(omit_if_default=True),
        parent_step=override(omit_if_default=True),
    ),
)
converter.register_structure_hook(
    Snapshot,
    make_dict_structure_fn(
        Snapshot, converter, _cattrs_forbid_extra_keys=True, version=override(omit=True)
    ),
)


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    encoded: dict[str, Any] = converter.unstructure(snapshot)
    encoded["schema_version"] = SCHEMA_VERSION
    return encoded


def snapshot_from_dict(encoded: Any, *, saga_id: str | None = None) -> Snapshot:
    if not isinstance(encoded, dict):
        raise SnapshotDecodeError(saga_id, f"expected a JSON object, got {type(encoded).__name__}")
    body = dict(encoded)
    version = body.pop("schema_version", None)
    if version == 1:
        for name in _STORE_FIELDS_OF_V1:
            body.pop(name, None)
    elif version != SCHEMA_VERSION:
        raise SnapshotDecodeError(
            saga_id or body.get("saga_id"),
            f"unknown schema_version {version!r} (this release reads 1 and {SCHEMA_VERSION})",
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
    """The snapshot's JSON text: exactly ``dumps(snapshot_to_dict(snapshot))``, written
    field by field when the saga data is plain JSON (see ``_snapshot_text``)."""
    # allow_nan=False: every store must refuse what PostgreSQL's JSONB cannot hold.
    try:
        return _snapshot_text(snapshot)
    except (TypeError, ValueError):
        # Data the converter would rewrite first (or refuse with its own message).
        return _ENCODE(snapshot_to_dict(snapshot))


_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode
# What the encoder above does to a str (ensure_ascii), without building a list around it.
_STR: Any = json.encoder.encode_basestring_ascii


def _str(value: str | None) -> str:
    return "null" if value is None else _STR(value)


def _time(value: datetime | None) -> str:
    # isoformat() is ASCII digits and separators: nothing for JSON to escape.
    return "null" if value is None else f'"{value.isoformat()}"'


def _traceparent(value: str | None) -> str:
    return "" if value is None else f'"traceparent":{_STR(value)},'


def _fingerprint(value: str | None) -> str:
    return "" if value is None else f'"definition_fingerprint":{_STR(value)},'


def _parent(s: Snapshot) -> str:
    if s.parent_id is None and s.parent_step is None:
        return ""
    return ("" if s.parent_id is None else f'"parent_id":{_STR(s.parent_id)},') + (
        "" if s.parent_step is None else f'"parent_step":{_STR(s.parent_step)},'
    )


def _request_id(value: str | None) -> str:
    return "" if value is None else f'"request_id":{_STR(value)},'


def _branches(value: tuple[BranchRecord, ...] | None) -> str:
    if value is None:
        return ""
    return f'"branches":{_ENCODE([_branch_to_dict(b) for b in value])},'


def _signal(value: str | None) -> str:
    return "" if value is None else f'"signal":{_STR(value)},'


def _error(error: ErrorInfo | None) -> str:
    if error is None:
        return "null"
    retryable = "true" if error.retryable else "false"
    return f'{{"message":{_STR(error.message)},"retryable":{retryable},"type":{_STR(error.type)}}}'


# The text of recently encoded step records, by identity: a transition changes one step
# and the snapshot keeps the others' records as they were (records are immutable, their
# results never changed in place), so most are encoded already.
# Entries hold their record, so an id cannot be reused while cached; the cache is small
# and simply emptied when full, to bound what it keeps alive.
_STEP_TEXTS: dict[int, tuple[StepRecord, str]] = {}
_STEP_TEXTS_MAX = 256


def _cached_step_text(r: StepRecord) -> str:
    hit = _STEP_TEXTS.get(id(r))
    if hit is not None and hit[0] is r:
        return hit[1]
    text = _step_text(r)  # raises before caching: nothing half-done is kept
    if len(_STEP_TEXTS) >= _STEP_TEXTS_MAX:
        _STEP_TEXTS.clear()
    _STEP_TEXTS[id(r)] = (r, text)
    return text


def _step_text(r: StepRecord) -> str:
    result = "null" if r.result is None else _ENCODE(r.result)
    return (
        f'{{"attempts":{int(r.attempts)},'
        f"{_branches(r.branches)}"
        f'"compensation_attempts":{int(r.compensation_attempts)},'
        f'"deadline":{_time(r.deadline)},"error":{_error(r.error)},'
        f'"finished_at":{_time(r.finished_at)},"name":{_STR(r.name)},'
        f"{_request_id(r.request_id)}"
        f'"result":{result},'
        f"{_signal(r.signal)}"
        f'"started_at":{_time(r.started_at)},"status":{_STR(r.status.value)}}}'
    )


def _snapshot_text(s: Snapshot) -> str:
    """What ``_ENCODE(snapshot_to_dict(s))`` gives, character for character (keys in
    sorted order), written directly: the converter's generic dispatch and the encoder's
    walk over a throwaway dict were the most expensive part of a transition. The saga
    data and step results go through the encoder as they are: for values JSON encodes
    natively that is the converter's output, and anything else makes it raise, which
    sends the caller back to the converter. tests/test_codec.py pins the two together."""
    steps = ",".join([_cached_step_text(r) for r in s.steps])
    return (
        f'{{"cancel_requested":{"true" if s.cancel_requested else "false"},'
        f'"correlation_id":{_str(s.correlation_id)},"created_at":{_time(s.created_at)},'
        f'"data":{_ENCODE(s.data)},"definition":{_STR(s.definition)},'
        f"{_fingerprint(s.definition_fingerprint)}"
        f'"definition_ref":{_str(s.definition_ref)},'
        f'"definition_version":{int(s.definition_version)},"failure":{_error(s.failure)},'
        f'"idempotency_key":{_str(s.idempotency_key)},'
        f"{_parent(s)}"
        f'"parked_at":{_str(s.parked_at)},"saga_id":{_STR(s.saga_id)},'
        f'"schema_version":{SCHEMA_VERSION},"state":{_STR(s.state)},"steps":[{steps}],'
        f"{_traceparent(s.traceparent)}"
        f'"updated_at":{_time(s.updated_at)},"wake_at":{_time(s.wake_at)}}}'
    )


def snapshot_from_json(text: str | bytes, *, saga_id: str | None = None) -> Snapshot:
    try:
        encoded = json.loads(text)
    except (ValueError, TypeError) as err:
        raise SnapshotDecodeError(saga_id, f"not JSON: {err}") from None
    return snapshot_from_dict(encoded, saga_id=saga_id)


def snapshot_or_error(text: str | bytes, *, saga_id: str) -> Snapshot | SnapshotDecodeError:
    """The snapshot, or (for a row that cannot be decoded) its error, to list in its
    place: one bad row must never hide the others."""
    try:
        return snapshot_from_json(text, saga_id=saga_id)
    except SnapshotDecodeError as err:
        return err


def history_to_dict(entry: HistoryEntry) -> dict[str, Any]:
    encoded: dict[str, Any] = converter.unstructure(entry)
    return encoded


def history_from_dict(encoded: Any) -> HistoryEntry:
    return converter.structure(encoded, HistoryEntry)


def dumps(value: Any) -> str:
    """Compact JSON for saga data and details; rejects anything JSON cannot hold."""
    return _ENCODE(value)


def data_problem(value: Any, path: str) -> InvalidSagaData | None:
    """Why ``value`` is not plain JSON that every store keeps exactly (objects with
    string keys, arrays, strings, finite numbers, booleans, null), naming the field
    under ``path``; None when it is."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        shown = "NaN" if math.isnan(value) else "Infinity (or a number too large for a float)"
        return InvalidSagaData(path, f"{shown} is not a JSON number; use a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return InvalidSagaData(path, f"key {key!r} is not a string")
            problem = data_problem(item, f"{path}.{key}")
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for n, item in enumerate(value):
            problem = data_problem(item, f"{path}[{n}]")
            if problem is not None:
                return problem
        return None
    return InvalidSagaData(path, f"a value of type {type(value).__name__} is not JSON")


def request_fingerprint(snapshot: Snapshot) -> str:
    """What an idempotency key stands for: the definition (name and version) and the
    data a saga was started with, hashed. The same key with another fingerprint is
    another request."""
    text = _ENCODE([snapshot.definition, snapshot.definition_version, snapshot.data])
    return hashlib.sha256(text.encode()).hexdigest()

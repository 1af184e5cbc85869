"""Saga ids as a person types them: any unique prefix, like git's object names."""

from __future__ import annotations

from collections.abc import Iterable

from saga_fsm._errors import SagaNotFound
from saga_fsm.cli._app import UsageProblem
from saga_fsm.stores import SnapshotStore

SHORT_ID = 8  # characters ``ls`` shows at least
_CANDIDATES = 10  # ambiguous prefixes list this many


async def resolve_id(store: SnapshotStore, typed: str) -> str:
    """The saga id ``typed`` is, or is the unique prefix of; an unknown or ambiguous one
    is bad input (exit 2) naming the candidates."""
    if not typed:
        raise UsageProblem("give a saga id (or a unique prefix of one)")
    found = await store.find_ids(typed, _CANDIDATES + 1)
    if typed in found:
        return typed
    if not found:
        raise SagaNotFound(typed)
    if len(found) > 1:
        shown = ", ".join(found[:_CANDIDATES]) + (", ..." if len(found) > _CANDIDATES else "")
        raise UsageProblem(f"saga id prefix {typed!r} is ambiguous: {shown}")
    return found[0]


async def short_ids(store: SnapshotStore, saga_ids: Iterable[str]) -> dict[str, str]:
    """For each id its shortest prefix of at least ``SHORT_ID`` characters that no other
    saga in the store starts with (the whole id when needed)."""
    short = {}
    for saga_id in saga_ids:
        length = SHORT_ID
        while length < len(saga_id) and len(await store.find_ids(saga_id[:length], 2)) > 1:
            length += 4
        short[saga_id] = saga_id[: min(length, len(saga_id))]
    return short

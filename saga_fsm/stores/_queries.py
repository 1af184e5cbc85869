"""The read side an operator looks through: pages of sagas, newest first, and counts.

``SagaQueries`` is its own Protocol, next to ``SnapshotStore``: a console needs it, the
engine never does. Each store implements it (memory, SQLite, PostgreSQL) and
tests/stores/test_queries_contract.py holds them to the same answers.

A page is keyset-paginated on ``(created_at, saga_id)``, newest first: the next page
starts strictly after the last row's key, so its cost does not grow with how deep the
operator pages, and rows inserted meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import builtins  # the stores' own ``list`` method shadows it in class bodies
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from attrs import field, fields, frozen

from saga_fsm._codec import snapshot_from_json
from saga_fsm._errors import InvalidArgument, SnapshotDecodeError
from saga_fsm._snapshot import Snapshot
from saga_fsm.stores._protocol import UNFINISHED_STATUSES, QuarantinedSaga, state_matches

MAX_PAGE = 500


def aware(value: datetime) -> datetime:
    """Naive datetimes are taken to be UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@frozen
class SagaFilter:
    """Which sagas a page or a count covers; every field left ``None`` matches all.

    ``state`` is a whole flow state (``running:charge``) or a status (``running``
    matches every ``running:*``). ``stuck_before`` keeps unfinished sagas (``pending``,
    ``running``, ``compensating``: a saga parked in ``failed`` waits for an operator on
    purpose) whose last transition is older. ``quarantined`` keeps the sagas workers set
    aside (``True``) or the others (``False``). Times are compared as instants (naive
    ones are UTC); ``created_from`` is inclusive, ``created_before`` exclusive."""

    state: str | None = None
    definition: str | None = None
    id_prefix: str | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None
    updated_from: datetime | None = None
    stuck_before: datetime | None = None
    quarantined: bool | None = None

    def matches(
        self,
        saga_id: str,
        state: str,
        definition: str,
        created: datetime,
        updated: datetime,
        quarantined: bool,
    ) -> bool:
        """The reference predicate (MemoryStore's), column by column."""
        created, updated = aware(created), aware(updated)
        return (
            state_matches(state, self.state)
            and (self.definition is None or definition == self.definition)
            and (self.id_prefix is None or saga_id.startswith(self.id_prefix))
            and (self.created_from is None or created >= aware(self.created_from))
            and (self.created_before is None or created < aware(self.created_before))
            and (self.updated_from is None or updated >= aware(self.updated_from))
            and (
                self.stuck_before is None
                or (
                    state.partition(":")[0] in UNFINISHED_STATUSES
                    and updated < aware(self.stuck_before)
                )
            )
            and (self.quarantined is None or quarantined == self.quarantined)
        )


EVERYTHING = SagaFilter()
FILTER_FIELDS: tuple[str, ...] = tuple(a.name for a in fields(SagaFilter))


@frozen(order=True)
class PageKey:
    """Where a page ends: the last row's ``created_at`` and id. Opaque to URLs."""

    created_at: datetime = field(converter=aware)
    saga_id: str

    def token(self) -> str:
        raw = f"{aware(self.created_at).astimezone(UTC).isoformat()}|{self.saga_id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> PageKey:
        """The key ``token()`` wrote; ``ValueError`` (one line) for anything else."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, saga_id = raw.split("|", 1)
            return cls(aware(datetime.fromisoformat(when)), saga_id)
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"not a page position: {token[:40]!r}") from None


@frozen
class SagaRow:
    """One saga as a page shows it: the store's columns, and either the decoded
    snapshot or why it cannot be decoded (the row is listed all the same)."""

    saga_id: str
    definition: str
    state: str
    created_at: datetime
    updated_at: datetime
    snapshot: Snapshot | None
    error: SnapshotDecodeError | None = None

    @property
    def key(self) -> PageKey:
        return PageKey(self.created_at, self.saga_id)


@frozen
class SagaPage:
    rows: tuple[SagaRow, ...]
    next: PageKey | None
    """Where the following page starts; ``None`` on the last page."""


@frozen(order=True)
class StateCount:
    definition: str
    state: str
    count: int


@runtime_checkable
class SagaQueries(Protocol):
    """Read-only queries for an operator's console."""

    async def page(
        self, where: SagaFilter, *, after: PageKey | None = None, limit: int = 50
    ) -> SagaPage:
        """Up to ``limit`` (1..``MAX_PAGE``) sagas matching ``where``, newest first
        (``created_at`` then id, descending), strictly after ``after``."""
        ...

    async def counts(self, where: SagaFilter = EVERYTHING) -> builtins.list[StateCount]:
        """How many sagas match ``where``, per definition and whole state, sorted."""
        ...

    async def quarantine_of(self, saga_id: str) -> QuarantinedSaga | None:
        """Why and when the saga was set aside; ``None`` if it is not quarantined (or
        unknown)."""
        ...


def sql_conditions(
    where: SagaFilter,
    after: PageKey | None,
    templates: Mapping[str, str],
    time: Callable[[datetime], object],
) -> tuple[str, dict[str, object]]:
    """The WHERE clause of a durable store's page or count: one template per filter
    field that is set (``status`` for a ``state`` without a step), each reading the
    named parameter of its field, and ``after`` for the keyset. A yes/no field has two
    templates without a parameter, ``name`` and ``not_name``: constant conditions, so
    a partial index on one of them can serve it."""
    conditions: builtins.list[str] = []
    params: dict[str, object] = {}
    for name in FILTER_FIELDS:
        value = getattr(where, name)
        if value is None:
            continue
        if isinstance(value, bool):
            conditions.append(templates[name if value else f"not_{name}"])
            continue
        if name == "state" and ":" not in value:
            name = "status"
        conditions.append(templates[name])
        params[name] = time(value) if isinstance(value, datetime) else value
    if after is not None:
        conditions.append(templates["after"])
        params["after_created"] = time(after.created_at)
        params["after_id"] = after.saga_id
    return " AND ".join(conditions) or "1 = 1", params


def check_page_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}, got {limit}")


def decoded_row(
    saga_id: str,
    definition: str,
    state: str,
    created_at: datetime,
    updated_at: datetime,
    text: str | bytes,
    version: int,
) -> SagaRow:
    """A row whose snapshot is decoded here (at its ``version`` column); a decode error
    is kept, never raised."""
    try:
        snapshot = snapshot_from_json(text, saga_id=saga_id).with_version(version)
    except SnapshotDecodeError as err:
        return SagaRow(saga_id, definition, state, created_at, updated_at, None, err)
    return SagaRow(saga_id, definition, state, created_at, updated_at, snapshot)


def paged(rows: builtins.list[SagaRow], limit: int) -> SagaPage:
    """``rows`` fetched with ``limit + 1``: the extra one only says there is more."""
    shown = tuple(rows[:limit])
    return SagaPage(shown, shown[-1].key if len(rows) > limit else None)

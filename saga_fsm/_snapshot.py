"""Persisted values: a saga instance's snapshot and its history rows. All frozen."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from attrs import field, fields, frozen


class SagaStatus(StrEnum):
    """The generic saga lifecycle. A flow state is ``status`` or ``status:step``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    SKIPPED = "skipped"


@frozen
class ErrorInfo:
    """An error as it is persisted: its type's qualified name, its message, and whether a
    retry could help."""

    type: str
    message: str
    retryable: bool = True

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool) -> ErrorInfo:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        return cls(name, str(exc), retryable)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@frozen
class StepRecord:
    """One step of one saga instance."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    compensation_attempts: int = 0
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    request_id: str | None = None
    """The attempt of a remote step (or compensation) in flight: its command carries
    it and its reply must name it, so a reply to an earlier attempt is known stale.
    None for local steps. A wait's attempt has one too: nothing runs while it waits; so
    has a child saga step's attempt, whose child the saga waits for."""
    signal: str | None = None
    """The event that ended a wait (``WaitFor``); its data is ``result``."""
    branches: tuple[BranchRecord, ...] | None = None
    """A parallel group's branches (``Parallel``, ``ForEach``): each one's own progress.
    None for every other step. Encoded only when set."""


def _records(values: Iterable[StepRecord]) -> tuple[StepRecord, ...]:
    return tuple(values)


@frozen
class BranchRecord:
    """One branch of a parallel group: the state of its own small flow (``pending``,
    ``running:<step>``, ``running:_join`` once it reached the join, ``compensating:<step>``,
    ``compensated``, ``failed``) and its steps' records, as a saga keeps its own."""

    key: str
    state: str
    steps: tuple[StepRecord, ...] = field(converter=_records)
    data: dict[str, Any] = field(factory=dict)
    """What the branch's steps returned, merged in order: the branch's own data."""
    item: Any = None
    """A ``ForEach`` branch's item (the list element it was started for)."""
    wake_at: datetime | None = None
    cancel_requested: bool = False
    parked_at: str | None = None
    failure: ErrorInfo | None = None
    held: bool = False
    """A compensation decided while other branches' steps were still in flight: it runs
    once they have settled."""


@functools.lru_cache(maxsize=4096)
def split_state(state: str) -> tuple[SagaStatus, str | None]:
    """``"running:charge"`` -> ``(SagaStatus.RUNNING, "charge")``. (Cached: a flow has a
    handful of states, and this is asked several times per transition.)"""
    status, _, step = state.partition(":")
    return SagaStatus(status), step or None


@frozen
class Snapshot:
    """The whole persisted state of one saga instance."""

    saga_id: str
    definition: str
    definition_version: int
    state: str
    steps: tuple[StepRecord, ...] = field(converter=_records)
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    correlation_id: str | None = None
    idempotency_key: str | None = None
    version: int = 0
    """The optimistic-lock version the store gave this snapshot when it was read or
    written (its ``version`` column: writes and claims it accepted). Not part of the
    encoded snapshot: the store owns it, as it owns the lease (``WorkerLeases.lease``)."""
    wake_at: datetime | None = None
    """When the engine must look at this saga again (retry back-off or step deadline)."""
    cancel_requested: bool = False
    parked_at: str | None = None
    """The state a ``failed`` saga was parked from; operator ``retry`` resumes there."""
    failure: ErrorInfo | None = None
    """Why the saga left the forward path (or was parked)."""
    definition_ref: str | None = None
    """Where a worker that was not given the definition can load it from
    (``package.module:attribute`` or an absolute file path)."""
    traceparent: str | None = None
    """The W3C trace context of the saga's start: every later span of the saga is its
    child, so one saga is one trace across processes and crashes. Encoded only when set."""
    definition_fingerprint: str | None = None
    """The fingerprint of the compiled table the saga started on (``saga_fsm.fingerprint``):
    it only ever runs on that table. None in snapshots written before fingerprints
    existed: those run on whatever table is registered under their (name, version).
    Encoded only when set."""
    parent_id: str | None = None
    """The saga that started this one as a child (``ChildSaga``). Encoded only when set."""
    parent_step: str | None = None
    """The parent's step this saga is the work of. Encoded only when set."""

    @property
    def status(self) -> SagaStatus:
        return split_state(self.state)[0]

    @property
    def current_step(self) -> str | None:
        return split_state(self.state)[1]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def due_at(self) -> datetime | None:
        """When a worker without a lease on this saga should pick it up: at ``wake_at``
        during a retry back-off or while a remote step waits for its reply, never once
        finished or parked, and otherwise now, ranked by age (``created_at``), so that
        sagas already under way, such as those a dead worker left behind, go before
        newer ones. Stores index it."""
        status, step = split_state(self.state)
        if status in TERMINAL_STATUSES:
            return None
        if step is None:
            return self.created_at
        record = self.step(step)
        if record.branches is not None:
            # A parallel group: due now while a local branch call is in flight (its
            # driver holds the lease), else when its earliest branch timer fires.
            if any(_busy(b) for b in record.branches):
                return self.created_at
            return self.wake_at or self.created_at
        if record.status not in (StepStatus.RUNNING, StepStatus.COMPENSATING):
            return self.wake_at or self.created_at
        if record.request_id is not None:
            # Waiting for a participant's reply, which comes by message: a worker has
            # nothing to do before the deadline, when the silence is a timeout. (Or for
            # a child saga, whose end is applied when it comes: due at the next look.)
            return self.wake_at or self.created_at
        return self.created_at

    def step(self, name: str) -> StepRecord:
        for record in self.steps:
            if record.name == name:
                return record
        raise KeyError(name)

    def with_version(self, version: int) -> Snapshot:
        """This snapshot at ``version`` (itself when it is already there: frozen)."""
        return self if self.version == version else replace(self, version=version)


def _busy(branch: BranchRecord) -> bool:
    if branch.held or branch.state.endswith(":_join"):
        return False
    return any(
        r.status in (StepStatus.RUNNING, StepStatus.COMPENSATING) and r.request_id is None
        for r in branch.steps
    )


@frozen
class HistoryEntry:
    """One transition of one saga: append-only."""

    from_state: str
    to_state: str
    trigger: str
    at: datetime
    detail: dict[str, Any] = field(factory=dict)


_T = TypeVar("_T")
_REPLACERS: dict[type, Callable[..., Any]] = {}


def replace(instance: _T, /, **changes: Any) -> _T:
    """``attrs.evolve`` for the engine's hot path: the same result (the class's own
    ``__init__``, converters included, on the old values overlaid with ``changes``,
    keyed by init argument; an unknown one is refused by ``__init__``), through a
    function generated once per class instead of looking the fields up on every call."""
    cls = type(instance)
    replacer = _REPLACERS.get(cls)
    if replacer is None:
        replacer = _REPLACERS[cls] = _make_replacer(cls)
    return replacer(instance, changes)  # type: ignore[no-any-return]


def _make_replacer(cls: type) -> Callable[..., Any]:
    attributes = [a for a in fields(cls) if a.init]
    for a in attributes:
        if not (a.alias.isidentifier() and a.name.isidentifier()):
            raise TypeError(f"cannot generate a replacer for {cls.__name__}.{a.name}")
    current = ", ".join(f"{a.alias!r}: old.{a.name}" for a in attributes)
    source = (
        "def replace(old, changes):\n"
        f"    arguments = {{{current}}}\n"
        "    arguments.update(changes)\n"
        "    return cls(**arguments)\n"
    )
    namespace: dict[str, Any] = {"cls": cls}
    exec(compile(source, f"<saga_fsm replace {cls.__qualname__}>", "exec"), namespace)
    generated: Callable[..., Any] = namespace["replace"]
    return generated

"""Which rows of a flow table the harness can make the engine take, and the shortest
sequence of harness moves that takes each one.

The pure core is explored breadth-first from ``pending`` under exactly the events the
harness can produce: every configured outcome of each outstanding command (a timeout
only where a deadline is set), wake-ups, a cancel at any point, an operator retry of a
parked saga. Nothing here runs user code: ``decide`` is pure. The result is both the
honest denominator of transition coverage and, for each row random exploration missed,
a directed path to it.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import frozen

from saga_fsm._core import (
    Event,
    Outcome,
    RunCompensation,
    RunStep,
    ScheduleWake,
    decide,
    new_snapshot,
    outcome_event,
    outstanding,
    signal_event,
)
from saga_fsm._definition import RetryPolicy, SagaDefinition, WaitFor
from saga_fsm._errors import TransitionNotAllowed
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._groups import ForEach, Parallel, StepGroup, branch_definition
from saga_fsm._lifecycle import TransitionRow
from saga_fsm._snapshot import ErrorInfo, HistoryEntry, SagaStatus, Snapshot, StepRecord
from saga_fsm.testing._faults import CHILD_REFUSED, REFUSED, REPLY_LOST, Fault

MoveKind = str
Edge = tuple[str, str, str]
Move = tuple[MoveKind, Fault] | tuple[MoveKind, Fault, str]
"""One harness move: ``tick`` (start a pending saga, or wake one whose back-off is
over), ``call`` (its next call, with the fault around it; for a wait, its deadline
passing), ``cancel``, ``retry`` from ``failed``, or ``signal:<event>``; the fault
only matters for ``call``. A call of a parallel group's branch step names the step:
several may be in flight, and which one ends first is part of the path."""

_T0 = datetime(2000, 1, 1, tzinfo=UTC)
_STATE_LIMIT = 50_000


def edge_of_row(row: TransitionRow) -> Edge:
    """(trigger, from, to); an internal transition (``dest=None``) stays where it is."""
    return (row.trigger, row.source, row.dest if row.dest is not None else row.source)


def edge_of_entry(entry: HistoryEntry) -> Edge:
    return (entry.trigger, entry.from_state, entry.to_state)


@functools.cache
def row_edges(compiled: CompiledSaga) -> dict[Edge, tuple[int, ...]]:
    """Each (trigger, from, to) of the flow table and the rows it can be. Flow tables
    give every row its own edge; were two rows to share one, a history entry would
    count for both."""
    edges: dict[Edge, tuple[int, ...]] = {}
    for index, row in enumerate(compiled.rows):
        key = edge_of_row(row)
        edges[key] = (*edges.get(key, ()), index)
    return edges


@frozen
class Reachability:
    rows: frozenset[int]
    """Every row some sequence of moves takes (all rows when ``exact`` is False)."""
    paths: Mapping[int, tuple[Move, ...]]
    """For each reachable row, a shortest sequence of moves from ``pending`` taking it."""
    exact: bool = True
    """False when the state space was too large to enumerate."""


def _clip(attempts: int, policy: RetryPolicy) -> int:
    # Guards only ask "attempts < max_attempts": beyond that, counts behave alike.
    return min(attempts, policy.max_attempts if policy.max_attempts is not None else 2)


def _abstract(compiled: CompiledSaga, snapshot: Snapshot) -> tuple[object, ...]:
    """What the guards, the effects and ``outstanding`` can tell apart.

    Guards read only the current step's record; effects also need every step's status
    (compensating a step moves it from ``succeeded``). Attempt counts of other steps
    never matter again: a step runs forward once in sequence, and its compensation
    starts from zero attempts (an operator ``retry`` resets them). Data and times
    never matter. Keeping only this makes the search linear in the steps instead of
    exponential (tests/testing compare it with the unabstracted search)."""
    current = snapshot.current_step or (snapshot.parked_at or "").partition(":")[2]
    attempts: tuple[int, int] = (0, 0)
    if current:
        row = compiled.step_index[current]
        record, step = snapshot.steps[row], compiled.definition.steps[row]
        attempts = (
            _clip(record.attempts, step.retry),
            _clip(record.compensation_attempts, step.compensation_retry),
        )
    return (
        snapshot.state,
        tuple(snapshot.data.get(key) for key in _when_fields(compiled.definition)),
        snapshot.cancel_requested,
        snapshot.parked_at,
        snapshot.wake_at is None,
        attempts,
        tuple(record.status for record in snapshot.steps),
        *(_branches(compiled, row, r) for row, r in enumerate(snapshot.steps) if r.branches),
    )


def _branches(compiled: CompiledSaga, row: int, record: StepRecord) -> tuple[object, ...]:
    """A parallel group's branches, as the same abstraction of each branch's flow (the
    branches of a ``ForEach`` run the same steps: their order does not matter)."""
    group = compiled.definition.steps[row]
    assert isinstance(group, StepGroup)
    seen = []
    for b in record.branches or ():
        branch = compile_saga(branch_definition(group, b.key))
        view = Snapshot(
            saga_id="reachability",
            definition=branch.definition.name,
            definition_version=1,
            state=b.state,
            steps=b.steps,
            data={},
            created_at=_T0,
            updated_at=_T0,
            wake_at=b.wake_at,
            cancel_requested=b.cancel_requested,
            parked_at=b.parked_at,
        )
        key = b.key if isinstance(group, Parallel) else ""
        seen.append((key, b.held, _abstract(branch, view)))
    return tuple(sorted(seen, key=repr)) if isinstance(group, ForEach) else tuple(seen)


def _start_data(definition: SagaDefinition, data: str | None) -> dict[str, Any]:
    # A ForEach's list missing from the start data is taken to be made by an earlier
    # step (decide runs no actions here): two items, so its branches and their
    # interleavings are explored.
    loaded: dict[str, Any] = json.loads(data) if data is not None else {}
    for step in definition.steps:
        if isinstance(step, ForEach) and step.items not in loaded:
            loaded[step.items] = [None, None]
    return loaded


def static_data(source: object) -> str | None:
    """The harness's saga data as ``reachability`` takes it, when it is one mapping
    (none given: the empty one)."""
    if source is None:
        return "{}"
    if isinstance(source, Mapping):
        try:
            return json.dumps(dict(source), sort_keys=True)
        except (TypeError, ValueError):
            return None
    return None


@functools.cache
def _when_fields(definition: SagaDefinition) -> tuple[str, ...]:
    """The data fields waits are skipped by: the one part of the data guards read."""
    fields = (s.when for s in definition.steps if isinstance(s, WaitFor) and s.when)
    return tuple(dict.fromkeys(fields))


def _starts(definition: SagaDefinition, data: str | None = None) -> list[Snapshot]:
    """A pending saga for each combination of the ``when`` fields (each wait both
    skipped and kept); one when there are none. ``data``: see ``reachability``."""
    names = _when_fields(definition)
    base = _start_data(definition, data)
    return [
        new_snapshot(definition, "reachability", base | dict(zip(names, values, strict=True)), _T0)
        for values in itertools.product((True, False), repeat=len(names))
    ]


def _moves(
    compiled: CompiledSaga, snapshot: Snapshot, faults: tuple[Fault, ...], operator_retry: bool
) -> Iterator[tuple[Move, Event]]:
    """Each move the harness can make here, with the event the engine then sees."""
    status = snapshot.status
    if status is SagaStatus.PENDING:
        yield ("tick", Fault.OK), Event.start(_T0)
    if status is SagaStatus.FAILED and operator_retry:
        yield ("retry", Fault.OK), Event.retry(_T0)
    if snapshot.is_terminal:
        return
    yield ("cancel", Fault.OK), Event.cancel(_T0)
    for command in outstanding(compiled, snapshot):
        if isinstance(command, ScheduleWake):
            yield ("tick", Fault.OK), Event.retry_due(_T0)
        elif isinstance(command, RunStep | RunCompensation) and (
            command.step in compiled.child_steps
        ):
            yield from _child_moves(command, faults)
        elif (
            isinstance(command, RunStep)
            and "/" not in command.step
            and isinstance(wait := compiled.definition.step(command.step), WaitFor)
        ):
            yield ("call", Fault.OK), outcome_event(command, "timed_out", _T0)
            for name in wait.outcomes:
                event = signal_event(compiled, snapshot, name, {}, _T0)
                assert event is not None  # a wait in progress takes its events
                yield (f"signal:{name}", Fault.OK), event
        elif isinstance(command, RunStep | RunCompensation):
            outcomes: list[tuple[Fault, Outcome, ErrorInfo | None]] = [
                (Fault.OK, "succeeded", None)
            ]
            if Fault.TRANSIENT in faults:
                outcomes.append((Fault.TRANSIENT, "failed", REPLY_LOST))
            if Fault.PERMANENT in faults and command.attempt == 1:
                # A participant refuses a key only before it acted on it (see Driver).
                outcomes.append((Fault.PERMANENT, "failed", REFUSED))
            if Fault.TIMEOUT in faults and command.deadline is not None:
                outcomes.append((Fault.TIMEOUT, "timed_out", None))
            for fault, outcome, error in outcomes:
                event = outcome_event(command, outcome, _T0, error=error)
                if "/" in command.step:
                    yield ("call", fault, command.step), event
                else:
                    yield ("call", fault), event


def _child_moves(
    command: RunStep | RunCompensation, faults: tuple[Fault, ...]
) -> Iterator[tuple[Move, Event]]:
    """A child saga step ends as its child does: completed (or, compensating, undone),
    or compensated for good (it refused: its first call's fault). A look at a child
    still under way (``transient``) waits on."""
    yield ("call", Fault.OK), outcome_event(command, "succeeded", _T0)
    if Fault.PERMANENT in faults and isinstance(command, RunStep) and command.attempt == 1:
        yield ("call", Fault.PERMANENT), outcome_event(command, "failed", _T0, error=CHILD_REFUSED)
    if Fault.TRANSIENT in faults:
        yield ("call", Fault.TRANSIENT), Event("child_pending", _T0)


@functools.cache
def reachability(
    definition: SagaDefinition,
    faults: tuple[Fault, ...],
    operator_retry: bool = True,
    data: str | None = None,
) -> Reachability:
    """Breadth-first search of the pure core (see the module docstring). Cached: the
    same definition and faults always give the same answer. ``data`` (JSON text) is
    the saga data the harness starts with when it is one fixed mapping: it decides how
    many branches a ``ForEach`` has (two items when its list is not there)."""
    compiled = compile_saga(definition)
    edges = row_edges(compiled)
    seen: set[tuple[object, ...]] = set()
    paths: dict[int, tuple[Move, ...]] = {}
    # One search per start, waits kept first: a row reachable either way gets the path
    # of data that does not skip waits, which is what directed paths replay with.
    for start in _starts(definition, data):
        seen.add(_abstract(compiled, start))
        queue: deque[tuple[Snapshot, tuple[Move, ...]]] = deque([(start, ())])
        while queue:
            snapshot, path = queue.popleft()
            for move, event in _moves(compiled, snapshot, faults, operator_retry):
                try:
                    decision = decide(compiled, snapshot, event)
                except TransitionNotAllowed:
                    continue
                for entry in decision.history:
                    for row in edges.get(edge_of_entry(entry), ()):
                        paths.setdefault(row, (*path, move))
                key = _abstract(compiled, decision.snapshot)
                if key not in seen:
                    if len(seen) >= _STATE_LIMIT:
                        every = frozenset(range(len(compiled.rows)))
                        return Reachability(every, paths, exact=False)
                    seen.add(key)
                    queue.append((decision.snapshot, (*path, move)))
    return Reachability(frozenset(paths), paths)

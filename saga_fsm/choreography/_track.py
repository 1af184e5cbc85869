"""The choreography compiled onto a transitions Machine (one per definition, the model
passed per call) and the tracker's pure decisions: ``track(instance, event)`` and
``expire(instance, now)`` return the new instance, its anomalies and its commands. No
I/O, no clock: the tracker acts on what they return."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from attrs import evolve, field, frozen
from transitions import Machine

from saga_fsm._lifecycle import TransitionRow, build_machine, fire
from saga_fsm.choreography._definition import (
    COMPENSATED,
    COMPLETED,
    PENDING,
    Choreography,
    compensating_state,
    forward_state,
)

EARLY, ILLEGAL = "early", "illegal"
_ALL_COMPENSATED = "all_compensations_seen"


def _tuple(values: Any) -> tuple[str, ...]:
    return tuple(values)


@frozen
class Observed:
    """One event as the tracker received it."""

    name: str
    payload: dict[str, Any]
    message_id: str
    at: datetime


@frozen
class Anomaly:
    """An event the table does not allow here. ``early``: it is legal in a state ahead of
    this one (out of order: the tracker waits for the events before it, within its
    window); ``illegal``: never legal from here."""

    kind: str
    event: str
    state: str
    message_id: str


@frozen
class PublishCompensation:
    """The one command a tracker may carry out: publish ``event`` for a stuck instance."""

    event: str
    missing: str


@frozen
class Instance:
    """The tracker's view of one instance, everything a decision needs."""

    state: str
    entered_at: datetime
    keys: dict[str, str] = field(factory=dict)
    path: tuple[str, ...] = field(default=(), converter=_tuple)
    seen: tuple[str, ...] = field(default=(), converter=_tuple)
    compensations_seen: tuple[str, ...] = field(default=(), converter=_tuple)
    stuck: str | None = None
    published: tuple[str, ...] = field(default=(), converter=_tuple)
    visited: tuple[str, ...] = field(default=(), converter=_tuple)

    @property
    def finished(self) -> bool:
        return self.state in (COMPLETED, COMPENSATED)


@frozen
class Decision:
    instance: Instance
    anomalies: tuple[Anomaly, ...] = ()
    commands: tuple[PublishCompensation, ...] = ()
    duplicate: bool = False

    @property
    def moved(self) -> bool:
        return not self.duplicate and not self.anomalies


class _Model:
    """What the Machine moves: a state and the compensations seen so far."""

    __slots__ = ("choreography", "seen", "state")

    def __init__(self, choreography: Choreography, state: str, seen: tuple[str, ...]) -> None:
        self.choreography = choreography
        self.state = state
        self.seen = seen

    def all_compensations_seen(self, event_data: Any) -> bool:
        failure = self.state.partition(":")[2]
        needed = set(self.choreography.compensations_of(failure))
        return needed <= {*self.seen, event_data.event.name}


def rows(c: Choreography) -> tuple[TransitionRow, ...]:
    """The choreography's state table as Machine rows; diagrams read the same rows."""
    table = [TransitionRow(m.event, forward_state(m.state), forward_state(m.to)) for m in c.moves]
    for failure in c.failures:
        source = forward_state(failure.state)
        if not failure.compensations:
            table.append(TransitionRow(failure.event, source, COMPENSATED))
            continue
        waiting = compensating_state(failure.event)
        table.append(TransitionRow(failure.event, source, waiting))
        for compensation in failure.compensations:
            table.append(
                TransitionRow(compensation, waiting, COMPENSATED, conditions=[_ALL_COMPENSATED])
            )
            if len(failure.compensations) > 1:
                table.append(
                    TransitionRow(compensation, waiting, waiting, unless=[_ALL_COMPENSATED])
                )
    return tuple(table)


def states(c: Choreography) -> tuple[str, ...]:
    found = [PENDING]
    for row in rows(c):
        for state in (row.source, row.dest):
            if state is not None and state not in found:
                found.append(state)
    return tuple(found)


@functools.cache
def machine(c: Choreography) -> Machine:
    """The one Machine of ``c`` (cached per definition; a Choreography is frozen)."""
    return build_machine(states(c), rows(c), initial=PENDING, name=c.name)


@functools.cache
def _ahead(c: Choreography) -> dict[str, frozenset[str]]:
    """Per state, the events legal in some state reachable from it (not in it)."""
    table = rows(c)
    successors: dict[str, set[str]] = {}
    for row in table:
        if row.dest is not None:
            successors.setdefault(row.source, set()).add(row.dest)
    events_in: dict[str, set[str]] = {}
    for row in table:
        events_in.setdefault(row.source, set()).add(row.trigger)
    ahead: dict[str, frozenset[str]] = {}
    for state in states(c):
        reached: set[str] = set()
        todo = list(successors.get(state, ()))
        while todo:
            s = todo.pop()
            if s in reached:
                continue
            reached.add(s)
            todo.extend(successors.get(s, ()))
        ahead[state] = frozenset(e for s in reached - {state} for e in events_in.get(s, ()))
    return ahead


def legal_here(c: Choreography, state: str, event: str) -> bool:
    found = machine(c).events.get(event)
    return found is not None and state in found.transitions


def track(c: Choreography, instance: Instance, event: Observed) -> Decision:
    """Apply one observed event to one instance through the Machine."""
    if event.message_id in instance.seen:
        return Decision(instance, duplicate=True)
    if not legal_here(c, instance.state, event.name):
        kind = EARLY if event.name in _ahead(c).get(instance.state, ()) else ILLEGAL
        return Decision(instance, (Anomaly(kind, event.name, instance.state, event.message_id),))
    model = _Model(c, instance.state, instance.compensations_seen)
    fire(machine(c), model, event.name)
    compensations = instance.compensations_seen
    if model.state.startswith("compensating:") and event.name != model.state.partition(":")[2]:
        compensations = (*compensations, event.name)
    moved = model.state != instance.state
    return Decision(
        evolve(
            instance,
            state=model.state,
            entered_at=event.at if moved else instance.entered_at,
            keys={**instance.keys, **_keys(c, event)},
            path=(*instance.path, event.name),
            seen=(*instance.seen, event.message_id),
            compensations_seen=compensations,
            stuck=None if moved else instance.stuck,
            visited=(*instance.visited, model.state) if moved else instance.visited,
        )
    )


def _keys(c: Choreography, event: Observed) -> dict[str, str]:
    return {k: str(event.payload[k]) for k in c.keys_of(event.name) if k in event.payload}


def deadline(c: Choreography, instance: Instance) -> tuple[str, datetime] | None:
    """The event the instance waits for first and when it is due, if any is expected."""
    due: list[tuple[datetime, str]] = []
    for expectation in c.expectations:
        waiting = legal_here(c, instance.state, expectation.event)
        if waiting and expectation.event not in instance.compensations_seen:
            due.append(
                (instance.entered_at + timedelta(seconds=expectation.within), expectation.event)
            )
    if not due:
        return None
    at, event = min(due)
    return event, at


def expire(c: Choreography, instance: Instance, now: datetime) -> Decision:
    """Mark the instance stuck if an expected event is overdue, naming it; command its
    compensating event once if the definition names one."""
    found = deadline(c, instance)
    if found is None or found[1] > now or instance.stuck is not None:
        return Decision(instance)
    missing = found[0]
    expectation = c.expectation(missing)
    assert expectation is not None  # deadline() only returns expected events
    commands: tuple[PublishCompensation, ...] = ()
    published = instance.published
    compensate = expectation.compensate
    if compensate is not None and compensate not in published:
        commands = (PublishCompensation(compensate, missing),)
        published = (*published, compensate)
    return Decision(evolve(instance, stuck=missing, published=published), commands=commands)

"""A choreography as a state table of events, validated row by row when it is built.

No orchestrator sends commands in a choreography: each participant reacts to events and
publishes its own. The table says what the stream of one instance's events must look
like, so a tracker can follow it:

- ``start``: the event that creates an instance (from the implicit state ``pending``);
- ``moves``: ``(state, event, next state)`` rows; ``completed`` ends an instance;
- ``failures``: ``(state, event, compensations)``: the failure event moves the instance
  to ``compensating:<event>``, where every compensating event must arrive (in any
  order) before it is ``compensated``;
- ``events``: who publishes each event, who reacts to it, and the payload fields that
  correlate it to its instance (``correlation`` lists every key an instance may be
  known by, the first one naming it: ``order_id`` then ``payment_id``);
- ``expectations``: ``expect("PaymentProcessed", within=30)``: in a state that waits for
  that event, it must arrive within 30 s, or the instance is stuck, the event named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import field, frozen

from saga_fsm._errors import DefinitionError

PENDING, COMPLETED, COMPENSATED = "pending", "completed", "compensated"
TRACKER = "tracker"
"""The tracker's own participant name: it publishes only compensating events on stuck
instances, and only when asked."""

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@frozen
class Event:
    """One event type: who publishes it, who reacts to it (each gets its own copy), and
    which payload fields correlate it (``()``: every key of the choreography it holds)."""

    name: str
    publisher: str
    consumers: tuple[str, ...] = field(default=(), converter=_tuple)
    keys: tuple[str, ...] = field(default=(), converter=_tuple)


@frozen
class Move:
    """In ``state``, ``event`` moves an instance to ``to``."""

    state: str
    event: str
    to: str


@frozen
class Failure:
    """In ``state``, the failure ``event`` must be followed by every one of
    ``compensations`` (any order); then the instance is compensated."""

    state: str
    event: str
    compensations: tuple[str, ...] = field(default=(), converter=_tuple)


@frozen
class Expectation:
    """Where ``event`` is awaited, it must arrive within ``within`` seconds of the
    instance entering that state. ``compensate``: the event the tracker publishes for a
    stuck instance, when it is asked to (``Tracker(publish_compensations=True)``)."""

    event: str
    within: float
    compensate: str | None = None


def expect(event: str, *, within: float, compensate: str | None = None) -> Expectation:
    return Expectation(event, float(within), compensate)


def forward_state(name: str) -> str:
    """The stored state of a choreography state: ``running:<name>``, or a terminal."""
    return name if name in (PENDING, COMPLETED, COMPENSATED) else f"running:{name}"


def compensating_state(failure_event: str) -> str:
    return f"compensating:{failure_event}"


def _events(rows: Iterable[Event]) -> tuple[Event, ...]:
    return tuple(rows)


def _moves(rows: Iterable[Move]) -> tuple[Move, ...]:
    return tuple(rows)


def _failures(rows: Iterable[Failure]) -> tuple[Failure, ...]:
    return tuple(rows)


def _expectations(rows: Iterable[Expectation]) -> tuple[Expectation, ...]:
    return tuple(rows)


@frozen
class Choreography:
    """A choreography definition. Built = valid: every problem raises a
    ``DefinitionError`` naming the table, the row and the field."""

    name: str
    start: str
    events: tuple[Event, ...] = field(converter=_events)
    moves: tuple[Move, ...] = field(converter=_moves)
    correlation: tuple[str, ...] = field(converter=_tuple)
    failures: tuple[Failure, ...] = field(default=(), converter=_failures)
    expectations: tuple[Expectation, ...] = field(default=(), converter=_expectations)
    version: int = 1
    description: str = ""

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def event(self, name: str) -> Event:
        for event in self.events:
            if event.name == name:
                return event
        raise KeyError(name)

    @property
    def first_state(self) -> str:
        """The state the start event moves a new instance to."""
        return next(m.to for m in self.moves if m.state == PENDING)

    @property
    def participants(self) -> tuple[str, ...]:
        names = [e.publisher for e in self.events] + [c for e in self.events for c in e.consumers]
        return tuple(dict.fromkeys(n for n in names if n != TRACKER))

    def consumed_by(self, participant: str) -> tuple[str, ...]:
        return tuple(e.name for e in self.events if participant in e.consumers)

    def keys_of(self, event: str) -> tuple[str, ...]:
        return self.event(event).keys or self.correlation

    def compensations_of(self, failure_event: str) -> tuple[str, ...]:
        for failure in self.failures:
            if failure.event == failure_event:
                return failure.compensations
        raise KeyError(failure_event)

    def expectation(self, event: str) -> Expectation | None:
        for expectation in self.expectations:
            if expectation.event == event:
                return expectation
        return None


def _error(reason: str, table: str | None = None, row: int | None = None, field: str = "") -> None:
    where = f"{table}[{row}]" if table is not None and row is not None else table
    raise DefinitionError(reason, field=field or None, source=where or "choreography")


def _check_name(value: object, table: str | None, row: int | None, field: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        _error(f"{value!r} is not a name (letters, digits, '_', '-')", table, row, field)


def _validate(c: Choreography) -> None:
    _check_name(c.name, None, None, "name")
    if isinstance(c.version, bool) or not isinstance(c.version, int) or c.version < 1:
        _error(f"version must be an integer >= 1, got {c.version!r}", field="version")
    if not c.correlation:
        _error("name at least one correlation key", field="correlation")
    for key in c.correlation:
        _check_name(key, None, None, "correlation")
    names: dict[str, int] = {}
    for i, event in enumerate(c.events):
        if not isinstance(event, Event):
            _error(f"expected an Event, got {type(event).__name__}", "events", i)
        _check_name(event.name, "events", i, "name")
        if event.name in names:
            _error(f"event {event.name!r} is already row {names[event.name]}", "events", i, "name")
        names[event.name] = i
        _check_name(event.publisher, "events", i, "publisher")
        for consumer in event.consumers:
            _check_name(consumer, "events", i, "consumers")
            if consumer == TRACKER:
                _error("the tracker follows every event: do not list it", "events", i, "consumers")
        for key in event.keys:
            if key not in c.correlation:
                _error(
                    f"key {key!r} is not one of correlation {c.correlation}", "events", i, "keys"
                )
    if c.start not in names:
        _error(f"start event {c.start!r} is not in events", field="start")
    if c.correlation[0] not in c.keys_of(c.start):
        _error(
            f"the start event must carry the first correlation key {c.correlation[0]!r}",
            field="start",
        )
    legal: dict[tuple[str, str], str] = {}
    starts = 0
    for i, move in enumerate(c.moves):
        if not isinstance(move, Move):
            _error(f"expected a Move, got {type(move).__name__}", "moves", i)
        for name in ("state", "to"):
            _check_name(getattr(move, name), "moves", i, name)
        if move.event not in names:
            _error(f"event {move.event!r} is not in events", "moves", i, "event")
        if move.to in (PENDING, COMPENSATED):
            _error(f"a move cannot lead to {move.to!r}", "moves", i, "to")
        if move.state in (COMPLETED, COMPENSATED):
            _error(f"{move.state!r} is final: nothing moves out of it", "moves", i, "state")
        if (move.state == PENDING) != (move.event == c.start):
            _error(f"only the start event {c.start!r} leaves {PENDING!r}", "moves", i, "event")
        starts += move.state == PENDING
        if (move.state, move.event) in legal:
            _error(f"{move.event!r} in {move.state!r} already has a row", "moves", i, "event")
        legal[(move.state, move.event)] = move.to
    if starts != 1:
        _error(f"exactly one move must leave {PENDING!r} on {c.start!r}", field="moves")
    states = {PENDING} | {m.to for m in c.moves}
    for i, move in enumerate(c.moves):
        if move.state not in states:
            _error(f"state {move.state!r} is never reached", "moves", i, "state")
    seen_failures: set[str] = set()
    for i, failure in enumerate(c.failures):
        if not isinstance(failure, Failure):
            _error(f"expected a Failure, got {type(failure).__name__}", "failures", i)
        if failure.state not in states or failure.state in (PENDING, COMPLETED, COMPENSATED):
            _error(f"{failure.state!r} is not a state an instance waits in", "failures", i, "state")
        if failure.event not in names:
            _error(f"event {failure.event!r} is not in events", "failures", i, "event")
        if (failure.state, failure.event) in legal:
            _error(f"{failure.event!r} in {failure.state!r} is also a move", "failures", i, "event")
        if failure.event in seen_failures:
            _error(f"failure {failure.event!r} is already listed", "failures", i, "event")
        seen_failures.add(failure.event)
        for compensation in failure.compensations:
            if compensation not in names:
                _error(f"event {compensation!r} is not in events", "failures", i, "compensations")
        if len(set(failure.compensations)) != len(failure.compensations):
            _error("a compensating event is listed twice", "failures", i, "compensations")
    for i, expectation in enumerate(c.expectations):
        if not isinstance(expectation, Expectation):
            _error(f"expected an Expectation, got {type(expectation).__name__}", "expectations", i)
        if expectation.event not in names:
            _error(f"event {expectation.event!r} is not in events", "expectations", i, "event")
        if not expectation.within > 0 or expectation.within == float("inf"):
            _error(
                f"within must be > 0 seconds, got {expectation.within}", "expectations", i, "within"
            )
        if expectation.compensate is not None and expectation.compensate not in names:
            _error(
                f"event {expectation.compensate!r} is not in events",
                "expectations",
                i,
                "compensate",
            )
    if COMPLETED not in states:
        _error(f"no move reaches {COMPLETED!r}", field="moves")

"""Transition coverage of a choreography: which rows of its Machine the tracker took (read
from the history it wrote), out of the rows some sequence of events takes, found by a
breadth-first search through ``track`` itself; and which expected-within timers fired."""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from attrs import define, field, frozen

from saga_fsm._lifecycle import TransitionRow
from saga_fsm._snapshot import HistoryEntry
from saga_fsm.choreography._definition import PENDING, Choreography
from saga_fsm.choreography._track import Instance, Observed, deadline, rows, track
from saga_fsm.testing._coverage import describe_row
from saga_fsm.testing._reachability import Edge, edge_of_entry, edge_of_row

_T0 = datetime(2000, 1, 1, tzinfo=UTC)


@frozen
class ChoreographyReachability:
    paths: Mapping[int, tuple[str, ...]]
    """For each reachable row, a shortest sequence of events from ``pending`` taking it."""
    waits: Mapping[str, tuple[str, ...]]
    """For each expected event that some state awaits, a shortest way to such a state."""


def _key(instance: Instance) -> tuple[str, frozenset[str]]:
    return instance.state, frozenset(instance.compensations_seen)


@functools.cache
def choreography_reachability(c: Choreography) -> ChoreographyReachability:
    edges = {edge_of_row(row): i for i, row in enumerate(rows(c))}
    start = Instance(PENDING, _T0)
    seen = {_key(start)}
    todo: deque[tuple[Instance, tuple[str, ...]]] = deque([(start, ())])
    paths: dict[int, tuple[str, ...]] = {}
    waits: dict[str, tuple[str, ...]] = {}
    while todo:
        instance, way = todo.popleft()
        due = deadline(c, instance)
        if due is not None:
            waits.setdefault(due[0], way)
        for event in c.events:
            decision = track(c, instance, Observed(event.name, {}, f"r{len(way)}", _T0))
            if not decision.moved:
                continue
            after = decision.instance
            index = edges.get((event.name, instance.state, after.state))
            if index is not None:
                paths.setdefault(index, (*way, event.name))
            if _key(after) not in seen:
                seen.add(_key(after))
                todo.append((after, (*way, event.name)))
    return ChoreographyReachability(paths, waits)


@define
class ChoreographyCoverage:
    """Rows of one choreography's Machine the tracker took, against the reachable ones;
    expected events whose timer fired (marking an instance stuck)."""

    definition: Choreography
    taken: Counter[int] = field(factory=Counter)
    fired: set[str] = field(factory=set)

    @property
    def rows(self) -> tuple[TransitionRow, ...]:
        return rows(self.definition)

    @property
    def reachable(self) -> frozenset[int]:
        return frozenset(choreography_reachability(self.definition).paths)

    @property
    def timers(self) -> tuple[str, ...]:
        """Expected events some reachable state awaits (so their timer can fire)."""
        return tuple(sorted(choreography_reachability(self.definition).waits))

    def record(self, history: Iterable[HistoryEntry], fired: Iterable[str] = ()) -> None:
        edges: dict[Edge, int] = {edge_of_row(r): i for i, r in enumerate(self.rows)}
        for entry in history:
            index = edges.get(edge_of_entry(entry))
            if index is not None:
                self.taken[index] += 1
        self.fired.update(fired)

    @property
    def missed(self) -> tuple[TransitionRow, ...]:
        return tuple(self.rows[i] for i in sorted(self.reachable - set(self.taken)))

    @property
    def unreachable(self) -> tuple[TransitionRow, ...]:
        return tuple(r for i, r in enumerate(self.rows) if i not in self.reachable)

    @property
    def ratio(self) -> float:
        total = len(self.reachable)
        return 1.0 if total == 0 else len(set(self.taken) & self.reachable) / total

    def summary(self) -> str:
        taken, total = len(set(self.taken) & self.reachable), len(self.reachable)
        percent = int(self.ratio * 100) if taken < total else 100
        timers = len(self.fired & set(self.timers))
        return (
            f"{taken}/{total} reachable transitions taken ({percent}%),"
            f" {timers}/{len(self.timers)} expected-event timers fired"
        )

    def format(self) -> str:
        lines = [f"transition coverage: {self.summary()}"]
        if self.missed:
            lines.append("  never taken:")
            lines.extend(f"    {describe_row(row)}" for row in self.missed)
        never = [t for t in self.timers if t not in self.fired]
        if never:
            lines.append(f"  timers that never fired: {', '.join(never)}")
        unawaited = sorted({e.event for e in self.definition.expectations} - set(self.timers))
        if unawaited:
            lines.append(f"  expected but awaited in no reachable state: {', '.join(unawaited)}")
        if self.unreachable:
            lines.append(f"  {len(self.unreachable)} row(s) no sequence of events takes:")
            lines.extend(f"    {describe_row(row)}" for row in self.unreachable)
        return "\n".join(lines)

"""The hypothesis ``RuleBasedStateMachine`` of a choreography, and ``check`` for one.

Rules are what happens next in production: an instance starts; a participant publishes
an event its instance's state allows (cleanly, lost, twice, or late); the broker delivers
a queued event (any of them, when reordering is on); time passes, so deadlines do (the
tracker checks them, and may crash after publishing a compensating event); the tracker
restarts. At the end every instance runs to its end without faults and the properties
are checked (see ``World.check``)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import hypothesis
from attrs import define, field, frozen
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from saga_fsm._errors import InvalidArgument, InvalidArgumentType
from saga_fsm.choreography._definition import Choreography
from saga_fsm.choreography._tracker import Unknown
from saga_fsm.testing._choreo_coverage import ChoreographyCoverage, choreography_reachability
from saga_fsm.testing._choreo_world import EventFault, Run, World, WorldConfig, event_faults
from saga_fsm.testing._explore import (
    DEFAULT_STEPS,
    Counterexample,
    _counterexample,
    _run,
    _seeded,
    default_settings,
)
from saga_fsm.testing._invariants import InvariantViolation
from saga_fsm.testing._machine import class_name

if TYPE_CHECKING:
    import pytest


def _whole(_instance: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"instances must be a whole number >= 1, got {value!r}")


def _seconds(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgument(f"{attribute.name} must be > 0 seconds, got {value!r}")


def _unknown(value: Unknown | str) -> Unknown:
    try:
        return Unknown(value)
    except ValueError:
        names = ", ".join(u.value for u in Unknown)
        raise InvalidArgument(f"unknown must be one of {names}, got {value!r}") from None


@frozen
class ChoreographyOptions:
    """What to explore: the ``faults`` that may happen to events (all by default), how
    many ``instances`` run at once, and the tracker's own settings as you deploy it."""

    faults: tuple[EventFault, ...] = field(default=None, converter=event_faults)
    instances: int = field(default=2, validator=_whole)
    unknown: Unknown = field(default=Unknown.HOLD, converter=_unknown)
    reorder_window: float = field(default=5.0, validator=_seconds)
    hold_for: float = field(default=30.0, validator=_seconds)
    publish_compensations: bool = True
    directed_paths: bool = True

    def with_changes(self, changes: Mapping[str, Any]) -> ChoreographyOptions:
        names = [a.name for a in attrs.fields(ChoreographyOptions)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise InvalidArgumentType(
                f"unknown option {', '.join(map(repr, unknown))} for a choreography"
                f" (options are: {', '.join(names)})"
            )
        return attrs.evolve(self, **changes) if changes else self


def choreography_options(
    options: ChoreographyOptions | None, keywords: Mapping[str, Any]
) -> ChoreographyOptions:
    if options is not None and not isinstance(options, ChoreographyOptions):
        raise InvalidArgumentType(f"options must be a ChoreographyOptions, got {options!r}")
    return (options or ChoreographyOptions()).with_changes(keywords)


def world_config(c: Choreography, options: ChoreographyOptions) -> WorldConfig:
    if not isinstance(c, Choreography):
        raise InvalidArgumentType(f"expected a Choreography, got {c!r}")
    return WorldConfig(
        c,
        options.faults,
        options.instances,
        options.unknown,
        options.reorder_window,
        options.hold_for,
        options.publish_compensations,
    )


@define
class ChoreographyStats:
    coverage: ChoreographyCoverage
    examples: int = 0
    paths: int = 0
    distinct: set[tuple[str, ...]] = field(factory=set)
    first_failure_at: int | None = None
    last_failure_path: str = ""

    def record(self, world: World) -> None:
        for run in world.runs:
            history = world.history(run)
            self.coverage.record(history, world.stuck_on)
            self.paths += 1
            self.distinct.add(tuple(entry.trigger for entry in history))


class ChoreographyStateMachine(RuleBasedStateMachine):
    """Base class of the machines ``choreography_state_machine`` builds."""

    config: ClassVar[WorldConfig]
    stats: ClassVar[ChoreographyStats]

    def __init__(self) -> None:
        super().__init__()
        type(self).stats.examples += 1
        self.world = World(self.config)
        self.world.start()  # no example without an instance; more start by a rule

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except Exception:
            self.world.broken = True
            stats = type(self).stats
            if stats.first_failure_at is None:
                stats.first_failure_at = stats.examples
            stats.last_failure_path = self.world.path
            raise

    def _has(self, fault: EventFault) -> bool:
        return fault in self.config.faults

    def _publish(self, data: st.DataObject, fault: EventFault | None) -> None:
        candidates = self.world.producing()
        if fault is EventFault.LATE:
            candidates = [r for r in candidates if self.world.may_be_late(r)]
        run = self._pick(data, candidates)
        events = self.world.next_events(run)
        if fault is EventFault.LOST:
            events = [e for e in events if e != self.config.choreography.start]
        name = events[0] if len(events) == 1 else data.draw(st.sampled_from(events), "event")
        self.world.publish(run, name, fault)

    def _pick(self, data: st.DataObject, runs: list[Run]) -> Run:
        if len(runs) == 1:
            return runs[0]
        number = data.draw(st.sampled_from([r.number for r in runs]), label="instance")
        return next(r for r in runs if r.number == number)

    @precondition(lambda self: self.world.can_start())
    @rule()
    def start(self) -> None:
        """A new instance starts (its start event is published)."""
        with self._guard():
            self.world.start()

    @precondition(lambda self: bool(self.world.producing()))
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        """A participant publishes the next event of an instance."""
        with self._guard():
            self._publish(data, None)

    @precondition(lambda self: self._has(EventFault.LOST) and bool(self.world.producing()))
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        """A published event is lost: nobody reacts to it."""
        with self._guard():
            self._publish(data, EventFault.LOST)

    @precondition(lambda self: self._has(EventFault.DUPLICATED) and bool(self.world.producing()))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """A participant publishes an event twice (it crashed before noting it did)."""
        with self._guard():
            self._publish(data, EventFault.DUPLICATED)

    @precondition(
        lambda self: (
            self._has(EventFault.LATE)
            and any(self.world.may_be_late(r) for r in self.world.producing())
        )
    )
    @rule(data=st.data())
    def delay(self, data: st.DataObject) -> None:
        """A participant publishes its event only after the awaited one's deadline."""
        with self._guard():
            self._publish(data, EventFault.LATE)

    @precondition(lambda self: bool(self.world.queue))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """The broker delivers a queued event (any, when reordering is on)."""
        with self._guard():
            index = 0
            if self._has(EventFault.REORDERED) and len(self.world.queue) > 1:
                index = data.draw(st.integers(0, len(self.world.queue) - 1), label="delivery")
            self.world.deliver(index)

    @precondition(lambda self: not self.world.queue and bool(self.world.runs))
    @rule(data=st.data())
    def time_passes(self, data: st.DataObject) -> None:
        """Every deadline passes; the tracker checks them (and may crash just after
        publishing a compensating event)."""
        with self._guard():
            crash = self._has(EventFault.TRACKER_CRASH) and data.draw(st.booleans(), "crash")
            self.world.time_passes(crash)

    @precondition(lambda self: self._has(EventFault.TRACKER_CRASH))
    @rule()
    def restart_tracker(self) -> None:
        """The tracker process restarts: its memory is lost, the store is kept."""
        with self._guard():
            self.world.restart_tracker()

    @invariant()
    def properties_hold(self) -> None:
        with self._guard():
            self.world.check(final=False)

    def teardown(self) -> None:
        try:
            if not self.world.broken:
                with self._guard():
                    self.world.finish()
                    self.world.check(final=True)
        finally:
            try:
                type(self).stats.record(self.world)
            finally:
                self.world.close()


def build_choreography_machine(config: WorldConfig) -> type[ChoreographyStateMachine]:
    c = config.choreography
    namespace = {
        "config": config,
        "stats": ChoreographyStats(ChoreographyCoverage(c)),
        "__module__": __name__,
    }
    return type(f"{class_name(c)}Events", (ChoreographyStateMachine,), namespace)


def choreography_state_machine(
    choreography: Choreography, options: ChoreographyOptions | None = None, **keywords: Any
) -> type[ChoreographyStateMachine]:
    """A hypothesis ``RuleBasedStateMachine`` class exploring ``choreography`` with the
    real tracker (``TestOrders = choreography_state_machine(orders).TestCase``);
    ``cls.stats`` accumulates coverage and counts over every example."""
    chosen = choreography_options(options, keywords)
    return build_choreography_machine(world_config(choreography, chosen))


@frozen
class ChoreographyReport:
    """What ``check`` found for one choreography."""

    definition: Choreography
    seed: int
    examples: int
    directed_paths: int
    paths: int
    distinct_paths: int
    coverage: ChoreographyCoverage
    counterexample: Counterexample | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    def format(self) -> str:
        c = self.definition
        lines = [
            f"choreography {c.name} v{c.version}: {len(c.events)} events,"
            f" {len(c.participants)} participants",
            f"explored {self.paths} instances ({self.distinct_paths} distinct paths):"
            f" {self.examples} random examples + {self.directed_paths} directed,"
            f" {self.seconds:.1f}s, seed {self.seed}",
            self.coverage.format(),
        ]
        if self.counterexample is None:
            lines.append("result: every property holds")
        else:
            lines.append(self.counterexample.format())
            lines.append(f"result: FAILED (reproduce with seed {self.seed})")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        found = self.counterexample
        if found is None:
            return
        error = found.error or InvariantViolation(found.invariant, found.reason, path=found.path)
        error.add_note(
            f"saga_fsm.testing: {self.definition.name}, found after {found.found_after}"
            f" examples, seed {self.seed}; {self.coverage.summary()}"
        )
        raise error


def check_choreography(
    choreography: Choreography,
    options: ChoreographyOptions | None = None,
    *,
    max_examples: int | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    settings: hypothesis.settings | None = None,
    **keywords: Any,
) -> ChoreographyReport:
    chosen = choreography_options(options, keywords)
    config = world_config(choreography, chosen)
    machine = build_choreography_machine(config)
    value = seed if seed is not None else random.SystemRandom().randrange(2**32)
    started = time.perf_counter()
    base = settings or default_settings(max_examples, steps)
    found, program = _run(_seeded(machine, value), base)
    stats = machine.stats
    counterexample = None
    directed = 0
    if found is not None:
        at = stats.first_failure_at or stats.examples
        counterexample = _counterexample(
            found, at, stats.examples, stats.last_failure_path, "\n".join(program)
        )
    elif chosen.directed_paths:
        directed, error, path = _run_directed(config, stats)
        if error is not None:
            at = stats.examples + directed
            counterexample = _counterexample(error, at, at, path, "directed path")
    return ChoreographyReport(
        definition=choreography,
        seed=value,
        examples=stats.examples,
        directed_paths=directed,
        paths=stats.paths,
        distinct_paths=len(stats.distinct),
        coverage=stats.coverage,
        counterexample=counterexample,
        seconds=time.perf_counter() - started,
    )


def _run_directed(
    config: WorldConfig, stats: ChoreographyStats
) -> tuple[int, Exception | None, str]:
    """Take a shortest way to every reachable row and timer the examples missed; then,
    where losing events is explored, to every row with its event lost."""
    found = choreography_reachability(config.choreography)
    coverage = stats.coverage
    ways = [(found.paths[i], False) for i in sorted(coverage.reachable - set(coverage.taken))]
    ways += [(found.waits[t], False) for t in coverage.timers if t not in coverage.fired]
    if EventFault.LOST in config.faults:
        ways += [(found.paths[i], True) for i in sorted(found.paths) if len(found.paths[i]) > 1]
    runs = 0
    for way, lose_last in ways:
        if not way:
            continue
        runs += 1
        world = World(attrs.evolve(config, instances=1))
        try:
            run = world.start()
            for at, name in enumerate(way[1:], start=2):
                world.settle()
                lost = lose_last and at == len(way)
                world.publish(run, name, EventFault.LOST if lost else None)
            world.settle()
            world.time_passes()
            world.finish()
            world.check(final=True)
        except Exception as err:
            return runs, err, world.path
        finally:
            stats.record(world)
            world.close()
    return runs, None, ""


def choreography_test_case(
    choreography: Choreography,
    options: ChoreographyOptions | None = None,
    *,
    max_examples: int | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    min_coverage: float | None = None,
    **keywords: Any,
) -> type:
    chosen = choreography_options(options, keywords)
    world_config(choreography, chosen)  # a bad argument fails here, not in the test
    settings: dict[str, Any] = {"max_examples": max_examples, "steps": steps, "seed": seed}

    def test_choreography_properties(self: object, request: pytest.FixtureRequest) -> None:
        from saga_fsm.testing.pytest_plugin import record_report

        report = check_choreography(choreography, chosen, **settings)
        record_report(request.config, request.node.nodeid, report)
        report.raise_for_failure()
        if min_coverage is not None and report.coverage.ratio < min_coverage:
            raise AssertionError(
                f"transition coverage below {min_coverage:.0%}:\n{report.coverage.format()}"
            )

    name = f"Test{class_name(choreography)}"
    test_choreography_properties.__doc__ = (
        f"Every delivery of {choreography.name}'s events: the tracker's properties hold."
    )
    return type(
        name,
        (),
        {
            "__doc__": f"Property tests of the {choreography.name} choreography.",
            "__qualname__": name,
            "definition": choreography,
            "test_choreography_properties": test_choreography_properties,
        },
    )

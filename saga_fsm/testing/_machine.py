"""The hypothesis ``RuleBasedStateMachine`` built from a saga definition.

Each rule is one thing that can happen next in production: a saga's next command runs
cleanly, loses its reply, is refused, times out, or the process crashes around it; an
operator cancels, or retries a parked saga. Separate rules (rather than one rule
drawing an outcome) let hypothesis's swarm testing switch whole kinds of trouble off
for some examples, so long fault-free paths (to the pivot and beyond) are explored as
well as short unlucky ones. Sagas start by themselves whenever fewer than
``sagas`` are live. Invariants run after every rule; at the end, every live saga is
driven to a final state without faults and checked once more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

from attrs import define, field, frozen
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from saga_fsm._definition import SagaDefinition, WaitFor
from saga_fsm._errors import InvalidArgumentType
from saga_fsm.testing._coverage import TransitionCoverage
from saga_fsm.testing._driver import Driver, DriverConfig, SagaRun, render_interleaving
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._fixtures import DataSource, make_data, store_factory
from saga_fsm.testing._options import ExploreOptions, explore_options
from saga_fsm.testing._reachability import Edge, edge_of_entry, static_data
from saga_fsm.testing._trace import render_path

_CRASHES = (Fault.CRASH_BEFORE, Fault.CRASH_AFTER)
UNKNOWN_SIGNAL = "saga_fsm_testing_unknown_event"
_SIGNAL_DATA: tuple[dict[str, str], ...] = ({}, {"signalled_by": "saga_fsm.testing"})


@frozen
class MachineConfig:
    driver: DriverConfig
    data: DataSource = None
    sagas: int = 1
    """How many sagas may be live at once (more start as earlier ones finish)."""
    operator_retry: bool = True


@define
class RunStats:
    """What every example of one machine class added up to: coverage and counts."""

    coverage: TransitionCoverage
    examples: int = 0
    paths: int = 0
    distinct: set[tuple[Edge, ...]] = field(factory=set)
    first_failure_at: int | None = None
    """The number of the example that failed first (before shrinking)."""
    last_failure_path: str = ""
    """All sagas of the last failing example, in words."""
    last_failure_saga: SagaRun | None = None
    """The saga an invariant broke for in the last failing example."""

    def record(self, driver: Driver) -> None:
        """Add one example's sagas to the counts and the coverage."""
        for saga in driver.sagas:
            history = driver.run(driver.store.history(saga.saga_id))
            self.coverage.record(history)
            self.paths += 1
            self.distinct.add(tuple(edge_of_entry(e) for e in history))

    def failed(self, driver: Driver, error: Exception) -> None:
        if self.first_failure_at is None:
            self.first_failure_at = self.examples
        if len(driver.sagas) > 1:
            self.last_failure_path = render_interleaving(driver.timeline)
        else:
            self.last_failure_path = render_path(driver.sagas[0].trace if driver.sagas else ())
        broken = getattr(error, "saga", None)
        self.last_failure_saga = next((s for s in driver.sagas if s.number == broken), None)


class SagaStateMachine(RuleBasedStateMachine):
    """Base class of the machines ``saga_state_machine`` builds (one per definition)."""

    config: ClassVar[MachineConfig]
    stats: ClassVar[RunStats]

    def __init__(self) -> None:
        super().__init__()
        type(self).stats.examples += 1
        self.driver = Driver(self.config.driver)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Remember any failure, so teardown does not add a second one on top."""
        try:
            yield
        except Exception as err:
            self.driver.broken = True
            type(self).stats.failed(self.driver, err)
            raise

    def _pick(self, data: st.DataObject, candidates: Sequence[SagaRun]) -> SagaRun:
        if len(candidates) == 1:
            return candidates[0]
        number = data.draw(st.sampled_from([s.number for s in candidates]), label="saga")
        return next(s for s in candidates if s.number == number)

    def _faults(self, saga: SagaRun, kinds: Iterable[Fault]) -> list[Fault]:
        return [f for f in self.driver.faults_for(saga) if f in kinds]

    def _choose_call(
        self, data: st.DataObject, saga: SagaRun, kinds: Iterable[Fault] | None = None
    ) -> None:
        """Of a parallel group's calls in flight, which one ends next (one ``kinds``
        of fault can happen to)."""
        steps = self.driver.calls(saga)
        if len(steps) < 2:
            return
        if kinds is not None:
            kinds = tuple(kinds)
            fits = []
            for step in steps:
                self.driver.choose(saga, step)
                if self._faults(saga, kinds):
                    fits.append(step)
            steps = fits or steps
        self.driver.choose(saga, data.draw(st.sampled_from(steps), label="call"))

    def _inject(self, data: st.DataObject, kinds: Iterable[Fault]) -> None:
        candidates = [s for s in self.driver.runnable() if self._faults(s, kinds)]
        saga = self._pick(data, candidates)
        self._choose_call(data, saga, kinds)
        faults = self._faults(saga, kinds)
        fault = faults[0] if len(faults) == 1 else data.draw(st.sampled_from(faults), "fault")
        self.driver.advance(saga, fault)

    def _can_inject(self, kinds: Iterable[Fault]) -> bool:
        return any(self._faults(s, kinds) for s in self.driver.runnable())

    def _top_up(self, data: st.DataObject) -> None:
        """Start sagas until ``config.sagas`` are live. Not a rule of its own: a new
        saga simply appears when the last one finished, so the shrinker can drop a
        whole earlier saga and the next one takes its place unchanged."""
        while len(self.driver.live()) < self.config.sagas:
            self.driver.create(make_data(self.config.data, self.driver.world, data.draw))

    # -- rules: one per kind of trouble, so swarm testing can switch kinds off ------------
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """The next thing happens (start, wake-up, call) with nothing going wrong."""
        with self._guard():
            self._top_up(data)
            saga = self._pick(data, self.driver.live())
            self._choose_call(data, saga)
            self.driver.advance(saga, Fault.OK)

    @precondition(lambda self: self._can_inject((Fault.TRANSIENT,)))
    @rule(data=st.data())
    def lose_reply(self, data: st.DataObject) -> None:
        """The next call acts, but its reply is lost: a transient failure."""
        with self._guard():
            self._inject(data, (Fault.TRANSIENT,))

    @precondition(lambda self: self._can_inject((Fault.LOST,)))
    @rule(data=st.data())
    def lose_request(self, data: st.DataObject) -> None:
        """The next call never reaches the participant, yet looks like a lost reply:
        the step is compensated with nothing to undo."""
        with self._guard():
            self._inject(data, (Fault.LOST,))

    @precondition(lambda self: self._can_inject((Fault.PERMANENT,)))
    @rule(data=st.data())
    def refuse(self, data: st.DataObject) -> None:
        """The participant refuses the next call for good, before acting."""
        with self._guard():
            self._inject(data, (Fault.PERMANENT,))

    @precondition(lambda self: self._can_inject((Fault.TIMEOUT,)))
    @rule(data=st.data())
    def time_out(self, data: st.DataObject) -> None:
        """The next call acts, but answers after its deadline."""
        with self._guard():
            self._inject(data, (Fault.TIMEOUT,))

    @precondition(lambda self: self._can_inject(_CRASHES))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """The process dies around the next call, before or after its effect."""
        with self._guard():
            self._inject(data, _CRASHES)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """An operator cancels, whatever the saga is doing (refusals are checked too)."""
        with self._guard():
            self._top_up(data)
            self.driver.cancel(self._pick(data, self.driver.live()))

    @precondition(lambda self: bool(self.signals))
    @rule(data=st.data())
    def signal(self, data: st.DataObject) -> None:
        """Someone signals a saga, whatever it is doing: before, during or after its
        wait, an event it waits for or not, the same one again."""
        with self._guard():
            self._top_up(data)
            saga = self._pick(data, self.driver.sagas)
            name = data.draw(st.sampled_from(self.signals), label="event")
            payload = data.draw(st.sampled_from(_SIGNAL_DATA), label="event data")
            self.driver.signal(saga, name, dict(payload))

    @property
    def signals(self) -> tuple[str, ...]:
        """Every event the definition's waits list, and one none of them does."""
        names = [
            name
            for step in self.config.driver.definition.steps
            if isinstance(step, WaitFor)
            for name in step.outcomes
        ]
        return (*dict.fromkeys(names), UNKNOWN_SIGNAL) if names else ()

    @precondition(lambda self: self.config.operator_retry and bool(self.driver.parked()))
    @rule(data=st.data())
    def operator_retry(self, data: st.DataObject) -> None:
        """An operator resumes a saga parked in ``failed``."""
        with self._guard():
            self.driver.operator_retry(self._pick(data, self.driver.parked()))

    @invariant()
    def properties_hold(self) -> None:
        """Every invariant, for each saga the last rule touched."""
        with self._guard():
            self.driver.check(final=False)

    def teardown(self) -> None:
        try:
            if not self.driver.broken:
                with self._guard():
                    self.driver.finish_all()
                    self.driver.check(final=True)
        finally:
            try:
                type(self).stats.record(self.driver)
            finally:
                self.driver.close()


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def class_name(definition: _Named) -> str:
    words = re.split(r"[^A-Za-z0-9]+", definition.name)
    return "".join(w[:1].upper() + w[1:] for w in words if w) or "Saga"


def machine_config(definition: SagaDefinition, options: ExploreOptions) -> MachineConfig:
    if not isinstance(definition, SagaDefinition):
        raise InvalidArgumentType(f"expected a SagaDefinition, got {definition!r}")
    return MachineConfig(
        driver=DriverConfig(
            definition,
            invariants=options.invariants,
            setup=options.setup,
            store=store_factory(options.store),
            simulate=options.simulate,
            faults=options.faults,
            builtin_invariants=options.builtin_invariants,
            participants=options.participants,
        ),
        data=options.data,
        sagas=options.sagas,
        operator_retry=options.operator_retry,
    )


def build_machine(config: MachineConfig) -> type[SagaStateMachine]:
    definition = config.driver.definition
    coverage = TransitionCoverage.for_definition(
        definition, config.driver.faults, config.operator_retry, static_data(config.data)
    )
    name = f"{class_name(definition)}Paths"
    namespace = {"config": config, "stats": RunStats(coverage), "__module__": __name__}
    return type(name, (SagaStateMachine,), namespace)


def saga_state_machine(
    definition: SagaDefinition, options: ExploreOptions | None = None, **keywords: Any
) -> type[SagaStateMachine]:
    """A hypothesis ``RuleBasedStateMachine`` class exploring ``definition``.

    Run it like any other (``TestOrder = saga_state_machine(order).TestCase``, or
    ``run_state_machine_as_test``); ``cls.stats`` accumulates coverage and counts over
    every example. ``check`` and ``saga_test_case`` wrap it with settings and a report.
    ``options`` (an ``ExploreOptions``), or its fields as keywords, say what to explore.
    """
    return build_machine(machine_config(definition, explore_options(options, keywords)))

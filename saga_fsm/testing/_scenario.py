"""Scripted scenarios: given data, when these calls go these ways, expect this outcome.

    scenario(order).given({"amount": 30}).when(
        step("reserve").succeeds(), step("charge").fails(permanent=True)
    ).expect(compensations=["reserve"], state="compensated")

The script names only what matters; every other call succeeds. Each directive is
applied to the next call it names (earlier calls run cleanly), so a script reads in
the order things happen. The run uses the same driver as the property tests: real
actions, the pure core, a store, every invariant after every event. When the outcome
differs, the message puts the expected path next to the actual one: the path the
script leads to when actions do as scripted (simulated), and the path it took.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from attrs import evolve, field, frozen

from saga_fsm._core import RunCompensation, RunStep, waiting_for
from saga_fsm._definition import SagaDefinition, WaitFor
from saga_fsm._errors import InvalidArgument, InvalidArgumentType, SagaError
from saga_fsm._flow import PENDING
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores import SnapshotStore
from saga_fsm.testing._driver import Driver, DriverConfig, SagaRun
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._fixtures import Setup, StoreFactory, make_data, store_factory
from saga_fsm.testing._invariants import Invariant, InvariantFunction, as_invariant
from saga_fsm.testing._trace import TraceEntry, render_path

Phase = Literal["step", "compensation"]
_WORDS = {
    Fault.OK: "succeeds",
    Fault.TRANSIENT: "fails",
    Fault.PERMANENT: "fails permanently",
    Fault.TIMEOUT: "times out",
    Fault.CRASH_BEFORE: "crashes before its effect",
    Fault.CRASH_AFTER: "crashes after its effect",
    Fault.LOST: "is lost before it arrives",
}
_LIMIT = 1000


@frozen
class Directive:
    """One line of a script: what happens to the next call of a step (or its
    compensation), or an operator's cancel or retry."""

    kind: Literal["call", "cancel", "retry", "signal"]
    phase: Phase = "step"
    step: str = ""
    """For ``signal``: the event's name."""
    fault: Fault = Fault.OK
    times: int = 1
    data: Mapping[str, Any] = field(factory=dict)
    """For ``signal``: the event's data."""

    def describe(self) -> str:
        if self.kind == "signal":
            data = f", {dict(self.data)!r}" if self.data else ""
            return f"signal({self.step!r}{data})"
        if self.kind != "call":
            return "cancel()" if self.kind == "cancel" else "operator_retry()"
        who = f"compensation({self.step!r})" if self.phase == "compensation" else repr(self.step)
        times = f" {self.times} times" if self.times != 1 else ""
        return f"{who} {_WORDS[self.fault]}{times}"


@frozen
class StepScript:
    """What ``step(name)`` and ``compensation(name)`` return; pick an outcome."""

    name: str
    phase: Phase = "step"

    def _directive(self, fault: Fault, times: int) -> Directive:
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise InvalidArgument(f"times must be a whole number >= 1, got {times!r}")
        return Directive("call", self.phase, self.name, fault, times)

    def succeeds(self) -> Directive:
        return self._directive(Fault.OK, 1)

    def fails(self, *, permanent: bool = False, times: int = 1) -> Directive:
        """A permanent failure is a refusal before the participant acts; a transient
        one acts and loses its reply (see ``Fault``)."""
        return self._directive(Fault.PERMANENT if permanent else Fault.TRANSIENT, times)

    def is_lost(self, *, times: int = 1) -> Directive:
        """The request never reaches the participant, which does nothing; the engine
        sees a transient failure, as for a lost reply (see ``Fault``)."""
        return self._directive(Fault.LOST, times)

    def times_out(self, *, times: int = 1) -> Directive:
        return self._directive(Fault.TIMEOUT, times)

    def crashes(self, *, after_effect: bool = False) -> Directive:
        """The process dies around the call: before it (the call is never made) or
        after its effect, before the result is saved (it is made again)."""
        return self._directive(Fault.CRASH_AFTER if after_effect else Fault.CRASH_BEFORE, 1)


def step(name: str) -> StepScript:
    """Script the next call of step ``name``'s action."""
    return StepScript(name)


def compensation(name: str) -> StepScript:
    """Script the next call of the compensation of step ``name``."""
    return StepScript(name, "compensation")


def cancel() -> Directive:
    """An operator cancels the saga at this point of the script."""
    return Directive("cancel")


def operator_retry() -> Directive:
    """An operator retries the saga parked in ``failed`` at this point of the script."""
    return Directive("retry")


def signal(event: str, data: Mapping[str, Any] | None = None) -> Directive:
    """The event ``event`` (with ``data``) arrives once the saga waits for it (until
    then the saga runs on; a wait that lists other events meanwhile times out)."""
    if not isinstance(event, str) or not event:
        raise InvalidArgument(f"signal() takes an event name, got {event!r}")
    return Directive("signal", step=event, data=dict(data or {}))


def _states(history: Iterable[HistoryEntry]) -> list[str]:
    states = [PENDING]
    for entry in history:
        if entry.to_state != states[-1]:
            states.append(entry.to_state)
    return states


@frozen
class ScenarioResult:
    """How a scripted run went."""

    snapshot: Snapshot
    history: tuple[HistoryEntry, ...]
    trace: tuple[TraceEntry, ...]
    world: Any
    unapplied: tuple[Directive, ...] = ()
    """Directives the run never got to (the saga ended before the call they name)."""

    @property
    def state(self) -> str:
        return self.snapshot.state

    @property
    def path(self) -> list[str]:
        """The states the saga went through, ``pending`` first."""
        return _states(self.history)

    @property
    def compensations(self) -> list[str]:
        """Steps whose compensation succeeded, in order."""
        return [
            str(e.detail.get("step")) for e in self.history if e.trigger == "compensation_succeeded"
        ]

    @property
    def run(self) -> str:
        """The run in words: ``reserve ok -> charge refused (permanent) -> ...``."""
        return render_path(self.trace)


class ScenarioMismatch(SagaError, AssertionError):
    """A scripted scenario did not end as expected; the message shows both paths."""


@frozen
class Scenario:
    """An immutable script; ``given`` and ``when`` return new ones."""

    definition: SagaDefinition
    data: Mapping[str, Any] = field(factory=dict)
    directives: tuple[Directive, ...] = ()
    setup: Setup | None = None
    store: StoreFactory | None = None
    invariants: tuple[Invariant, ...] = ()
    simulate: bool = False

    def given(self, data: Mapping[str, Any] | None = None, **fields: Any) -> Scenario:
        """The saga's initial data (a mapping, and/or keyword fields)."""
        return evolve(self, data={**(data or {}), **fields})

    def when(self, *directives: Directive) -> Scenario:
        """What happens, in order; calls not mentioned succeed."""
        for directive in directives:
            self._validate(directive)
        return evolve(self, directives=(*self.directives, *directives))

    def _validate(self, directive: Directive) -> None:
        if not isinstance(directive, Directive):
            raise InvalidArgumentType(
                f"when() takes step(...)/compensation(...) outcomes, signal(...), cancel()"
                f" or operator_retry(), got {directive!r}"
            )
        if directive.kind == "signal":
            events = {
                e for s in self.definition.steps if isinstance(s, WaitFor) for e in s.outcomes
            }
            if directive.step not in events:
                raise InvalidArgument(
                    f"no wait of {self.definition.name} waits for {directive.step!r}"
                    f" (events: {sorted(events)})"
                )
            return
        if directive.kind != "call":
            return
        names = [s.name for s in self.definition.steps]
        if directive.step not in names:
            raise InvalidArgument(
                f"no step {directive.step!r} in {self.definition.name} (steps: {names})"
            )
        found = self.definition.step(directive.step)
        if directive.phase == "compensation" and not found.compensable:
            raise InvalidArgument(f"step {directive.step!r} has no compensation")
        if directive.phase == "step" and not found.has_action:
            raise InvalidArgument(f"step {directive.step!r} has no action to call")
        timeout = (
            found.remote_compensation_timeout
            if directive.phase == "compensation"
            else found.timeout
        )
        if directive.fault is Fault.TIMEOUT and timeout is None:
            raise InvalidArgument(
                f"{directive.describe()}: the {directive.phase} has no timeout, so it cannot"
                " time out (the engine would wait for it)"
            )

    def _config(self, *, simulate: bool) -> DriverConfig:
        return DriverConfig(
            self.definition,
            invariants=self.invariants if not simulate else (),
            setup=self.setup if not simulate else None,
            store=self.store or store_factory(None),
            simulate=simulate,
        )

    def run(self) -> ScenarioResult:
        """Run the script with the real actions; raises ``InvariantViolation`` if an
        invariant breaks on the way."""
        return _play(self._config(simulate=self.simulate), self.data, self.directives)

    def expect(
        self,
        *,
        state: str | None = None,
        compensations: Sequence[str] | None = None,
        path: Sequence[str] | str | None = None,
        data: Mapping[str, Any] | None = None,
        failure: str | None = None,
    ) -> ScenarioResult:
        """Run, then compare: the final ``state``; the steps whose ``compensations``
        ran, in order; the ``path`` of states (a list or ``"a -> b -> c"``); a subset
        of the final ``data``; a substring of the recorded ``failure``."""
        result = self.run()
        wanted_path = path.split(" -> ") if isinstance(path, str) else path
        problems: list[str] = []

        def compare(what: str, expected: object, actual: object) -> None:
            if expected is not None and expected != actual:
                problems.append(f"  {what}: expected {expected!r}, got {actual!r}")

        compare("state", state, result.state)
        compare(
            "compensations",
            list(compensations) if compensations is not None else None,
            result.compensations,
        )
        compare("path", list(wanted_path) if wanted_path is not None else None, result.path)
        if data is not None:
            actual = {k: result.snapshot.data.get(k, "<missing>") for k in data}
            compare("data", dict(data), actual)
        if failure is not None and failure not in str(result.snapshot.failure):
            problems.append(
                f"  failure: expected one mentioning {failure!r}, got {result.snapshot.failure}"
            )
        for directive in result.unapplied:
            problems.append(
                f"  never applied: {directive.describe()} (the saga ended at {result.state!r})"
            )
        if problems:
            raise ScenarioMismatch(self._mismatch(problems, result, wanted_path))
        return result

    def _mismatch(
        self, problems: list[str], result: ScenarioResult, wanted: Sequence[str] | None
    ) -> str:
        if wanted is not None:
            label, expected = "expected path:", " -> ".join(wanted)
        else:
            simulated = _play(self._config(simulate=True), self.data, self.directives)
            label, expected = "expected path (script, simulated):", " -> ".join(simulated.path)
        width = max(len(label), len("actual path:"))
        return "\n".join(
            [
                f"scenario of {self.definition.name} did not go as expected:",
                *problems,
                f"  {label:<{width}} {expected}",
                f"  {'actual path:':<{width}} {' -> '.join(result.path)}",
                f"  {'run:':<{width}} {result.run}",
            ]
        )


def scenario(
    definition: SagaDefinition,
    *,
    setup: Setup | None = None,
    store: SnapshotStore | StoreFactory | str | None = None,
    invariants: Iterable[Invariant | InvariantFunction] = (),
    simulate: bool = False,
) -> Scenario:
    """Start a script for ``definition`` (see the module docstring)."""
    if not isinstance(definition, SagaDefinition):
        raise InvalidArgumentType(f"expected a SagaDefinition, got {definition!r}")
    return Scenario(
        definition,
        setup=setup,
        store=store_factory(store) if store is not None else None,
        invariants=tuple(as_invariant(i) for i in invariants),
        simulate=simulate,
    )


def _matches(saga: SagaRun, directive: Directive) -> bool:
    command = saga.next
    wanted = RunCompensation if directive.phase == "compensation" else RunStep
    return isinstance(command, wanted) and command.step == directive.step


def _apply(driver: Driver, saga: SagaRun, directive: Directive) -> bool:
    """Apply one directive; False if the saga ended before the call it names."""
    if directive.kind == "cancel":
        driver.cancel(saga)
    elif directive.kind == "retry":
        driver.operator_retry(saga)
    elif directive.kind == "signal":
        for _ in range(_LIMIT):
            if saga.decided.is_terminal:
                return False
            wait = waiting_for(driver.compiled, saga.decided)
            if wait is not None and directive.step in wait.outcomes:
                driver.signal(saga, directive.step, dict(directive.data))
                break
            driver.advance(saga)
            driver.check(final=False)
        else:
            return False
    else:
        for _ in range(directive.times):
            for _ in range(_LIMIT):
                if saga.decided.is_terminal:
                    return False
                if _matches(saga, directive):
                    if directive.fault not in driver.faults_for(saga):
                        raise InvalidArgument(
                            f"{directive.describe()}: the participant already acted on this"
                            " call's idempotency key, so it cannot refuse it any more"
                            " (fails() is a lost reply)"
                        )
                    driver.advance(saga, directive.fault)
                    driver.check(final=False)
                    break
                driver.advance(saga)
                driver.check(final=False)
            else:
                return False
    driver.check(final=False)
    return True


def _play(
    config: DriverConfig, data: Mapping[str, Any], script: Sequence[Directive]
) -> ScenarioResult:
    driver = Driver(config)
    try:
        saga = driver.create(make_data(data, driver.world, _no_draw))
        unapplied: list[Directive] = []
        for directive in script:
            if unapplied or not _apply(driver, saga, directive):
                unapplied.append(directive)
        driver.finish_all()
        driver.check(final=True)
        ctx = driver.context(saga, final=True)
        return ScenarioResult(ctx.snapshot, ctx.history, ctx.trace, driver.world, tuple(unapplied))
    finally:
        driver.close()


def _no_draw(strategy: Any) -> Any:
    raise InvalidArgumentType("a scenario's data is a mapping, not a strategy")

"""``check``: run the property machine of a definition under hypothesis and report what
it found (paths, coverage, and the shrunk counterexample) instead of a traceback."""

from __future__ import annotations

import random
import time
import traceback
from typing import TYPE_CHECKING, Any, overload

import hypothesis
from attrs import field, frozen
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Flaky
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from saga_fsm._definition import SagaDefinition
from saga_fsm.choreography._definition import Choreography
from saga_fsm.testing._coverage import TransitionCoverage
from saga_fsm.testing._directed import DirectedResult, minimise, run_directed
from saga_fsm.testing._invariants import InvariantViolation
from saga_fsm.testing._machine import build_machine, machine_config
from saga_fsm.testing._options import ExploreOptions, explore_options

if TYPE_CHECKING:
    from saga_fsm.testing._choreo_machine import ChoreographyOptions, ChoreographyReport

DEFAULT_STEPS = 30


def default_settings(max_examples: int | None, steps: int) -> hypothesis.settings:
    """Explore, then shrink; no example database (a seed reproduces a run), no deadline
    (real actions run), no explain phase (the report says what happened instead).
    ``max_examples=None`` takes the current hypothesis profile's (100 unless a profile
    says otherwise, e.g. ``--hypothesis-profile ci``)."""
    return hypothesis.settings(
        max_examples=max_examples or hypothesis.settings().max_examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=(
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ),
        report_multiple_bugs=False,
        print_blob=False,
    )


@frozen
class Counterexample:
    """The smallest failing run found (by hypothesis, then shortened by ``minimise``),
    in words."""

    invariant: str
    reason: str
    path: str
    """The broken saga's run: ``reserve ok -> charge timed out -> release raised ...``."""
    found_after: int
    """How many examples were explored until the first failure (before shrinking)."""
    shrink_runs: int
    program: str = ""
    """Hypothesis's own listing of the rules of the shrunk run."""
    error: BaseException | None = field(default=None, eq=False, repr=False)

    def format(self) -> str:
        return "\n".join(
            [
                f"counterexample (found after {self.found_after} examples,"
                f" shrunk in {self.shrink_runs} more runs):",
                f"  {self.path}",
                f"broken invariant: {self.invariant}",
                f"  {self.reason}",
            ]
        )


@frozen
class CheckReport:
    """What ``check`` found for one definition."""

    definition: SagaDefinition
    seed: int
    examples: int
    directed_paths: int
    """Runs that took a shortest path to a row the random examples missed."""
    taken_at_random: int
    """Rows the random examples took, before any directed path."""
    paths: int
    distinct_paths: int
    coverage: TransitionCoverage
    counterexample: Counterexample | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    def format(self) -> str:
        d = self.definition
        lines = [
            f"saga {d.name} v{d.version}: {len(d.steps)} steps",
            f"explored {self.paths} paths ({self.distinct_paths} distinct): {self.examples}"
            f" random examples + {self.directed_paths} directed, {self.seconds:.1f}s,"
            f" seed {self.seed}",
            self._coverage_text(),
        ]
        if self.counterexample is None:
            lines.append("result: every property holds")
        else:
            lines.append(self.counterexample.format())
            lines.append(f"result: FAILED (reproduce with seed {self.seed})")
        return "\n".join(lines)

    def _coverage_text(self) -> str:
        text = self.coverage.format()
        extra = len(set(self.coverage.taken)) - self.taken_at_random
        if self.directed_paths and extra > 0:
            first, _, rest = text.partition("\n")
            by = f"; {self.taken_at_random} by random examples, {extra} by directed paths"
            text = first + by + ("\n" + rest if rest else "")
        return text

    def raise_for_failure(self) -> None:
        """Raise the counterexample's error (an ``InvariantViolation`` when an invariant
        broke), noted with how it was found and how to reproduce it."""
        found = self.counterexample
        if found is None:
            return
        error = found.error
        if error is None:
            error = InvariantViolation(found.invariant, found.reason, path=found.path)
        error.add_note(
            f"saga_fsm.testing: {self.definition.name}, found after {found.found_after}"
            f" examples, seed {self.seed}; {self.coverage.summary()}"
        )
        raise error


@overload
def check(
    definition: SagaDefinition,
    options: ExploreOptions | None = None,
    *,
    max_examples: int | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    settings: hypothesis.settings | None = None,
    **keywords: Any,
) -> CheckReport: ...


@overload
def check(
    definition: Choreography,
    options: ChoreographyOptions | None = None,
    *,
    max_examples: int | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    settings: hypothesis.settings | None = None,
    **keywords: Any,
) -> ChoreographyReport: ...


def check(
    definition: SagaDefinition | Choreography,
    options: Any = None,
    *,
    max_examples: int | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    settings: hypothesis.settings | None = None,
    **keywords: Any,
) -> CheckReport | ChoreographyReport:
    """Explore ``definition`` with hypothesis and report; never raises for a broken
    property (see ``CheckReport.raise_for_failure``). A ``Choreography`` is explored
    with its events lost, duplicated, reordered and late, through the real tracker
    (``ChoreographyOptions``, or its fields as keywords).

    ``max_examples`` defaults to the hypothesis profile's (100 by default);
    ``steps`` bounds the rules per example; ``seed`` makes the run reproducible (a
    random one is chosen and reported otherwise); ``settings`` replaces the defaults.
    With ``directed_paths`` (the default), every reachable transition the random
    examples missed is then taken by a shortest path to it, real actions and all.
    ``options`` (an ``ExploreOptions``), or its fields as keywords, say what to
    explore: ``check(order, invariants=[...], setup=fresh_world)``.
    """
    if isinstance(definition, Choreography):
        from saga_fsm.testing._choreo_machine import check_choreography

        return check_choreography(
            definition,
            options,
            max_examples=max_examples,
            steps=steps,
            seed=seed,
            settings=settings,
            **keywords,
        )
    chosen_options = explore_options(options, keywords)
    config = machine_config(definition, chosen_options)
    machine = build_machine(config)
    chosen = seed if seed is not None else random.SystemRandom().randrange(2**32)
    seeded = _seeded(machine, chosen)
    started = time.perf_counter()
    base = settings or default_settings(max_examples, steps)
    # Explore without hypothesis's shrinker first: shrinking a whole example is slow,
    # and ``minimise`` shortens the broken saga itself far faster. Hypothesis shrinks
    # only what ``minimise`` cannot (a failure that needs several sagas, or an error
    # that is not an invariant).
    exploring = hypothesis.settings(base, phases=[p for p in base.phases if p is not Phase.shrink])
    found, program = _run(seeded, exploring)
    stats = machine.stats
    counterexample = None
    directed = DirectedResult()
    taken_at_random = 0
    if found is not None:
        found_after = stats.first_failure_at or stats.examples
        path, replays = stats.last_failure_path, 0
        broken = stats.last_failure_saga
        smaller = None
        if isinstance(found, InvariantViolation) and broken is not None:
            smaller = minimise(config.driver, found, tuple(broken.trace), broken.data)
        if smaller is not None:
            found, path, replays = smaller
        elif Phase.shrink in base.phases:
            before = stats.examples
            shrunk, program = _run(seeded, base)
            if shrunk is not None:
                found, path, replays = shrunk, stats.last_failure_path, stats.examples - before
        counterexample = _counterexample(
            found, found_after, found_after + replays, path, "\n".join(program)
        )
    elif chosen_options.directed_paths:
        taken_at_random = len(set(stats.coverage.taken))
        directed = run_directed(config, stats)
        if directed.error is not None:
            moves = ", ".join(" ".join((m[0], m[1].value, *m[2:])) for m in directed.moves)
            counterexample = _counterexample(
                directed.error,
                stats.examples + directed.runs,
                stats.examples + directed.runs,
                directed.path,
                f"directed path: {moves}",
            )
    return CheckReport(
        definition=definition,
        seed=chosen,
        examples=stats.examples,
        directed_paths=directed.runs,
        taken_at_random=taken_at_random or len(set(stats.coverage.taken)),
        paths=stats.paths,
        distinct_paths=len(stats.distinct),
        coverage=stats.coverage,
        counterexample=counterexample,
        seconds=time.perf_counter() - started,
    )


def _run(machine: type, chosen: hypothesis.settings) -> tuple[BaseException | None, list[str]]:
    """Run the machine under hypothesis; the failure it ends with, and its listing."""
    program: list[str] = []
    with with_reporter(lambda text: program.append(str(text))):
        try:
            run_state_machine_as_test(machine, settings=chosen)
        except (Exception, Flaky) as err:
            return err, program
    return None, program


def _seeded(machine: type, value: int) -> type:
    """``@seed`` on the class: ``run_state_machine_as_test`` copies it to its test."""
    seeded: type = hypothesis.seed(value)(machine)
    return seeded


def _counterexample(
    error: BaseException, found_after: int, runs: int, path: str, listing: str
) -> Counterexample:
    shrink_runs = max(runs - found_after, 0)
    if isinstance(error, InvariantViolation):
        return Counterexample(
            error.invariant,
            error.reason,
            path,
            found_after,
            shrink_runs,
            listing,
            error,
        )
    if isinstance(error, Flaky):
        reason = (
            "the same choices gave different results when replayed: reset the world in"
            f" your setup hook (and keep actions deterministic). {error}"
        )
        return Counterexample(
            "replays_deterministically", reason, path, found_after, shrink_runs, listing, error
        )
    reason = "".join(traceback.format_exception_only(error)).strip()
    return Counterexample(
        "runs_without_error", reason, path, found_after, shrink_runs, listing, error
    )

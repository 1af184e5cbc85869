"""saga_fsm.testing explores parallel groups: random faults in every branch (refusals,
lost replies, timeouts, crashes before and after the effect, mid-fan-out and
mid-compensation), cancels and operator retries, with every invariant checked; and a
group that gets it wrong is caught."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import saga_fsm._parallel as parallel
from saga_fsm import (
    ForEach,
    Parallel,
    RetryPolicy,
    SagaDefinition,
    Step,
    StepContext,
)
from saga_fsm.examples import parallel_order
from saga_fsm.examples._fakes import FakeServices, services
from saga_fsm.testing import check

FAST = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.01)
UNDO = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.01)


def fresh_services() -> FakeServices:
    services.configure()
    return services


def test_the_parallel_example_holds_every_property_with_full_coverage() -> None:
    report = check(parallel_order.definition, setup=fresh_services, max_examples=60, seed=3)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0 and not report.coverage.missed, report.format()
    assert {row.trigger for row in report.coverage.unreachable} == {"step_timed_out"}
    triggers = {row.trigger for row in report.coverage.rows}
    assert "branch_progress" in triggers


def test_saga_fsm_check_on_the_parallel_example_takes_every_reachable_transition(
    tmp_path: Path,
) -> None:
    """The acceptance run, as a user types it."""
    done = subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", "check", "saga_fsm.examples.parallel_order"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "transition coverage: 38/38 reachable transitions taken (100%)" in done.stdout
    assert "result: every property holds" in done.stdout


class Ledger:
    """A world whose participants deduplicate on the key, as the contract says."""

    def __init__(self) -> None:
        self.effects: dict[str, Any] = {}

    def act(self, ctx: StepContext) -> dict[str, Any]:
        return self.effects.setdefault(ctx.idempotency_key, {ctx.step.replace("/", "_"): 1})

    def undo(self, ctx: StepContext) -> None:
        self.effects.pop(ctx.idempotency_key.removesuffix(":compensate"), None)


LEDGER = Ledger()


def act(ctx: StepContext) -> dict[str, Any]:
    return LEDGER.act(ctx)


def undo(ctx: StepContext) -> None:
    LEDGER.undo(ctx)


def fresh_ledger() -> Ledger:
    LEDGER.effects.clear()
    return LEDGER


def step(name: str) -> Step:
    return Step(name, act, undo, retry=FAST, compensation_retry=UNDO, timeout=5.0)


def shapes() -> SagaDefinition:
    """join="any" with two-step branches, then a ForEach over what the first step made."""

    def plan(ctx: StepContext) -> dict[str, Any]:
        return {"items": ["x", "y"]}

    return SagaDefinition(
        "shapes",
        [
            Step("plan", plan, read_only=True),
            Parallel(
                "quote",
                branches={"a": [step("ask"), step("hold")], "b": [step("ask")]},
                join="any",
                max_concurrency=2,
            ),
            ForEach("each", items="items", steps=[step("book")], max_concurrency=1),
            Step("pay", act, kind="pivot", retry=FAST, timeout=5.0),
        ],
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_join_any_and_for_each_hold_every_property(seed: int) -> None:
    report = check(shapes(), setup=fresh_ledger, max_examples=80, seed=seed)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0, report.format()


@pytest.fixture
def forgetful_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A group that forgets to undo its branch "east" once that branch joined."""
    compensate = parallel._Group.compensate

    def forget_east(self: Any) -> None:
        fire = self.fire

        def fire_but_east(n: int, event: Any) -> None:
            if self.branches[n].key == "east" and event.trigger == "step_failed":
                return
            fire(n, event)

        self.fire = fire_but_east
        compensate(self)

    monkeypatch.setattr(parallel._Group, "compensate", forget_east)
    yield


@pytest.mark.usefixtures("forgetful_group")
def test_a_group_that_leaves_a_branch_undone_is_caught() -> None:
    report = check(parallel_order.definition, setup=fresh_services, max_examples=100, seed=1)
    assert not report.ok
    assert report.counterexample is not None
    assert "reserve_stock/east" in report.counterexample.path or "east" in str(
        report.counterexample.reason
    )


def test_a_group_that_never_runs_a_held_compensation_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A branch that failed while another's call was in flight holds its compensation:
    # the explorer must reach that, and see a group that drops it stuck.
    monkeypatch.setattr(parallel._Group, "release", lambda self, n: None)
    report = check(parallel_order.definition, setup=fresh_services, max_examples=100, seed=1)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.invariant == "finishes_once_faults_stop"


def test_remote_branch_steps_hold_every_property_under_wire_faults() -> None:
    # Lost, late, duplicated and refused commands and replies in one branch while a
    # local branch runs beside it (an ideal participant answers the channels).
    quick = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.01)
    remote = SagaDefinition(
        "remote_branches",
        [
            Parallel(
                "g",
                branches={
                    "a": [
                        Step(
                            "r",
                            command="inv.reserve",
                            compensation_command="inv.release",
                            timeout=5,
                            retry=quick,
                            compensation_retry=quick,
                        )
                    ],
                    "b": [step("n")],
                },
            ),
            Step("pay", act, kind="pivot"),
        ],
    )
    report = check(remote, setup=fresh_ledger, max_examples=150, seed=2)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0, report.format()

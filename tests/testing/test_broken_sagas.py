"""Each deliberately broken saga is caught, through the Python API and the CLI, with a
counterexample no longer than the bug needs."""

from __future__ import annotations

import pytest
from attrs import frozen
from click.testing import CliRunner

from saga_fsm import SagaDefinition
from saga_fsm.cli import main
from saga_fsm.testing import Invariant, InvariantViolation, check
from tests.testing import broken

SEED = 20240501
EXAMPLES = 60


@frozen
class Case:
    attribute: str
    invariants: str | None
    invariant: str
    fragments: tuple[str, ...]
    max_events: int

    @property
    def definition(self) -> SagaDefinition:
        value: SagaDefinition = getattr(broken, self.attribute)
        return value

    def invariant_functions(self) -> list[Invariant]:
        return list(getattr(broken, self.invariants)) if self.invariants else []


CASES = [
    Case(
        "double_refund",
        "double_refund_invariants",
        "refunded_at_most_once",
        ("refund_every_time ran",),
        5,
    ),
    Case(
        "missing_data",
        None,
        "compensations_do_not_fail_on_their_own",
        ("release_with_payment raised KeyError('payment_id')",),
        4,
    ),
    Case(
        "compensation_always_fails",
        None,
        "compensations_do_not_fail_on_their_own",
        ("release_never raised StepFailed('the warehouse no longer accepts releases')",),
        4,
    ),
    Case(
        "ignores_idempotency_key",
        None,
        "replays_return_the_first_result",
        ("reserve ok", "charge ok"),
        3,
    ),
    Case(
        "picked_after_compensation",
        "picked_invariants",
        "compensated_orders_are_not_picked",
        ("reserve ok", "notify_warehouse ok", "release ok"),
        5,
    ),
    Case(
        "empty_compensation_fails",
        None,
        "compensations_do_not_fail_on_their_own",
        (
            "hold lost before it arrived",
            "cancel_hold_strictly raised LookupError('no hold to cancel')",
        ),
        2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.attribute)
def test_check_finds_a_minimal_counterexample(case: Case) -> None:
    report = check(
        case.definition,
        invariants=case.invariant_functions(),
        setup=broken.setup,
        max_examples=EXAMPLES,
        seed=SEED,
    )
    found = report.counterexample
    assert found is not None, report.format()
    assert found.invariant == case.invariant, report.format()
    for fragment in case.fragments:
        assert fragment in found.path, report.format()
    assert len(found.path.split(" -> ")) <= case.max_events, report.format()
    assert 1 <= found.found_after <= EXAMPLES
    with pytest.raises(InvariantViolation) as raised:
        report.raise_for_failure()
    assert raised.value.invariant == case.invariant
    assert f"seed {SEED}" in "".join(getattr(raised.value, "__notes__", []))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.attribute)
def test_the_cli_prints_the_counterexample_and_exits_1(case: Case) -> None:
    args = ["check", f"tests.testing.broken:{case.attribute}", "--seed", str(SEED)]
    args += ["--max-examples", str(EXAMPLES), "--setup", "tests.testing.broken:setup"]
    if case.invariants:
        args += ["--invariants", f"tests.testing.broken:{case.invariants}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    heading = next(n for n, line in enumerate(lines) if line.startswith("counterexample"))
    scenario = lines[heading + 1]
    for fragment in case.fragments:
        assert fragment in scenario
    assert f"broken invariant: {case.invariant}" in result.output
    assert "paths" in lines[1] and "transition coverage:" in result.output
    assert f"result: FAILED (reproduce with seed {SEED})" in result.output


def test_a_module_of_marked_invariants_is_collected_by_the_cli() -> None:
    """``--invariants package.module`` takes every @saga_invariant in it."""
    args = ["check", "tests.testing.broken:picked_after_compensation"]
    args += ["--invariants", "tests.testing.broken", "--seed", str(SEED), "--max-examples", "40"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "broken invariant: compensated_orders_are_not_picked" in result.output


def test_the_user_invariant_catches_the_ignored_key_too() -> None:
    """Without the built-in replay check, the business invariant sees the double charge."""
    report = check(
        broken.ignores_idempotency_key,
        invariants=[broken.charged_at_most_once],
        setup=broken.setup,
        builtin_invariants=False,
        max_examples=EXAMPLES,
        seed=SEED,
    )
    assert report.counterexample is not None
    assert report.counterexample.invariant == "charged_at_most_once"
    assert "charge ran" in report.counterexample.path

"""saga_fsm.testing on choreographies: the real tracker explored under lost, duplicated,
reordered and late events and restarts; it passes the order choreography with full
coverage and fails, with a counterexample, each way a choreography can be broken."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import Phase, settings

import saga_fsm.choreography._tracker as tracker_module
from saga_fsm import InvalidArgument, InvalidArgumentType
from saga_fsm.choreography import Choreography, Event, Failure, Move, expect
from saga_fsm.examples.order_choreography import choreography as order
from saga_fsm.testing import (
    ChoreographyReport,
    EventFault,
    check,
    choreography_state_machine,
)
from saga_fsm.testing._explore import default_settings

pytest_plugins = ["pytester"]


def explore(c: Choreography, examples: int = 10, **options: object) -> ChoreographyReport:
    """Few random examples: the directed paths (every row taken, every row's event
    lost) find what these tests look for; the random ones find interleavings."""
    report = check(c, max_examples=examples, seed=3, **options)  # type: ignore[arg-type]
    assert isinstance(report, ChoreographyReport)
    return report


def payment(**changes: object) -> Choreography:
    """A small choreography: charge, then confirm; a failed payment cancels."""
    base = Choreography(
        name="payment",
        start="OrderCreated",
        correlation=["order_id"],
        events=[
            Event("OrderCreated", publisher="shop", consumers=["payment"]),
            Event("PaymentProcessed", publisher="payment", consumers=["shop"]),
            Event("PaymentFailed", publisher="payment", consumers=["shop"]),
            Event("OrderConfirmed", publisher="shop"),
            Event("OrderCancelled", publisher="shop"),
        ],
        moves=[
            Move("pending", "OrderCreated", "charging"),
            Move("charging", "PaymentProcessed", "confirming"),
            Move("confirming", "OrderConfirmed", "completed"),
        ],
        failures=[Failure("charging", "PaymentFailed", ["OrderCancelled"])],
        expectations=[
            expect("PaymentProcessed", within=30, compensate="PaymentFailed"),
            expect("OrderConfirmed", within=30),
            expect("OrderCancelled", within=30),
        ],
    )
    return attrs.evolve(base, **changes)


def test_the_order_choreography_holds_with_every_row_and_timer_covered() -> None:
    report = explore(order, examples=40, instances=3)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0
    assert set(report.coverage.fired) >= set(report.coverage.timers)
    text = report.format()
    assert "17/17 reachable transitions taken (100%), 7/7 expected-event timers fired" in text
    assert "result: every property holds" in text


def test_a_lost_event_nothing_expects_leaves_an_instance_unaccounted_for() -> None:
    # Before every awaited event was expected: a lost OrderFailed went unnoticed.
    unwatched = attrs.evolve(order, expectations=order.expectations[:3])
    report = explore(unwatched, examples=3, faults=["lost"])
    assert not report.ok
    found = report.counterexample
    assert found is not None and found.invariant == "every_instance_accounted_for"
    assert "lost" in found.reason and "expect()" in found.reason
    assert " lost" in found.path
    with pytest.raises(AssertionError, match="every_instance_accounted_for"):
        report.raise_for_failure()


def test_a_state_with_no_way_to_an_end_fails() -> None:
    stalled = payment(
        moves=[
            Move("pending", "OrderCreated", "charging"),
            Move("charging", "PaymentProcessed", "confirming"),
            Move("charging", "OrderConfirmed", "completed"),
        ],
        expectations=[expect("PaymentProcessed", within=30)],
    )
    report = explore(stalled)
    found = report.counterexample
    assert found is not None and found.invariant == "every_state_can_end", report.format()
    assert "running:confirming" in found.reason


def test_a_compensating_event_not_legal_where_it_is_published_fails() -> None:
    wrong = payment(
        expectations=[
            expect("PaymentProcessed", within=30, compensate="OrderCancelled"),
            expect("OrderConfirmed", within=30),
            expect("OrderCancelled", within=30),
        ]
    )
    report = explore(wrong)
    found = report.counterexample
    assert found is not None, report.format()
    assert found.invariant in ("no_unexplained_anomalies", "every_instance_accounted_for")
    assert "tracker publishes OrderCancelled" in found.path


def test_an_event_no_key_of_its_instance_correlates_is_dead_lettered() -> None:
    keyless = Choreography(
        name="keys",
        start="OrderCreated",
        correlation=["order_id", "payment_id"],
        events=[
            Event("OrderCreated", publisher="shop", keys=["order_id"]),
            Event("PaymentProcessed", publisher="payment", keys=["payment_id"]),
        ],
        moves=[
            Move("pending", "OrderCreated", "charging"),
            Move("charging", "PaymentProcessed", "completed"),
        ],
        expectations=[expect("PaymentProcessed", within=30)],
    )
    report = explore(keyless)
    found = report.counterexample
    assert found is not None and found.invariant == "nothing_dead_lettered", report.format()
    assert "PaymentProcessed" in found.reason


def test_a_tracker_that_does_not_wait_for_early_events_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The harness drives the tracker's own code: break its reorder window and it fails.
    monkeypatch.setattr(tracker_module, "EARLY", "never")
    unshrunk = settings(default_settings(5, 12), phases=[Phase.generate])  # found is enough
    report = check(payment(), seed=3, faults=["reordered"], settings=unshrunk)
    found = report.counterexample
    assert found is not None, report.format()
    assert found.invariant in ("tracker_follows_causal_order", "no_unexplained_anomalies")
    assert "delivered early" in found.path


def test_faults_can_be_chosen_and_options_are_checked() -> None:
    calm = explore(payment(), faults=[EventFault.DUPLICATED], instances=1, directed_paths=False)
    assert calm.ok, calm.format()
    assert "timers that never fired" in calm.format()  # nothing is ever late or lost
    with pytest.raises(InvalidArgument, match="faults are lost, duplicated"):
        check(payment(), faults=["eaten"])
    with pytest.raises(InvalidArgument, match="instances"):
        check(payment(), instances=0)
    with pytest.raises(InvalidArgumentType, match="for a choreography"):
        check(payment(), setup=lambda: None)


def test_the_state_machine_runs_under_hypothesis_itself() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    machine = choreography_state_machine(payment(), instances=1)

    chosen = settings(max_examples=5, stateful_step_count=10, deadline=None, database=None)
    run_state_machine_as_test(machine, settings=chosen)
    assert machine.stats.examples >= 5
    assert machine.stats.coverage.taken


def test_saga_test_case_takes_a_choreography_and_reports_coverage(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_orders="""
        import attrs
        from saga_fsm.examples.order_choreography import choreography
        from saga_fsm.testing import saga_test_case

        TestOrders = saga_test_case(choreography, max_examples=20, seed=1)
        TestUnwatched = saga_test_case(
            attrs.evolve(choreography, expectations=choreography.expectations[:3]),
            max_examples=5, seed=3,
        )
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*every_instance_accounted_for*",
            "*saga_fsm transition coverage*",
            "*reachable transitions taken*expected-event timers fired*",
        ]
    )


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_saga_fsm_check_takes_a_choreography_reference_or_file(tmp_path: Path) -> None:
    ref = "saga_fsm.examples.order_choreography:choreography"
    passed = cli("check", ref, "--max-examples", "20", "--seed", "1", cwd=tmp_path)
    assert passed.returncode == 0, passed.stderr
    assert "choreography order_choreography v1" in passed.stdout
    assert "result: every property holds" in passed.stdout
    toml = Path(__file__).parents[2] / "saga_fsm/examples/order_choreography.toml"
    text = toml.read_text(encoding="utf-8")
    unwatched = text[: text.index("expectations")] + "expectations = []\n"
    path = tmp_path / "unwatched.toml"
    path.write_text(unwatched, encoding="utf-8")
    failed = cli("check", str(path), "--max-examples", "5", "--seed", "3", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "broken invariant: every_instance_accounted_for" in failed.stdout
    misused = cli("check", ref, "--setup", "os:getcwd", cwd=tmp_path)
    assert misused.returncode == 2
    assert "--setup" in misused.stderr and "choreography" in misused.stderr
    assert list(tmp_path.iterdir()) == [path]  # no .hypothesis left behind


README = Path(__file__).resolve().parents[2] / "README.md"
MYSHOP = """
from saga_fsm.choreography import Choreography, Event, Failure, Move, expect

orders = Choreography(
    name="orders",
    start="OrderCreated",
    correlation=["order_id"],
    events=[
        Event("OrderCreated", publisher="shop", consumers=["payment"]),
        Event("PaymentProcessed", publisher="payment", consumers=["shop"]),
        Event("PaymentFailed", publisher="payment", consumers=["shop"]),
        Event("OrderConfirmed", publisher="shop"),
        Event("OrderCancelled", publisher="shop"),
    ],
    moves=[
        Move("pending", "OrderCreated", "charging"),
        Move("charging", "PaymentProcessed", "confirming"),
        Move("confirming", "OrderConfirmed", "completed"),
    ],
    failures=[Failure("charging", "PaymentFailed", compensations=["OrderCancelled"])],
    expectations=[
        expect("PaymentProcessed", within=30),
        expect("OrderConfirmed", within=30),
        expect("OrderCancelled", within=30),
    ],
)
"""


def test_the_readme_choreography_test_module_runs(pytester: pytest.Pytester) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Testing a choreography", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    pytester.mkpydir("myshop")
    pytester.path.joinpath("myshop", "choreography.py").write_text(MYSHOP)
    pytester.makepyfile(test_orders=code.group(1))
    pytester.makeconftest(
        "from hypothesis import settings\n"
        "settings.register_profile('quick', max_examples=15)\n"
        "settings.load_profile('quick')\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*saga_fsm transition coverage*", "*(100%)*"])

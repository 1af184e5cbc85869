"""``check`` and the machine behind it: options, several sagas, reports, and the CLI's
handling of bad input."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import saga_fsm.testing
from saga_fsm import (
    InvalidArgument,
    InvalidArgumentType,
    SagaBuilder,
    SagaDefinition,
    StepContext,
    compile_saga,
)
from saga_fsm.cli import main
from saga_fsm.testing import (
    ExploreOptions,
    Fault,
    InvariantContext,
    check,
    saga_invariant,
    saga_state_machine,
    saga_test_case,
)
from tests.helpers import noop, three_step


def test_the_public_surface_is_sorted_and_complete() -> None:
    names = saga_fsm.testing.__all__
    assert names == sorted(names)
    assert all(hasattr(saga_fsm.testing, n) for n in names)
    assert {"check", "saga_test_case", "scenario", "saga_invariant", "Fault"} <= set(names)


class Warehouse:
    """One item in stock; taking and putting back are idempotent per key."""

    def __init__(self) -> None:
        self.stock = 1
        self.done: set[str] = set()


warehouse = Warehouse()


def fresh_warehouse() -> Warehouse:
    global warehouse
    warehouse = Warehouse()
    return warehouse


def take(ctx: StepContext) -> None:  # the bug: never checks that anything is left
    if ctx.idempotency_key not in warehouse.done:
        warehouse.done.add(ctx.idempotency_key)
        warehouse.stock -= 1


def put_back(ctx: StepContext) -> None:
    if ctx.idempotency_key not in warehouse.done:
        warehouse.done.add(ctx.idempotency_key)
        warehouse.stock += 1


def stock_saga() -> SagaDefinition:
    return (
        SagaBuilder("stock").step("take", take, compensation=put_back).pivot("ship", noop).build()
    )


@saga_invariant
def never_oversold(ctx: InvariantContext) -> None:
    assert ctx.world.stock >= 0, f"stock is {ctx.world.stock}"


def test_a_bug_that_needs_two_sagas_is_shown_with_both() -> None:
    report = check(
        stock_saga(),
        invariants=[never_oversold],
        setup=fresh_warehouse,
        faults=["ok"],
        sagas=2,
        max_examples=50,
        seed=5,
    )
    found = report.counterexample
    assert found is not None, report.format()
    assert found.invariant == "never_oversold"
    assert "[1] take ok" in found.path and "[2] take ok" in found.path


def test_restricting_faults_and_simulating() -> None:
    report = check(three_step(), faults=["ok"], operator_retry=False, max_examples=10, seed=1)
    assert report.ok and report.coverage.ratio == 1.0
    rows = compile_saga(three_step()).rows
    assert all(rows[i].trigger != "step_failed" for i in report.coverage.taken)
    simulated = check(
        stock_saga(),
        simulate=True,
        invariants=[never_oversold],
        setup=fresh_warehouse,
        max_examples=10,
        seed=1,
    )
    assert simulated.ok  # the real (buggy) action never ran


def test_data_from_a_strategy_or_a_factory_of_the_world() -> None:
    seen: Counter[int] = Counter()

    def record(ctx: StepContext) -> None:
        seen[ctx.data["n"]] += 1

    definition = SagaBuilder("data").step("record", record, compensation=noop).build()
    check(
        definition, data=st.fixed_dictionaries({"n": st.integers(0, 1000)}), max_examples=20, seed=2
    )
    assert len(seen) > 1  # the data was explored too
    worlds: list[object] = []

    def data_for(world: object) -> dict[str, int]:
        worlds.append(world)
        return {"n": 1}

    check(definition, setup=object, data=data_for, max_examples=5, seed=2)
    assert worlds and all(type(w) is object for w in worlds)


def test_bad_options_are_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="sagas"):
        check(three_step(), sagas=0)
    with pytest.raises(ValueError, match="faults are"):
        check(three_step(), faults=["explode"])
    with pytest.raises(TypeError, match="SagaDefinition"):
        check("order")  # type: ignore[arg-type]


def test_an_error_in_the_users_setup_is_reported_not_raised() -> None:
    def broken_setup() -> None:
        raise RuntimeError("no test database")

    report = check(three_step(), setup=broken_setup, max_examples=5, seed=1)
    assert report.counterexample is not None
    assert report.counterexample.invariant == "runs_without_error"
    assert "no test database" in report.counterexample.reason


def test_the_machine_runs_as_a_plain_hypothesis_state_machine() -> None:
    machine = saga_state_machine(three_step())
    run_state_machine_as_test(
        machine, settings=settings(max_examples=10, deadline=None, database=None)
    )
    assert machine.stats.examples >= 10 and machine.stats.paths >= 10
    assert machine.stats.coverage.taken


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "no.such.module"], "cannot import module 'no.such.module'"),
        (
            ["check", "saga_fsm.examples.order_fulfillment", "--invariants", "os:sep"],
            "not an invariant",
        ),
        (
            ["check", "saga_fsm.examples.order_fulfillment", "--invariants", "json"],
            "no @saga_invariant",
        ),
        (
            ["check", "saga_fsm.examples.order_fulfillment", "--data", "[1]"],
            "--data must be a JSON object",
        ),
        (
            ["check", "saga_fsm.examples.order_fulfillment", "--setup", "os:sep"],
            "--setup: 'os:sep' is not callable",
        ),
        (
            ["check", "saga_fsm.examples.order_fulfillment", "--store", "nope://"],
            "invalid store URL",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_cli_passes_data_and_reports_success() -> None:
    args = ["check", "saga_fsm.examples.travel_booking", "--data", '{"amount": 3}']
    args += ["--max-examples", "15", "--seed", "4", "--steps", "20"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "saga travel_booking v1: 5 steps" in result.output
    assert "seed 4" in result.output and "result: every property holds" in result.output


def test_async_setup_hooks_are_entered_and_torn_down_per_example() -> None:
    events: list[str] = []

    async def world() -> Any:
        events.append("up")
        yield {"db": "test"}
        events.append("down")

    @saga_invariant
    def sees_the_world(ctx: InvariantContext) -> None:
        assert ctx.world == {"db": "test"}

    report = check(three_step(), setup=world, invariants=[sees_the_world], max_examples=5, seed=1)
    assert report.ok, report.format()
    assert events and events.count("up") == events.count("down")
    assert events[:2] == ["up", "down"]


def test_one_options_value_serves_check_the_state_machine_and_the_test_case() -> None:
    options = ExploreOptions(faults=["transient"], operator_retry=False, directed_paths=False)
    assert options.faults == (Fault.OK, Fault.TRANSIENT)
    definition = three_step()
    report = check(definition, options, max_examples=5, seed=1)
    assert report.directed_paths == 0
    machine = saga_state_machine(definition, options)
    assert machine.config.driver.faults == (Fault.OK, Fault.TRANSIENT)
    assert machine.config.operator_retry is False
    # Keywords override the value's fields, in every one of them.
    keyworded = saga_state_machine(definition, options, sagas=2)
    assert keyworded.config.sagas == 2 and keyworded.config.operator_retry is False
    assert saga_test_case(definition, options, simulate=True).definition is definition


@pytest.mark.parametrize(
    "call",
    [
        lambda d: check(d, max_examples=1, sagaz=2),
        lambda d: saga_state_machine(d, invariant=[]),
        lambda d: saga_test_case(d, fault=["lost"]),
    ],
)
def test_an_unknown_option_is_refused_naming_the_known_ones(call: Any) -> None:
    with pytest.raises(InvalidArgumentType, match=r"unknown option .*options are: invariants"):
        call(three_step())


def test_options_are_checked_when_built() -> None:
    with pytest.raises(InvalidArgument, match="sagas"):
        ExploreOptions(sagas=0)
    with pytest.raises(InvalidArgument, match="faults are"):
        ExploreOptions(faults=["nope"])

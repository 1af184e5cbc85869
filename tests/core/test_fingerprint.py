"""The fingerprint of a compiled table: what changes it, what does not, and that every
process computes the same one."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from saga_fsm import RetryPolicy, SagaBuilder, SagaDefinition, StepContext, definition_fingerprint
from saga_fsm._core import new_snapshot
from saga_fsm._errors import TableChanged
from saga_fsm._fingerprint import accepted, table_of
from saga_fsm._flow import compile_saga
from saga_fsm._registry import Definitions


def _noop(ctx: StepContext) -> None:
    return None


def _other(ctx: StepContext) -> dict[str, int]:
    return {"x": 1}


def order(
    *,
    charge: str = "charge",
    description: str = "",
    action: object = _noop,
    retry: RetryPolicy | None = None,
    extra: bool = False,
) -> SagaDefinition:
    builder = SagaBuilder("order", description=description)
    builder.step("reserve", action, compensation=_noop, timeout=5)  # type: ignore[arg-type]
    if retry is not None:
        builder.step("check", _noop, read_only=True, retry=retry)
    else:
        builder.step("check", _noop, read_only=True)
    builder.pivot(charge, _noop)
    if extra:
        builder.retriable("notify", _noop)
    return builder.build()


T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Pinned: a change here strands every saga in flight after an upgrade of saga_fsm.
PINNED = "a668b49bd7d09859afcbaddcccfcddff0e5114a0a91468ff9d37ac99c3c8d4d7"


def test_the_fingerprint_of_a_table_is_pinned() -> None:
    assert definition_fingerprint(order()) == PINNED, (
        "the fingerprint changed for an unchanged table: every pinned saga would be"
        " stranded; bump FINGERPRINT_FORMAT only with a way to read the old ones"
    )


# The table before a pivot that may have acted parked the saga (it compensated then).
BEFORE_THE_PIVOT_PARKED = "52fc818a69de0fb6f3f305076b6262995935a71a12ffe1276586946ac760177b"


def test_sagas_pinned_before_the_pivot_parked_still_run_on_the_table() -> None:
    compiled = compile_saga(order())
    assert accepted(compiled) == (PINNED, BEFORE_THE_PIVOT_PARKED)
    started = new_snapshot(order(), "s1", {}, T0, fingerprint=BEFORE_THE_PIVOT_PARKED)
    known = Definitions([order()])
    assert known.compiled_for(started) is compiled
    assert ("order", 1, BEFORE_THE_PIVOT_PARKED) in known.claimable
    other = new_snapshot(order(), "s2", {}, T0, fingerprint="0" * 64)
    with pytest.raises(TableChanged):
        known.compiled_for(other)
    # A transactional pivot never parks: its table did not change, one fingerprint.
    tx = (
        SagaBuilder("tx").step("a", _noop, compensation=_noop).pivot("b", _noop, transactional=True)
    )
    assert len(accepted(compile_saga(tx.build()))) == 1


def test_cosmetic_edits_keep_the_fingerprint() -> None:
    same = [
        order(description="reserve, check, charge"),
        order(action=_other),
        order(retry=RetryPolicy(max_attempts=9, initial_interval=0.5)),
        SagaBuilder("order", version=7)
        .step("reserve", _other, compensation=_other, timeout=99)
        .step("check", _other, read_only=True)
        .pivot("charge", _other)
        .build(),
    ]
    assert {definition_fingerprint(d) for d in same} == {PINNED}


def test_changes_to_the_table_change_the_fingerprint() -> None:
    changed = [
        order(charge="charge_card"),  # a renamed step
        order(extra=True),  # an added step
        SagaBuilder("order")  # a step's kind
        .step("reserve", _noop, compensation=_noop)
        .pivot("check", _noop)
        .step("charge", _noop, kind="retriable", retry=RetryPolicy(max_attempts=None))
        .build(),
        SagaBuilder("order")  # the order of steps
        .step("check", _noop, read_only=True)
        .step("reserve", _noop, compensation=_noop)
        .pivot("charge", _noop)
        .build(),
    ]
    prints = [definition_fingerprint(d) for d in changed]
    assert PINNED not in prints and len(set(prints)) == len(prints)


def test_the_hashed_table_is_plain_canonical_json() -> None:
    table = table_of(compile_saga(order()))
    assert table["format"] == 1
    assert [s["name"] for s in table["steps"]] == ["reserve", "check", "charge"]
    assert ["start", "pending", "running:reserve"] in table["transitions"]
    assert table["transitions"] == sorted(table["transitions"])


def test_every_python_process_computes_the_same_fingerprint() -> None:
    code = (
        "from tests.core.test_fingerprint import order;"
        "from saga_fsm import definition_fingerprint;"
        "print(definition_fingerprint(order()))"
    )
    for seed in ("0", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        assert done.stdout.strip() == PINNED

from __future__ import annotations

import pytest

from saga_fsm import (
    DefinitionError,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    Step,
    StepKind,
)
from tests.helpers import noop


def test_builder_builds_the_table_in_order() -> None:
    definition = (
        SagaBuilder("order", version=2)
        .step("reserve", noop, compensation=noop)
        .step("lookup", noop, read_only=True)
        .step("create_pending", compensation=noop)
        .pivot("charge", noop)
        .retriable("notify", noop)
        .build()
    )
    assert [s.name for s in definition.steps] == [
        "reserve",
        "lookup",
        "create_pending",
        "charge",
        "notify",
    ]
    assert definition.version == 2
    assert definition.pivot_index == 3
    # Retriable steps retry without limit unless told otherwise; others three times.
    assert definition.step("notify").retry.max_attempts is None
    assert definition.step("reserve").retry.max_attempts == 3


@pytest.mark.parametrize(
    ("build", "row", "field", "words"),
    [
        (
            lambda b: b.step("a", noop, compensation=noop).step("a", noop, compensation=noop),
            1,
            "name",
            "duplicate",
        ),
        (lambda b: b.retriable("r", noop).pivot("p", noop), 0, "kind", "after the pivot"),
        (lambda b: b.pivot("p", noop).pivot("q", noop), 1, "kind", "more than one pivot"),
        (lambda b: b.step("a", noop), 0, "compensation", "needs a compensation"),
        (lambda b: b.step("a", noop, compensation=noop, timeout=0), 0, "timeout", "positive"),
        (lambda b: b.step("a", noop, compensation=noop, timeout=-1.5), 0, "timeout", "positive"),
        (
            lambda b: (
                b.step("a", noop, compensation=noop)
                .pivot("p", noop)
                .step("c", noop, compensation=noop)
            ),
            2,
            "kind",
            "retriable",
        ),
        (lambda b: b.step("a"), 0, "action", "needs an action"),
        (lambda b: b.step("bad name", noop, compensation=noop), 0, "name", "letters"),
        (
            lambda b: b.step("a", noop, compensation=noop, kind="sideways"),
            0,
            "kind",
            "unknown kind",
        ),
        (lambda b: b.pivot("p", noop, compensation=noop), 0, "compensation", "never compensated"),
        (
            lambda b: b.step("a", noop, compensation=noop, read_only=True),
            0,
            "compensation",
            "read_only",
        ),
        (lambda b: b.step("a", "not callable", compensation=noop), 0, "action", "callable"),
        (
            lambda b: b.pivot("p", noop).retriable("r", noop, retry=RetryPolicy(max_attempts=5)),
            1,
            "retry",
            "until it succeeds",
        ),
    ],
)
def test_invalid_tables_name_row_and_field(build, row, field, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError) as caught:
        build(SagaBuilder("s")).build()
    err = caught.value
    assert (err.row, err.field) == (row, field), str(err)
    assert words in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"initial_interval": 0}, "initial_interval"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"initial_interval": 10, "max_interval": 1}, "max_interval"),
        ({"jitter": 2}, "jitter"),
        ({"non_retryable": (int,)}, "non_retryable"),
    ],
)
def test_retry_policy_rejects_bad_values(options, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError) as caught:
        RetryPolicy(**options)
    assert caught.value.field == field


def test_step_error_inside_builder_names_the_row_of_the_retry_field() -> None:
    with pytest.raises(DefinitionError) as caught:
        SagaBuilder("s").step("a", noop, compensation=noop).step(
            "b", noop, compensation=noop, timeout="soon"
        )
    assert (caught.value.row, caught.value.step, caught.value.field) == (1, "b", "timeout")


def test_empty_saga_is_rejected() -> None:
    with pytest.raises(DefinitionError, match="at least one step"):
        SagaDefinition("empty", ())


def test_backoff_is_capped_and_jitter_is_deterministic() -> None:
    policy = RetryPolicy(initial_interval=1, backoff_coefficient=2, max_interval=5, jitter=0.5)
    plain = RetryPolicy(initial_interval=1, backoff_coefficient=2, max_interval=5)
    assert [plain.delay(n, "s") for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]
    assert policy.delay(3, "s") == policy.delay(3, "s")
    assert 2 <= policy.delay(3, "s") <= 4
    assert policy.delay(3, "s") != policy.delay(3, "other")


def test_definitions_are_immutable_values() -> None:
    step = Step("a", noop, compensation=noop)
    with pytest.raises(AttributeError):
        step.name = "b"  # type: ignore[misc]
    assert Step("a", noop, compensation=noop) == step
    assert step.kind is StepKind.COMPENSABLE

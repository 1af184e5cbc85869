"""The oracle itself: each built-in invariant holds on real runs and catches the
breakage it names when a context is tampered with; user invariants in every form."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from attrs import evolve

from saga_fsm import HistoryEntry, SagaBuilder, SagaDefinition, StepFailed
from saga_fsm.testing import (
    BUILTIN_INVARIANTS,
    Fault,
    Invariant,
    InvariantContext,
    TraceEntry,
    compensation,
    saga_invariant,
    scenario,
    step,
)
from saga_fsm.testing import _invariants as inv
from tests.helpers import noop

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def order() -> SagaDefinition:
    return (
        SagaBuilder("order")
        .step("reserve", noop, compensation=noop)
        .step("pay", noop, compensation=noop)
        .pivot("ship", noop)
        .retriable("notify", noop)
        .build()
    )


def context(*directives: Any, **changes: Any) -> InvariantContext:
    definition = order()
    result = scenario(definition).when(*directives).run()
    ctx = InvariantContext(
        definition=definition,
        saga_id=result.snapshot.saga_id,
        snapshot=result.snapshot,
        decided=result.snapshot,
        history=result.history,
        trace=result.trace,
        world=None,
        final=True,
    )
    return evolve(ctx, **changes)


def entry(trigger: str, source: str, dest: str, step_name: str | None = None) -> HistoryEntry:
    return HistoryEntry(source, dest, trigger, T0, {"step": step_name} if step_name else {})


def broken(check: Any, ctx: InvariantContext) -> str:
    with pytest.raises(AssertionError) as raised:
        check(ctx)
    return str(raised.value)


@pytest.mark.parametrize(
    "directives",
    [
        (),
        (step("pay").fails(permanent=True),),
        (step("ship").fails(permanent=True), compensation("pay").fails(permanent=True)),
        (step("pay").fails(times=3),),
        (step("pay").is_lost(times=3),),
    ],
    ids=["completed", "compensated", "failed", "reply-lost", "request-lost"],
)
def test_every_builtin_holds_on_real_runs(directives: tuple[Any, ...]) -> None:
    ctx = context(*directives)
    assert [i.name for i in BUILTIN_INVARIANTS if i.violation(ctx)] == []


def test_a_history_that_skips_a_transition_is_not_a_path() -> None:
    ctx = context()
    assert "starts at" in broken(
        inv.history_is_a_path_of_the_machine, evolve(ctx, history=ctx.history[1:])
    )
    bad = (*ctx.history[:-1], evolve(ctx.history[-1], to_state="compensated"))
    assert "is not a row" in broken(inv.history_is_a_path_of_the_machine, evolve(ctx, history=bad))


def test_a_store_that_changes_the_snapshot_is_caught() -> None:
    ctx = context()
    changed = evolve(ctx.snapshot, data={"amount": 1.0})
    assert "different data" in broken(inv.snapshots_round_trip, evolve(ctx, snapshot=changed))


def test_compensations_out_of_order_or_of_steps_that_never_ran_are_caught() -> None:
    ctx = context(step("ship").fails(permanent=True))  # compensated pay, then reserve
    assert ctx.compensated == ("pay", "reserve")
    succeeded = [e for e in ctx.history if e.trigger != "compensation_succeeded"]
    swapped = [
        *succeeded,
        entry("compensation_succeeded", "compensating:reserve", "compensating:pay", "reserve"),
        entry("compensation_succeeded", "compensating:pay", "compensated", "pay"),
    ]
    assert "last first" in broken(
        inv.compensates_every_step_that_may_have_acted, evolve(ctx, history=tuple(swapped))
    )
    never_ran = context(step("pay").fails(permanent=True))
    extra = (*never_ran.history, entry("compensation_succeeded", "x", "y", "pay"))
    assert "last first" in broken(
        inv.compensates_every_step_that_may_have_acted, evolve(never_ran, history=extra)
    )
    missing = tuple(
        e
        for e in ctx.history
        if e.detail.get("step") != "reserve" or e.trigger != "compensation_succeeded"
    )
    assert "expected" in broken(
        inv.compensates_every_step_that_may_have_acted, evolve(ctx, history=missing)
    )


def test_a_step_that_may_have_acted_must_be_compensated_and_a_refused_one_must_not() -> None:
    lost = context(step("pay").fails(times=3))  # its policy gives up on a lost reply
    assert lost.compensated == ("pay", "reserve")
    without_pay = tuple(
        e
        for e in lost.history
        if e.detail.get("step") != "pay" or e.trigger != "compensation_succeeded"
    )
    assert "may have acted" in broken(
        inv.compensates_every_step_that_may_have_acted, evolve(lost, history=without_pay)
    )
    refused = context(step("pay").fails(permanent=True))
    assert refused.compensated == ("reserve",)
    extra = (
        *refused.history[:-1],
        entry("compensation_succeeded", "x", "y", "pay"),
        refused.history[-1],
    )
    assert "may have acted" in broken(
        inv.compensates_every_step_that_may_have_acted, evolve(refused, history=extra)
    )


def test_an_action_called_after_its_compensation_is_caught() -> None:
    ctx = context(step("pay").fails(times=3))
    late = TraceEntry("step", "compensated", "compensated", step="pay", called=True)
    assert "called after its compensation" in broken(
        inv.no_compensation_while_its_action_may_run, evolve(ctx, trace=(*ctx.trace, late))
    )
    assert inv.no_compensation_while_its_action_may_run(ctx) is None


def test_going_back_after_the_pivot_is_caught() -> None:
    ctx = context()
    after = (*ctx.history, entry("step_failed", "running:notify", "compensating:pay", "notify"))
    assert "the pivot 'ship' succeeded" in broken(
        inv.never_compensates_after_the_pivot, evolve(ctx, history=after)
    )


def test_failed_needs_a_parked_compensation_and_a_cause() -> None:
    ctx = context(step("ship").fails(permanent=True), compensation("pay").fails(permanent=True))
    assert ctx.state == "failed"
    unparked = evolve(ctx.snapshot, parked_at=None)
    assert "parked_at" in broken(
        inv.fails_only_when_parked_for_an_operator, evolve(ctx, snapshot=unparked)
    )
    silent = evolve(ctx.snapshot, failure=None)
    assert "without recording" in broken(
        inv.fails_only_when_parked_for_an_operator, evolve(ctx, snapshot=silent)
    )


def test_only_finished_sagas_pass_at_the_end() -> None:
    ctx = context()
    running = evolve(ctx.snapshot, state="running:pay")
    ends = next(i for i in BUILTIN_INVARIANTS if i.name == "ends_in_a_final_state")
    assert ends.violation(evolve(ctx, snapshot=running, final=False)) is None
    assert "not a final state" in str(ends.violation(evolve(ctx, snapshot=running)))


def call(
    kind: str, raised: Exception | None = None, returned: Any = None, **more: Any
) -> TraceEntry:
    fields: dict[str, Any] = {"label": "fn", "step": "reserve", "called": True, "fault": Fault.OK}
    fields.update(more)
    return TraceEntry(kind, "s", "s", raised=raised, returned=returned, **fields)  # type: ignore[arg-type]


def test_what_real_functions_may_raise() -> None:
    ctx = context()
    compensations = inv.compensations_do_not_fail_on_their_own
    assert "KeyError" in broken(
        compensations, evolve(ctx, trace=(call("compensation", KeyError("x")),))
    )
    gone = StepFailed("gone", retryable=False)
    assert "gone" in broken(compensations, evolve(ctx, trace=(call("compensation", gone),)))
    compensations(evolve(ctx, trace=(call("compensation", StepFailed("later")),)))  # may ask again
    actions = inv.actions_fail_only_on_purpose
    assert "raise StepFailed" in broken(actions, evolve(ctx, trace=(call("step", KeyError("x")),)))
    actions(evolve(ctx, trace=(call("step", StepFailed("declined", retryable=False)),)))
    bad = call("step", returned=[1], problem="an action must return a mapping or None, got list")
    assert "mapping" in broken(actions, evolve(ctx, trace=(bad,)))


def test_a_compensation_that_gives_up_on_its_own_is_caught() -> None:
    ctx = context(step("ship").fails(permanent=True), compensation("pay").fails(permanent=True))
    own = call("compensation", StepFailed("later"), step="pay")
    trace = (*ctx.trace[:-1], own)
    assert "gave up on its own" in broken(
        inv.compensations_do_not_fail_on_their_own, evolve(ctx, trace=trace)
    )


def test_a_second_answer_for_the_same_key_is_caught() -> None:
    ctx = context()
    first = call("step", returned={"id": 1}, idempotency_key="k", attempt=1)
    second = call("step", returned={"id": 2}, idempotency_key="k", attempt=2)
    message = broken(inv.replays_return_the_first_result, evolve(ctx, trace=(first, second)))
    assert "did not deduplicate" in message and "{'id': 1}" in message
    inv.replays_return_the_first_result(evolve(ctx, trace=(first, first)))


def test_a_cancel_refused_before_the_pivot_is_caught() -> None:
    ctx = context()
    refused = TraceEntry("cancel", "running:pay", "running:pay", refused=True)
    assert "before the pivot" in broken(
        inv.cancel_is_refused_only_when_it_must_be, evolve(ctx, trace=(refused,))
    )
    late = TraceEntry("cancel", "running:notify", "running:notify", refused=True)
    inv.cancel_is_refused_only_when_it_must_be(evolve(ctx, trace=(late,)))


def test_user_invariants_in_every_form() -> None:
    ctx = context()

    @saga_invariant
    def plain(c: InvariantContext) -> None:
        assert c.state == "compensated", "not compensated"

    @saga_invariant(name="custom", final_only=True)
    def returns_false(c: InvariantContext) -> bool:
        return False

    def raises(c: InvariantContext) -> None:
        raise RuntimeError("oops")

    assert isinstance(plain, Invariant) and plain.name == "plain"
    assert str(plain.violation(ctx)).startswith("not compensated")
    assert returns_false.name == "custom" and returns_false.violation(ctx) == "returned False"
    assert returns_false.violation(evolve(ctx, final=False)) is None
    assert (
        inv.as_invariant(raises).violation(ctx)
        == "the invariant itself raised RuntimeError('oops')"
    )
    assert plain.check.__name__ == "plain"  # the function itself, unchanged
    with pytest.raises(TypeError):
        inv.as_invariant("nope")  # type: ignore[arg-type]


def test_the_context_helpers() -> None:
    ctx = context(step("ship").fails(permanent=True))
    assert ctx.succeeded == ("reserve", "pay")
    assert ctx.compensated == ("pay", "reserve")
    assert ctx.calls("reserve") == 1 and ctx.calls("reserve", compensation=True) == 1
    assert ctx.finished and ctx.data == {} and "ship refused (permanent)" in ctx.path


def test_a_pivot_that_may_have_acted_parks_with_nothing_compensated() -> None:
    ctx = context(step("ship").fails(times=10))
    assert ctx.state == "failed" and ctx.snapshot.parked_at == "running:ship"
    assert [i.name for i in BUILTIN_INVARIANTS if i.violation(ctx)] == []
    undo = entry("compensation_succeeded", "compensating:pay", "failed", "pay")
    undone = evolve(ctx, history=(*ctx.history, undo))
    assert "yet compensated" in broken(inv.fails_only_when_parked_for_an_operator, undone)
    assert "yet compensated" in broken(inv.compensates_every_step_that_may_have_acted, undone)

"""Invariants: what must hold of every saga after every rule and at the end of a run.

An invariant is a plain function of an ``InvariantContext``; it fails by raising
``AssertionError`` (a bare ``assert``) or by returning ``False``. The built-in ones
state the saga contract the engine promises; users add their own about their world
("refunded at most once", "stock never negative").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, overload

from attrs import fields, frozen

from saga_fsm._codec import snapshot_from_json, snapshot_to_json
from saga_fsm._definition import SagaDefinition, Step, WaitFor
from saga_fsm._errors import InvalidArgumentType, SagaError, StepFailed
from saga_fsm._flow import PENDING, compile_saga
from saga_fsm._groups import StepGroup
from saga_fsm._snapshot import HistoryEntry, SagaStatus, Snapshot, StepStatus
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._reachability import edge_of_entry, row_edges
from saga_fsm.testing._trace import TraceEntry, render_path


@frozen
class InvariantContext:
    """One saga as an invariant sees it, after a rule (``final=False``) or at the end of
    an example, once every saga was driven to a final state (``final=True``)."""

    definition: SagaDefinition
    saga_id: str
    snapshot: Snapshot
    """As the store holds it now (loaded, so it went through the store's codec)."""
    decided: Snapshot
    """What the engine decided last; the store must hold exactly this."""
    history: tuple[HistoryEntry, ...]
    """Every transition, oldest first, as the store returns them."""
    trace: tuple[TraceEntry, ...]
    """What the harness did: the events it fed and the real calls it made."""
    world: Any
    """Whatever the user's setup hook returned for this example (None without one)."""
    final: bool
    number: int = 1
    """1 for the first saga of the example, 2 for the second, ..."""

    @property
    def state(self) -> str:
        return self.snapshot.state

    @property
    def data(self) -> dict[str, Any]:
        return self.snapshot.data

    @property
    def finished(self) -> bool:
        return self.snapshot.is_terminal

    @property
    def succeeded(self) -> tuple[str, ...]:
        """Steps whose success the engine recorded, in order."""
        return _steps_of(self.history, "step_succeeded")

    @property
    def compensated(self) -> tuple[str, ...]:
        """Steps whose compensation the engine recorded as done, in order."""
        return _steps_of(self.history, "compensation_succeeded")

    def calls(self, step: str, *, compensation: bool = False) -> int:
        """How many times the real action (or compensation) of ``step`` was called."""
        kind = "compensation" if compensation else "step"
        return sum(1 for e in self.trace if e.kind == kind and e.step == step and e.called)

    @property
    def path(self) -> str:
        return render_path(self.trace)


def _steps_of(history: Iterable[HistoryEntry], trigger: str) -> tuple[str, ...]:
    return tuple(str(e.detail.get("step")) for e in history if e.trigger == trigger)


@frozen
class Invariant:
    """A named check; ``final_only`` ones run only once every saga has finished."""

    check: Callable[[InvariantContext], object]
    name: str
    final_only: bool = False

    def __call__(self, ctx: InvariantContext) -> object:
        return self.check(ctx)

    def violation(self, ctx: InvariantContext) -> str | None:
        """Why this invariant does not hold for ``ctx``, or None if it holds."""
        if self.final_only and not ctx.final:
            return None
        try:
            verdict = self.check(ctx)
        except AssertionError as err:
            return str(err) or "assertion failed"
        except Exception as err:
            return f"the invariant itself raised {err!r}"
        return "returned False" if verdict is False else None


InvariantFunction = Callable[[InvariantContext], object]


@overload
def saga_invariant(fn: InvariantFunction, /) -> Invariant: ...


@overload
def saga_invariant(
    *, name: str | None = None, final_only: bool = False
) -> Callable[[InvariantFunction], Invariant]: ...


def saga_invariant(
    fn: InvariantFunction | None = None, /, *, name: str | None = None, final_only: bool = False
) -> Invariant | Callable[[InvariantFunction], Invariant]:
    """Mark a function ``(ctx: InvariantContext) -> None | bool`` as a saga invariant.

    Use bare (``@saga_invariant``) or with options (``@saga_invariant(final_only=True)``
    for checks that only make sense once the saga finished). ``saga-fsm check
    --invariants package.module`` collects every invariant so marked in the module.
    """

    def mark(function: InvariantFunction) -> Invariant:
        label = name if name is not None else str(getattr(function, "__name__", function))
        return Invariant(function, label, final_only)

    return mark if fn is None else mark(fn)


def as_invariant(value: Invariant | InvariantFunction) -> Invariant:
    if isinstance(value, Invariant):
        return value
    if callable(value):
        return saga_invariant(value)
    raise InvalidArgumentType(
        f"an invariant must be a function of an InvariantContext, got {value!r}"
    )


class InvariantViolation(SagaError, AssertionError):
    """An invariant did not hold. Carries the invariant's name, why, and the path (a
    readable scenario) of the saga it broke for."""

    def __init__(
        self, invariant: str, reason: str, *, path: str, saga: int = 1, others: str = ""
    ) -> None:
        self.invariant = invariant
        self.reason = reason
        self.path = path
        self.saga = saga
        self.others = others
        lines = [f"invariant {invariant!r} broken: {reason}", f"  path: {path}"]
        if others:
            lines.append(f"  (saga {saga} of several; all sagas: {others})")
        super().__init__("\n".join(lines))


# -- the built-in invariants ----------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def history_is_a_path_of_the_machine(ctx: InvariantContext) -> None:
    """Each transition is a row of the compiled Machine, and each starts where the
    previous one ended: the engine never takes an edge the table does not have."""
    edges = row_edges(compile_saga(ctx.definition))
    state = PENDING
    for n, entry in enumerate(ctx.history, 1):
        _require(
            entry.from_state == state,
            f"transition {n} starts at {entry.from_state!r}, but the saga was at {state!r}",
        )
        _require(
            edge_of_entry(entry) in edges,
            f"transition {n} ({entry.trigger}: {entry.from_state} -> {entry.to_state}) is not"
            f" a row of the {ctx.definition.name} Machine",
        )
        state = entry.to_state
    _require(
        state == ctx.snapshot.state,
        f"the history ends at {state!r}, but the snapshot is at {ctx.snapshot.state!r}",
    )


def snapshots_round_trip(ctx: InvariantContext) -> None:
    """The store returns exactly the snapshot the engine decided, and (checked at the
    end) the codec turns it into JSON and back unchanged: a restart sees the same saga."""
    candidates = [(ctx.snapshot, "the store returned")]
    if ctx.final:
        # The version is the store's column, not part of the JSON: the store adds it back.
        round_trip = snapshot_from_json(snapshot_to_json(ctx.decided)).with_version(
            ctx.decided.version
        )
        candidates.append((round_trip, "a JSON round trip gave"))
    for loaded, what in candidates:
        if loaded == ctx.decided:
            continue
        for name in (f.name for f in fields(Snapshot)):
            decided, got = getattr(ctx.decided, name), getattr(loaded, name)
            _require(
                got == decided,
                f"{what} a different {name} than the engine decided: {got!r} != {decided!r}",
            )


def _last_calls(ctx: InvariantContext) -> dict[str, TraceEntry]:
    last: dict[str, TraceEntry] = {}
    for entry in ctx.trace:
        if (
            entry.kind == "step"
            and entry.step is not None
            and not (entry.fault or Fault.OK).crashes
        ):
            last[entry.step] = entry
    return last


def _may_have_acted(ctx: InvariantContext) -> list[str]:
    """The compensable steps that may have acted, in order: those the engine recorded
    as succeeded, and those whose last call ended in anything but a definite refusal
    (refused by the harness, or raising ``StepFailed(retryable=False)`` or a
    ``non_retryable`` type): a lost reply or request, a timeout, an unusable result.
    A parallel group counts once it started: it is always undone as a whole (each of
    its branches on its own, see ``_branch_steps_that_may_have_acted``)."""
    last = _last_calls(ctx)
    succeeded = set(ctx.succeeded)
    entered = {e.to_state for e in ctx.history}
    acted = []
    for step in ctx.definition.steps:
        if isinstance(step, StepGroup):
            if f"{SagaStatus.RUNNING.value}:{step.name}" in entered:
                acted.append(step.name)
            continue
        call = last.get(step.name)
        ran = call is not None and not _refused(call, step.retry.non_retryable)
        if step.compensable and (step.name in succeeded or ran):
            acted.append(step.name)
    return acted


def _branch_events(ctx: InvariantContext, event: str) -> list[str]:
    """Branch steps (``group/branch/step``) whose ``event`` the engine recorded, in order."""
    return [
        str(e.detail.get("step"))
        for e in ctx.history
        if e.trigger == "branch_progress" and e.detail.get("event") == event
    ]


def _branch_steps_that_may_have_acted(ctx: InvariantContext) -> dict[str, list[str]]:
    """For each branch (``group/branch``) that ran: its compensable steps that may have
    acted, in order, by the same rule as the saga's own steps."""
    last = _last_calls(ctx)
    succeeded = set(_branch_events(ctx, "step_succeeded"))
    acted: dict[str, list[str]] = {}
    for name in sorted({*succeeded, *(n for n in last if "/" in n)}):
        group, key, _ = name.split("/")
        step = step_named(ctx.definition, name)
        call = last.get(name)
        ran = call is not None and not _refused(call, step.retry.non_retryable)
        acted.setdefault(f"{group}/{key}", [])
        if step.compensable and (name in succeeded or ran):
            acted[f"{group}/{key}"].append(name)
    for branch, names in acted.items():
        group, key = branch.split("/")
        order = [
            f"{branch}/{s.name}" for s in step_named_group(ctx.definition, group).steps_of(key)
        ]
        names.sort(key=order.index)
    return acted


def step_named_group(definition: SagaDefinition, name: str) -> StepGroup:
    group = definition.step(name)
    assert isinstance(group, StepGroup)
    return group


def step_named(definition: SagaDefinition, name: str) -> Step:
    """A row of the table, or a branch step of a parallel group (``group/branch/step``)."""
    parts = name.split("/")
    if len(parts) == 3:
        return step_named_group(definition, parts[0]).branch_step(parts[1], parts[2])
    return definition.step(name)


def _refused(entry: TraceEntry, non_retryable: tuple[type[BaseException], ...]) -> bool:
    if entry.deadline_passed:
        # Not called at all: the engine saw a timeout (a parallel branch's deadline can
        # pass while another branch's call takes its time), whatever fault was planned.
        return False
    if entry.fault is Fault.PERMANENT:
        return True
    if entry.fault not in (None, Fault.OK) or entry.deadline_passed:
        return False
    err = entry.raised
    return (isinstance(err, StepFailed) and not err.retryable) or isinstance(err, non_retryable)


def compensates_every_step_that_may_have_acted(ctx: InvariantContext) -> None:
    """Every step that may have acted (it succeeded, or its last attempt timed out,
    failed transiently or returned something unusable) is compensated, once, in reverse
    order; a step refused definitely is not; a completed saga compensated nothing."""
    expected = list(reversed(_may_have_acted(ctx)))
    done = list(ctx.compensated)
    _require(
        done == expected[: len(done)],
        f"compensated {done}, but the compensable steps that may have acted, last first,"
        f" are {expected}",
    )
    status = ctx.snapshot.status
    _branches_compensate_what_may_have_acted(ctx)
    if status is SagaStatus.COMPENSATED:
        _require(done == expected, f"compensated {done}, expected {expected}")
    elif status is SagaStatus.COMPLETED:
        _require(not done, f"completed, yet compensated {done}")
    elif status is SagaStatus.FAILED and (ctx.snapshot.parked_at or "").startswith("running:"):
        # Parked at the pivot, which may have acted: nothing may be undone under it.
        _require(not done, f"parked at {ctx.snapshot.parked_at!r}, yet compensated {done}")
    elif status is SagaStatus.FAILED and ctx.snapshot.parked_at:
        parked = ctx.snapshot.parked_at.partition(":")[2]
        _require(
            len(done) < len(expected) and expected[len(done)] == parked,
            f"parked at {parked!r}, but the next step to compensate was"
            f" {expected[len(done)] if len(done) < len(expected) else None!r}",
        )


def _branches_compensate_what_may_have_acted(ctx: InvariantContext) -> None:
    """Each branch of a parallel group undoes, once and in its own reverse order, the
    steps of it that may have acted: all of them once the group is undone, and those of
    a branch that did not reach the join when the group succeeded without it."""
    done_all = _branch_events(ctx, "compensation_succeeded")
    undone_groups = set(ctx.compensated)
    joined = {
        f"{r.name}/{b.key}"
        for r in ctx.snapshot.steps
        for b in r.branches or ()
        if b.state.endswith(":_join") or b.state == "completed"
    }
    for branch, acted in _branch_steps_that_may_have_acted(ctx).items():
        expected = list(reversed(acted))
        done = [n for n in done_all if n.startswith(branch + "/")]
        _require(
            done == expected[: len(done)],
            f"branch {branch} compensated {done}, but its steps that may have acted, last"
            f" first, are {expected}",
        )
        group = branch.partition("/")[0]
        record = ctx.snapshot.step(group)
        settled = (group in undone_groups and ctx.snapshot.status is not SagaStatus.FAILED) or (
            record.status is StepStatus.SUCCEEDED and branch not in joined
        )
        if settled:
            _require(done == expected, f"branch {branch} compensated {done}, expected {expected}")
        if branch in joined and record.status is StepStatus.SUCCEEDED:
            _require(not done, f"branch {branch} reached the join, yet compensated {done}")


def no_compensation_while_its_action_may_run(ctx: InvariantContext) -> None:
    """A step's compensation is never called before a call of its action that has not
    yet returned: the undo must come after the effect it undoes."""
    for n, entry in enumerate(ctx.trace):
        if entry.kind != "compensation" or not entry.called:
            continue
        later = [e for e in ctx.trace[n + 1 :] if e.kind == "step" and e.step == entry.step]
        _require(
            not any(e.called for e in later),
            f"the action of step {entry.step!r} was called after its compensation",
        )


def never_compensates_after_the_pivot(ctx: InvariantContext) -> None:
    """Once the pivot succeeded the saga only goes forward: no compensation, ever."""
    pivot_index = ctx.definition.pivot_index
    if pivot_index is None:
        return
    pivot = ctx.definition.steps[pivot_index].name
    past = False
    for entry in ctx.history:
        if past:
            _require(
                entry.to_state.partition(":")[0]
                not in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.FAILED),
                f"the pivot {pivot!r} succeeded, yet the saga went to {entry.to_state!r}"
                f" on {entry.trigger}",
            )
        if entry.trigger == "step_succeeded" and entry.detail.get("step") == pivot:
            past = True
    late = [s.name for s in ctx.definition.steps[pivot_index:]]
    undone = set(ctx.compensated) & set(late)
    _require(not undone, f"compensated {sorted(undone)}, at or after the pivot {pivot!r}")


def fails_only_when_parked_for_an_operator(ctx: InvariantContext) -> None:
    """``failed`` means the saga is parked for an operator, with the cause recorded:
    either a compensation gave up (parked at ``compensating:<step>``, that step
    ``compensation_failed``), or the pivot's last attempt may have acted (parked at
    ``running:<pivot>``, the pivot ``failed`` or ``timed_out``, nothing compensated)."""
    snapshot = ctx.snapshot
    if snapshot.status is not SagaStatus.FAILED:
        return
    parked = snapshot.parked_at or ""
    _require(snapshot.failure is not None, "failed without recording why (snapshot.failure)")
    pivot_index = ctx.definition.pivot_index
    pivot = None if pivot_index is None else ctx.definition.steps[pivot_index].name
    if pivot is not None and parked == f"{SagaStatus.RUNNING.value}:{pivot}":
        record = snapshot.step(pivot)
        _require(
            record.status in (StepStatus.FAILED, StepStatus.TIMED_OUT),
            f"parked at the pivot {pivot!r}, but it is {record.status.value}",
        )
        _require(
            not ctx.compensated,
            f"parked at the pivot {pivot!r}, yet compensated {list(ctx.compensated)}",
        )
        return
    _require(
        parked.startswith(f"{SagaStatus.COMPENSATING.value}:"),
        f"failed, but parked_at is {snapshot.parked_at!r}, neither a compensating state"
        " nor the pivot",
    )
    record = snapshot.step(parked.partition(":")[2])
    _require(
        record.status is StepStatus.COMPENSATION_FAILED,
        f"failed at {parked!r}, but that step is {record.status.value}",
    )


def ends_in_a_final_state(ctx: InvariantContext) -> None:
    """Every path ends ``completed``, ``compensated`` or ``failed``."""
    _require(ctx.finished, f"the saga ended at {ctx.state!r}, not a final state")


def _call_entries(ctx: InvariantContext, kind: str) -> list[TraceEntry]:
    return [e for e in ctx.trace if e.kind == kind and e.called]


def compensations_do_not_fail_on_their_own(ctx: InvariantContext) -> None:
    """A compensation must succeed whenever its participant is up: it may ask for a
    retry (``StepFailed(retryable=True)``), but not crash on bad data, refuse for good,
    or give up. Failures are what the harness injects, around the call."""
    for entry in _call_entries(ctx, "compensation"):
        err = entry.raised
        _require(
            err is None or (isinstance(err, StepFailed) and err.retryable),
            f"compensation {entry.label} of step {entry.step!r} raised {err!r} with no"
            " fault injected",
        )
        _require(
            entry.problem is None,
            f"compensation {entry.label} of step {entry.step!r} returned {entry.returned!r}:"
            f" {entry.problem}",
        )
    state, _, parked = (ctx.snapshot.parked_at or "").partition(":")
    if ctx.snapshot.status is SagaStatus.FAILED and state == SagaStatus.COMPENSATING.value:
        retried = [n for n, e in enumerate(ctx.trace) if e.kind == "retry" and not e.refused]
        since = retried[-1] if retried else 0
        attempts = [
            e
            for e in ctx.trace[since:]
            if e.kind == "compensation"
            and e.step is not None
            and (e.step == parked or e.step.startswith(parked + "/"))  # a group's branches
        ]
        _require(
            any(e.fault is not Fault.OK for e in attempts),
            f"the compensation of step {parked!r} gave up on its own, with no fault injected",
        )


def actions_fail_only_on_purpose(ctx: InvariantContext) -> None:
    """An action fails on purpose (``StepFailed``, or a type its policy lists as
    ``non_retryable``) or not at all; anything else is a bug in it, and it returns a
    JSON-serialisable mapping or None."""
    for entry in _call_entries(ctx, "step"):
        err = entry.raised
        assert entry.step is not None
        if err is not None:
            declared: tuple[type[BaseException], ...] = (
                StepFailed,
                *step_named(ctx.definition, entry.step).retry.non_retryable,
            )
            _require(
                isinstance(err, declared),
                f"action {entry.label} raised {err!r} with no fault injected (raise StepFailed"
                " for a business failure)",
            )
        _require(
            entry.problem is None,
            f"action {entry.label} returned {entry.returned!r}: {entry.problem}",
        )


def replays_return_the_first_result(ctx: InvariantContext) -> None:
    """A participant called again with the same idempotency key (after a lost reply, a
    timeout or a crash) answers as it did the first time; a different answer means it
    acted again."""
    first: dict[str, Any] = {}
    for entry in _call_entries(ctx, "step"):
        if entry.raised is not None or entry.problem is not None or entry.idempotency_key is None:
            continue
        result = dict(entry.returned) if entry.returned is not None else None
        key = entry.idempotency_key
        if key not in first:
            first[key] = result
            continue
        _require(
            result == first[key],
            f"action {entry.label} returned {result!r} on attempt {entry.attempt} with"
            f" idempotency key {key!r}, but {first[key]!r} before: it did not deduplicate"
            " on the key",
        )


def cancel_is_refused_only_when_it_must_be(ctx: InvariantContext) -> None:
    """A cancel is accepted until the pivot has run; refused only while compensating,
    once finished, or past the pivot."""
    pivot = ctx.definition.pivot_index
    for entry in ctx.trace:
        if entry.kind != "cancel" or not entry.refused:
            continue
        status, _, step = entry.state_before.partition(":")
        past = pivot is not None and bool(step) and ctx.definition.index(step) > pivot
        _require(
            status != SagaStatus.RUNNING.value or past,
            f"cancel was refused at {entry.state_before!r}, before the pivot",
        )
        _require(status != SagaStatus.PENDING.value, "cancel was refused while pending")


def signals_end_only_the_wait_in_progress(ctx: InvariantContext) -> None:
    """A signal is taken only by a wait in progress that lists it, and one such wait
    never refuses; a refused or repeated signal changes nothing."""
    waits = {s.name: s for s in ctx.definition.steps if isinstance(s, WaitFor)}
    for entry in ctx.trace:
        if entry.kind != "signal":
            continue
        status, _, step = entry.state_before.partition(":")
        wait = waits.get(step) if status == SagaStatus.RUNNING.value else None
        listed = wait is not None and entry.label in wait.outcomes
        if entry.refused or entry.repeated:
            _require(
                entry.state_after == entry.state_before,
                f"signal {entry.label!r} was refused, yet the saga moved"
                f" {entry.state_before!r} -> {entry.state_after!r}",
            )
            _require(
                not (entry.refused and listed),
                f"signal {entry.label!r} was refused while {step} waited for it",
            )
        else:
            _require(
                listed,
                f"signal {entry.label!r} was taken at {entry.state_before!r}, which does not"
                " wait for it",
            )


BUILTIN_INVARIANTS: tuple[Invariant, ...] = (
    Invariant(history_is_a_path_of_the_machine, "history_is_a_path_of_the_machine"),
    Invariant(snapshots_round_trip, "snapshots_round_trip"),
    Invariant(actions_fail_only_on_purpose, "actions_fail_only_on_purpose"),
    Invariant(compensations_do_not_fail_on_their_own, "compensations_do_not_fail_on_their_own"),
    Invariant(replays_return_the_first_result, "replays_return_the_first_result"),
    Invariant(
        compensates_every_step_that_may_have_acted, "compensates_every_step_that_may_have_acted"
    ),
    Invariant(no_compensation_while_its_action_may_run, "no_compensation_while_its_action_may_run"),
    Invariant(never_compensates_after_the_pivot, "never_compensates_after_the_pivot"),
    Invariant(fails_only_when_parked_for_an_operator, "fails_only_when_parked_for_an_operator"),
    Invariant(cancel_is_refused_only_when_it_must_be, "cancel_is_refused_only_when_it_must_be"),
    Invariant(signals_end_only_the_wait_in_progress, "signals_end_only_the_wait_in_progress"),
    Invariant(ends_in_a_final_state, "ends_in_a_final_state", final_only=True),
)
"""Checked for every saga before the user's invariants, in this order."""

"""How a parallel group decides: the saga's flow stays at ``running:<group>`` (then
``compensating:<group>``) while each branch moves through its own small flow, compiled
from its steps plus the join (``saga_fsm._groups.branch_definition``) and decided by the
same ``decide()``. Branch events reach the group as the saga Machine's internal
``branch_progress`` transition; the group's outcome is fired on the saga Machine as
``step_succeeded`` / ``step_failed`` / ``compensation_succeeded`` /
``compensation_failed``, in the same decision.

Semantics:

* Forward: pending branches start, at most ``max_concurrency`` running at once. A
  branch that reached the join waits at ``running:_join`` (its join step's record stays
  ``running``: nothing runs for it).
* A branch fails for good (its flow leaves the forward path) or the saga is cancelled:
  no new branch step starts; branches with a step in flight are cancelled (the step
  settles, then the branch compensates); compensations decided meanwhile are *held*.
  Once no forward step is in flight the group fails (``step_failed``) and every branch
  is undone, concurrently, each in its own reverse order: a branch at the join is
  refused there, one awaiting a retry is cancelled (its last attempt may have acted),
  one never started has nothing to undo. Then the steps before the group, as ever.
* ``join="any"``/k: once enough branches reached the join the others are cancelled
  (settled and compensated, never left running); when they are all undone the group
  succeeds. A loser whose compensation gave up fails the group.
* A branch whose compensation gave up ends ``failed``; once every branch is done the
  saga parks at ``compensating:<group>``. An operator's retry retries that branch.
* Timers: the saga's ``wake_at`` is the earliest branch back-off or remote deadline;
  ``retry_due`` wakes the branches due then (a remote call past its deadline times out).
  Branch commands, events and keys name the step ``group/branch/step``; a remote branch
  step's request id is derived from that name, so replies find their branch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from saga_fsm._core import (
    Command,
    Decision,
    Event,
    RunCompensation,
    RunStep,
    ScheduleWake,
    decide,
    idempotency_key,
    outstanding,
)
from saga_fsm._definition import Step
from saga_fsm._errors import TransitionNotAllowed
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._groups import JOIN, ForEach, StepGroup, branch_definition
from saga_fsm._snapshot import (
    BranchRecord,
    ErrorInfo,
    Snapshot,
    StepRecord,
    StepStatus,
    replace,
    split_state,
)

if TYPE_CHECKING:
    from saga_fsm._core import _Scratch

_PENDING, _COMPENSATED, _FAILED, _COMPLETED = "pending", "compensated", "failed", "completed"
_AT_JOIN = f"running:{JOIN}"
_UNDONE = ErrorInfo("GroupUndone", "the group is being compensated", retryable=False)


def group_at(compiled: CompiledSaga, state: str) -> tuple[int, StepGroup] | None:
    """The row and group the saga is at, if its state names a group."""
    step = split_state(state)[1]
    if step is None:
        return None
    row = compiled.step_index.get(step)
    if row is None:
        return None
    group = compiled.definition.steps[row]
    return (row, group) if isinstance(group, StepGroup) else None


def branch_name(group: str, key: str, step: str) -> str:
    """A branch step's name in commands, events and history: ``group/branch/step``."""
    return f"{group}/{key}/{step}"


def split_branch_name(name: str) -> tuple[str, str, str] | None:
    parts = name.split("/")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def _forward_in_flight(b: BranchRecord) -> bool:
    status, step = split_state(b.state)
    if status.value != "running" or step == JOIN or step is None:
        return False
    return _record(b, step).status is StepStatus.RUNNING


def _awaiting_retry(b: BranchRecord) -> bool:
    step = split_state(b.state)[1]
    if step is None or step == JOIN:
        return False
    return _record(b, step).status in (
        StepStatus.FAILED,
        StepStatus.TIMED_OUT,
        StepStatus.COMPENSATION_FAILED,
    )


def _compensating_now(b: BranchRecord) -> bool:
    status, step = split_state(b.state)
    return (
        status.value == "compensating"
        and step is not None
        and not b.held
        and _record(b, step).status is StepStatus.COMPENSATING
    )


def _in_flight(b: BranchRecord) -> StepRecord | None:
    """The record of the branch's call in flight (forward or compensation), if any."""
    if not (_forward_in_flight(b) or _compensating_now(b)):
        return None
    step = split_state(b.state)[1]
    assert step is not None
    return _record(b, step)


def _busy(b: BranchRecord) -> bool:
    """A local call of this branch is (or must be) running now: its driver runs it."""
    record = _in_flight(b)
    return record is not None and record.request_id is None


def _waiting_remote(b: BranchRecord) -> bool:
    """A remote call of this branch waits for its reply (until its deadline)."""
    record = _in_flight(b)
    return record is not None and record.request_id is not None


def _left_forward(b: BranchRecord) -> bool:
    """The branch will not reach the join any more."""
    return b.state.startswith("compensating:") or b.state in (_COMPENSATED, _FAILED)


def _terminal(b: BranchRecord) -> bool:
    return b.state in (_COMPENSATED, _FAILED, _COMPLETED)


def _record(b: BranchRecord, step: str) -> StepRecord:
    for record in b.steps:
        if record.name == step:
            return record
    raise KeyError(step)


class _Group:
    """One decision's view of the group the saga is at: its branches, edited in place,
    written back to the scratch snapshot by ``store``."""

    def __init__(self, scratch: _Scratch, row: int) -> None:
        self.scratch = scratch
        self.row = row
        group = scratch.compiled.definition.steps[row]
        assert isinstance(group, StepGroup)
        self.group = group
        self.at: datetime = scratch.event.at
        self.branches: list[BranchRecord] = list(scratch.steps[row].branches or ())
        self.fresh: dict[str, list[Command]] = {}

    # -- one branch -----------------------------------------------------------------------
    def compiled_branch(self, b: BranchRecord) -> CompiledSaga:
        return compile_saga(branch_definition(self.group, b.key))

    def snapshot_of(self, b: BranchRecord) -> Snapshot:
        return branch_snapshot(self.scratch.snapshot, self.group, b, self.at)

    def index(self, key: str) -> int:
        for n, b in enumerate(self.branches):
            if b.key == key:
                return n
        raise self.refuse(f"no branch {key!r} in group {self.group.name!r}")

    def refuse(self, why: str) -> TransitionNotAllowed:
        s = self.scratch
        return TransitionNotAllowed(s.snapshot.saga_id, s.state, s.event.trigger, why)

    def fire(self, n: int, event: Event) -> None:
        """Decide ``event`` in branch ``n``'s own flow and take in what it did."""
        b = self.branches[n]
        try:
            decision = decide(self.compiled_branch(b), self.snapshot_of(b), event)
        except TransitionNotAllowed as err:
            raise self.refuse(f"branch {b.key!r}: {err.reason or err}") from None
        self.absorb(n, decision)

    def absorb(self, n: int, decision: Decision) -> None:
        b, after = self.branches[n], decision.snapshot
        steps = tuple(
            r
            if r.request_id is None
            else replace(r, request_id=self.full_request(b.key, r.name, r.request_id))
            for r in after.steps
        )
        self.branches[n] = replace(
            b,
            state=after.state,
            steps=steps,
            data=after.data,
            wake_at=after.wake_at,
            cancel_requested=after.cancel_requested,
            parked_at=after.parked_at,
            failure=after.failure,
        )
        for entry in decision.history:
            self.scratch.notes.append(
                {
                    "branch": b.key,
                    "trigger": entry.trigger,
                    "from": entry.from_state,
                    "to": entry.to_state,
                }
            )
        fresh = self.fresh.setdefault(b.key, [])
        fresh.extend(self.named(b.key, decision.commands))

    def named(self, key: str, commands: Iterable[Command]) -> list[Command]:
        """Branch commands as the saga issues them: ``group/branch/step``, with keys of
        their own (per branch and per item); the join's and timers dropped."""
        return _named(self.scratch.snapshot.saga_id, self.group.name, key, commands)

    def full_request(self, key: str, step: str, request: str) -> str:
        return _full_request(self.scratch.snapshot.saga_id, self.group.name, key, step, request)

    # -- the group ------------------------------------------------------------------------
    def start(self) -> bool:
        """Create the branches; False when the group failed at once (no items list)."""
        s = self.scratch
        record = s.steps[self.row]
        s._move(
            self.row,
            "run",
            attempts=record.attempts + 1,
            started_at=self.at,
            finished_at=None,
            deadline=None,
        )
        if isinstance(self.group, ForEach):
            data = s.data if s.data is not None else s.snapshot.data
            items = data.get(self.group.items)
            if not isinstance(items, list):
                self.branches = []
                s.follow_ups.append(
                    self.outcome(
                        "step_failed",
                        ErrorInfo(
                            "InvalidItems",
                            f"data[{self.group.items!r}] must be a list, got"
                            f" {type(items).__name__}",
                            retryable=True,
                        ),
                    )
                )
                return False
            self.branches = [self.new_branch(str(n), item) for n, item in enumerate(items)]
        else:
            self.branches = [self.new_branch(key, None) for key in self.group.branch_keys()]
        return True

    def new_branch(self, key: str, item: Any) -> BranchRecord:
        steps = branch_definition(self.group, key).steps
        return BranchRecord(key, _PENDING, tuple(StepRecord(st.name) for st in steps), item=item)

    def outcome(self, trigger: Any, error: ErrorInfo | None = None, **extra: Any) -> Event:
        record = self.scratch.steps[self.row]
        attempt = (
            record.compensation_attempts if trigger.startswith("compensation") else record.attempts
        )
        return Event(trigger, self.at, step=self.group.name, attempt=attempt, error=error, **extra)

    def progress(self) -> None:
        """Apply the event in hand to its branch (or wake the branches it is due for)."""
        event = self.scratch.event
        if event.trigger == "cancel":
            return
        if event.trigger == "retry_due":
            due = [
                n
                for n, b in enumerate(self.branches)
                if _awaiting_retry(b)
                and b.wake_at is not None
                and b.wake_at <= event.at
                and not (self.stopping() and not _left_forward(b))
            ]
            # A remote call whose reply did not come by its deadline has timed out.
            late = [
                n
                for n, b in enumerate(self.branches)
                if _waiting_remote(b) and b.wake_at is not None and b.wake_at <= event.at
            ]
            if not due and not late:
                raise self.refuse("no branch is due")
            for n in due:
                self.fire(n, Event.retry_due(event.at))
            for n in late:
                self.fire(n, self.timed_out(self.branches[n], event.at))
            return
        parts = split_branch_name(event.step or "")
        if parts is None or parts[0] != self.group.name:
            raise self.refuse(f"result for step {event.step!r}, not a step of this group")
        n = self.index(parts[1])
        self.fire(n, replace(event, step=parts[2]))

    def timed_out(self, b: BranchRecord, at: datetime) -> Event:
        step = split_state(b.state)[1]
        assert step is not None
        record = _record(b, step)
        if record.status is StepStatus.COMPENSATING:
            return Event(
                "compensation_timed_out", at, step=step, attempt=record.compensation_attempts
            )
        return Event("step_timed_out", at, step=step, attempt=record.attempts)

    def stopping(self) -> bool:
        """No new branch step may start: a cancel, or too few branches left to join."""
        if self.scratch.state.startswith("compensating:"):
            return True
        if self.scratch.cancel_requested:
            return True
        need = self.needed()
        failed = sum(1 for b in self.branches if _left_forward(b))
        return len(self.branches) - failed < need and not self.won()

    def needed(self) -> int:
        n = self.group.needed
        return len(self.branches) if n is None else n

    def won(self) -> bool:
        return sum(1 for b in self.branches if b.state == _AT_JOIN) >= self.needed()

    def conclude(self) -> None:
        """What the group does next, given its branches."""
        s = self.scratch
        if s.state.startswith("compensating:"):
            if all(_terminal(b) for b in self.branches):
                parked = [b for b in self.branches if b.state == _FAILED]
                if parked:
                    b = parked[0]
                    why = ErrorInfo(
                        "BranchCompensationFailed",
                        f"branch {b.key!r}: {b.failure}",
                        retryable=False,
                    )
                    s.follow_ups.append(self.outcome("compensation_failed", why))
                else:
                    s.follow_ups.append(self.outcome("compensation_succeeded"))
            return
        if self.stopping():
            for n, b in enumerate(self.branches):
                if _forward_in_flight(b) and not b.cancel_requested:
                    self.fire(n, Event.cancel(self.at))
            self.hold()
            if not any(_forward_in_flight(b) for b in self.branches):
                s.follow_ups.append(self.outcome("step_failed", self.failure()))
            return
        if self.won():
            for n, b in enumerate(self.branches):
                if b.state == _AT_JOIN or _left_forward(b) or b.cancel_requested:
                    continue
                # The join is met without it: undone (after its step in flight settles).
                self.fire(n, Event.cancel(self.at))
            losers = [b for b in self.branches if b.state != _AT_JOIN]
            if all(_terminal(b) for b in losers):
                if any(b.state == _FAILED for b in losers):
                    s.follow_ups.append(self.outcome("step_failed", self.failure()))
                else:
                    s.follow_ups.append(self.outcome("step_succeeded", result=self.result()))
            return
        limit = self.group.max_concurrency or len(self.branches)
        active = sum(
            1 for b in self.branches if b.state.startswith("running:") and b.state != _AT_JOIN
        )
        for n, b in enumerate(self.branches):
            if active >= limit:
                break
            if b.state == _PENDING:
                self.fire(n, Event.start(self.at))
                active += 1
        if self.won():  # branches whose steps all run in the same decision
            self.conclude()

    def hold(self) -> None:
        """Compensations decided while forward steps are in flight wait for them."""
        if not any(_forward_in_flight(b) for b in self.branches):
            return
        for n, b in enumerate(self.branches):
            cmds = self.fresh.get(b.key, [])
            if any(isinstance(c, RunCompensation) for c in cmds):
                self.fresh[b.key] = [c for c in cmds if not isinstance(c, RunCompensation)]
                self.branches[n] = replace(b, held=True)

    def failure(self) -> ErrorInfo:
        """Why the group failed: the first branch that failed for good, or a cancel.
        Marked retryable: something in the group may have acted, so it is undone."""
        for b in self.branches:
            if b.failure is not None and (_left_forward(b)):
                return ErrorInfo("BranchFailed", f"branch {b.key!r}: {b.failure}", retryable=True)
        return ErrorInfo("BranchFailed", "the group was stopped", retryable=True)

    def result(self) -> dict[str, Any]:
        if isinstance(self.group, ForEach):
            return {self.group.name: [dict(b.data) for b in self.branches]}
        merged: dict[str, Any] = {}
        for b in self.branches:
            if b.state == _AT_JOIN:
                merged.update(b.data)
        return merged

    def compensate(self) -> None:
        """Undo every branch (``run_compensation`` of the group): all at once."""
        s = self.scratch
        record = s.steps[self.row]
        s._move(
            self.row,
            "compensate",
            compensation_attempts=record.compensation_attempts + 1,
            deadline=None,
        )
        for n, b in enumerate(self.branches):
            if b.state == _PENDING:
                self.fire(n, Event.cancel(self.at))
            elif b.state == _AT_JOIN:
                join = _record(b, JOIN)
                self.fire(
                    n,
                    Event("step_failed", self.at, step=JOIN, attempt=join.attempts, error=_UNDONE),
                )
            elif b.state == _FAILED and b.parked_at is not None:
                self.fire(n, Event.retry(self.at))
            elif b.held:
                self.release(n)
            elif b.state.startswith("running:") and not _forward_in_flight(b):
                self.fire(n, Event.cancel(self.at))
        self.conclude()

    def release(self, n: int) -> None:
        """Run a held compensation now, its deadline counted from now."""
        b = self.branches[n]
        step_name = split_state(b.state)[1]
        assert step_name is not None
        record = _record(b, step_name)
        step: Step = branch_definition(self.group, b.key).step(step_name)
        timeout = step.remote_compensation_timeout
        deadline = None if timeout is None else self.at + timedelta(seconds=timeout)
        steps = tuple(replace(r, deadline=deadline) if r is record else r for r in b.steps)
        self.branches[n] = replace(b, held=False, steps=steps, wake_at=deadline)
        command = RunCompensation(
            step_name, record.compensation_attempts, "", deadline, record.request_id
        )
        self.fresh.setdefault(b.key, []).extend(self.named(b.key, [command]))

    def store(self) -> None:
        s = self.scratch
        s.steps[self.row] = replace(s.steps[self.row], branches=tuple(self.branches))
        for b in self.branches:
            s.commands.extend(self.fresh.get(b.key, []))
        stopping = self.stopping()
        timers = [
            b.wake_at
            for b in self.branches
            if b.wake_at is not None
            and (
                _waiting_remote(b)
                or (_awaiting_retry(b) and not (stopping and not _left_forward(b)))
            )
        ]
        s.wake_at = min(timers, default=None)
        if s.wake_at is not None and not any(_busy(b) for b in self.branches):
            s.commands.append(ScheduleWake(s.wake_at))


# -- the hooks the core calls -------------------------------------------------------------


def start_group(scratch: _Scratch, row: int) -> None:
    group = _Group(scratch, row)
    if group.start():
        group.conclude()
    group.store()


def compensate_group(scratch: _Scratch, row: int) -> None:
    group = _Group(scratch, row)
    group.compensate()
    group.store()


def group_progress(scratch: _Scratch) -> None:
    row = scratch._row(None)
    group = _Group(scratch, row)
    group.progress()
    group.conclude()
    group.store()


def routed(compiled: CompiledSaga, snapshot: Snapshot, event: Event) -> bool:
    """Whether ``event`` goes to the group the saga is at (as ``branch_progress``)."""
    if event.trigger != "retry_due" and (event.step is None or "/" not in event.step):
        return False
    return group_at(compiled, snapshot.state) is not None


def branch_snapshot(parent: Snapshot, group: StepGroup, b: BranchRecord, at: datetime) -> Snapshot:
    """A branch as a saga of its own small flow: what its ``decide``/``outstanding``
    read (never stored)."""
    return Snapshot(
        saga_id=parent.saga_id,
        definition=branch_definition(group, b.key).name,
        definition_version=1,
        state=b.state,
        steps=b.steps,
        data=b.data,
        created_at=parent.created_at,
        updated_at=at,
        wake_at=b.wake_at,
        cancel_requested=b.cancel_requested,
        parked_at=b.parked_at,
        failure=b.failure,
    )


def group_outstanding(compiled: CompiledSaga, snapshot: Snapshot) -> tuple[Command, ...]:
    """What must happen next for a saga at a group (crash recovery): every branch call
    in flight, then the earliest branch timer when nothing is in flight."""
    found = group_at(compiled, snapshot.state)
    assert found is not None
    row, group = found
    record = snapshot.steps[row]
    commands: list[Command] = []
    busy = False
    for b in record.branches or ():
        if b.held or _in_flight(b) is None:
            continue
        busy = busy or _busy(b)
        branch = compile_saga(branch_definition(group, b.key))
        view = branch_snapshot(snapshot, group, b, snapshot.updated_at)
        commands += _named(snapshot.saga_id, group.name, b.key, outstanding(branch, view))
    if not busy and snapshot.wake_at is not None:
        commands.append(ScheduleWake(snapshot.wake_at))
    return tuple(commands)


def _full_request(saga_id: str, group: str, key: str, step: str, request: str) -> str:
    """A branch step's request id as the saga issues it: derived from the step's full
    name (``{saga}:group/branch/step:attempt``), so no two branches share one."""
    full = f"{saga_id}:{branch_name(group, key, step)}"
    if request.startswith(full + ":"):
        return request
    local = f"{saga_id}:{step}"
    assert request.startswith(local + ":"), request
    return full + request[len(local) :]


def _named(saga_id: str, group: str, key: str, commands: Iterable[Command]) -> list[Command]:
    """Branch commands as the saga issues them: ``group/branch/step``, with keys (and
    request ids) of their own, per branch and per item; the join's and timers dropped."""
    out: list[Command] = []
    for c in commands:
        if not isinstance(c, RunStep | RunCompensation) or c.step == JOIN:
            continue
        full = branch_name(group, key, c.step)
        compensation = isinstance(c, RunCompensation)
        ikey = idempotency_key(saga_id, full, compensation=compensation)
        request = (
            None
            if c.request_id is None
            else _full_request(saga_id, group, key, c.step, c.request_id)
        )
        kind = RunCompensation if compensation else RunStep
        out.append(kind(full, c.attempt, ikey, c.deadline, request))
    return out


def waits_for_reply(compiled: CompiledSaga, snapshot: Snapshot) -> bool:
    """Whether a saga at a group has a branch's remote call waiting for its reply."""
    found = group_at(compiled, snapshot.state)
    if found is None:
        return False
    return any(_waiting_remote(b) for b in snapshot.steps[found[0]].branches or ())


def awaited_branch(snapshot: Snapshot, request: str | None) -> RunStep | RunCompensation | None:
    """The branch call of a saga at a group that waits for the reply to ``request``."""
    step = split_state(snapshot.state)[1]
    if step is None or request is None:
        return None
    record = snapshot.step(step)
    for b in record.branches or ():
        current = _in_flight(b)
        if current is None or b.held or current.request_id != request:
            continue
        full = branch_name(step, b.key, current.name)
        if current.status is StepStatus.COMPENSATING:
            return RunCompensation(
                full, current.compensation_attempts, "", current.deadline, request
            )
        return RunStep(full, current.attempts, "", current.deadline, request)
    return None


def branch_call(
    compiled: CompiledSaga, snapshot: Snapshot, name: str
) -> tuple[Step, Mapping[str, Any]] | None:
    """For a branch step's command: the step, and the data its call sees (the saga
    data, the branch's own data, and a ``ForEach`` branch's ``item``/``item_index``).
    None for a step that is not a branch step."""
    parts = split_branch_name(name)
    if parts is None:
        return None
    group_name, key, step_name = parts
    row = compiled.step_index.get(group_name)
    if row is None:
        return None
    group = compiled.definition.steps[row]
    if not isinstance(group, StepGroup):
        return None
    record = snapshot.steps[row]
    branch = next((b for b in record.branches or () if b.key == key), None)
    view = dict(snapshot.data)
    if branch is not None:
        view.update(branch.data)
        if isinstance(group, ForEach):
            view["item"] = branch.item
            view["item_index"] = int(branch.key)
    return group.branch_step(key, step_name), view

"""The harness's engine room: saga instances driven through the pure core and a real
store, with the user's real actions called and faults injected around them.

It is deliberately not the orchestrator: the orchestrator decides *when* things happen
(clock, leases, back-off sleeps); the driver lets hypothesis decide, one event at a
time, while doing what the orchestrator does at each one: take the saga's snapshot, ask
``outstanding``/``decide``, call the function as ``Orchestrator`` does (same
``StepContext``, same ``saga_fsm._invoke``), and save the decision with its history.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from attrs import define, field, frozen

from saga_fsm._clock import FakeClock
from saga_fsm._core import (
    Command,
    Decision,
    Event,
    RunCompensation,
    RunStep,
    ScheduleWake,
    decide,
    new_snapshot,
    outcome_event,
    outstanding,
    signal_event,
)
from saga_fsm._definition import Action, RetryPolicy, SagaDefinition, Step, WaitFor
from saga_fsm._errors import SagaError, SignalRefused, TransitionNotAllowed
from saga_fsm._flow import PENDING, CompiledSaga, compile_saga
from saga_fsm._groups import StepGroup
from saga_fsm._invoke import call_outcome, callee, invoke, result_problem, step_context
from saga_fsm._parallel import branch_call, split_branch_name
from saga_fsm._remote import reply_event, stale_reason
from saga_fsm._snapshot import HistoryEntry, SagaStatus, Snapshot, replace
from saga_fsm._transactional import Rolled, calling, require_transactions
from saga_fsm.messaging import Message
from saga_fsm.participant import Participant
from saga_fsm.stores import SnapshotStore
from saga_fsm.stores._transact import ActionRaised, TransactionalStore, Write
from saga_fsm.testing._children import (
    cancel_child,
    child_faults,
    children_call,
    require_child_definitions,
)
from saga_fsm.testing._faults import ALL_FAULTS, REFUSED, REPLY_LOST, REQUEST_LOST, Fault
from saga_fsm.testing._fixtures import Setup, StoreFactory, enter_setup, fresh_memory
from saga_fsm.testing._invariants import (
    BUILTIN_INVARIANTS,
    Invariant,
    InvariantContext,
    InvariantViolation,
)
from saga_fsm.testing._reachability import Move
from saga_fsm.testing._remote import Participants, command_message, raised_of, refusal
from saga_fsm.testing._trace import TraceEntry, TraceKind, render_path

T = TypeVar("T")

_EFFECT_WITHOUT_OUTCOME = (Fault.TRANSIENT, Fault.TIMEOUT, Fault.CRASH_AFTER)
"""Faults that leave a call's effect without its outcome: impossible for a transactional
step, whose effect and outcome are one commit."""


def trace_kind(command: RunStep | RunCompensation) -> TraceKind:
    return "compensation" if isinstance(command, RunCompensation) else "step"


TICK = 0.001
"""Seconds of fake time between two events, so every transition has its own instant."""


class CallDidNotReturn(SagaError):
    """A real action or compensation did not return within the harness's wall-clock
    limit: a fake should answer at once (the harness injects the slow cases)."""


@frozen
class DriverConfig:
    """How to drive one definition; shared by the property machine and scenarios."""

    definition: SagaDefinition
    invariants: tuple[Invariant, ...] = ()
    setup: Setup | None = None
    store: StoreFactory = field(factory=fresh_memory)
    simulate: bool = False
    """Never call the real functions: an ``ok`` call succeeds with no result."""
    faults: tuple[Fault, ...] = ALL_FAULTS
    builtin_invariants: bool = True
    call_timeout: float = 10.0
    finish_limit: int = 1000
    """Fault-free events a saga gets to finish at the end before it counts as stuck."""
    participants: tuple[Participant, ...] = ()
    """Who answers remote steps' commands (an ideal participant answers the rest)."""


@define
class SagaRun:
    """One saga instance under test: what the engine decided last and what happened."""

    saga_id: str
    number: int
    decided: Snapshot
    data: dict[str, Any]
    """The data it started with."""
    next: Command | None = None
    """The command ``outstanding`` derives from ``decided`` (of several, while a parallel
    group has calls in flight: the first, or the one ``Driver.choose`` picked)."""
    options: tuple[Command, ...] = ()
    """Every command ``outstanding`` derives from ``decided``."""
    trace: list[TraceEntry] = field(factory=list)
    seen_keys: set[str] = field(factory=set)
    """Idempotency keys a participant was called with (or would have been, simulated)."""
    late: list[tuple[str, Message]] = field(factory=list)
    """Remote steps' delayed commands and replies, with the label of their call: they
    arrive at the saga's next move."""
    compiled: CompiledSaga | None = None
    """The table it runs on: a child saga's own; None for the definition under test."""

    @property
    def runnable(self) -> bool:
        """Its next thing is a call, around which a fault can be injected."""
        return isinstance(self.next, RunStep | RunCompensation)


def step_named(definition: SagaDefinition, name: str) -> Step:
    """The step a command names: a row of the table, or a branch step of a parallel
    group (``group/branch/step``)."""
    parts = split_branch_name(name)
    if parts is not None:
        group = definition.step(parts[0])
        if isinstance(group, StepGroup):
            return group.branch_step(parts[1], parts[2])
    return definition.step(name)


def _label(step: Step, compensation: bool) -> str:
    if not compensation:
        return step.name
    name = getattr(step.compensation, "__name__", "")
    return name if name.isidentifier() else f"undo {step.name}"


class Driver:
    """Runs the sagas of one example in its own event loop. One per example."""

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.definition = config.definition
        self.compiled = compile_saga(config.definition)
        require_child_definitions(config.definition)
        self.clock = FakeClock()
        self.sagas: list[SagaRun] = []
        self.timeline: list[tuple[int, TraceEntry]] = []
        self.broken = False
        """Set once anything failed: the end-of-run checks are then skipped, so the
        first failure is the one reported."""
        self._touched: set[int] = set()
        self.children: dict[str, SagaRun] = {}
        """Child sagas (``ChildSaga`` steps) by id: driven by their parent's calls."""
        self._hung = False
        self.participants = Participants(config.participants)
        self._loop = asyncio.new_event_loop()
        self._stack = AsyncExitStack()
        try:
            self.store: SnapshotStore = self.run(
                self._stack.enter_async_context(config.store.open())
            )
            if not config.simulate:
                # Transactional steps get their connection from the store's transaction.
                require_transactions(self.store, config.definition)
            self.world: Any = self.run(enter_setup(self._stack, config.setup))
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------------
    def _table(self, saga: SagaRun) -> CompiledSaga:
        return self.compiled if saga.compiled is None else saga.compiled

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self._loop.run_until_complete(wrapped())

    def close(self) -> None:
        """Tear the world down, close the store, stop the loop (in that order)."""
        if self._loop.is_closed():
            return
        try:
            self.run(self._stack.aclose())
        finally:
            if not self._hung:  # joining a thread that never returns would hang here
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def _tick(self) -> datetime:
        self.clock.advance(TICK)
        return self.clock.now()

    def _wait_until(self, at: datetime) -> None:
        if at > self.clock.now():
            self.clock.advance((at - self.clock.now()).total_seconds())

    # -- sagas ----------------------------------------------------------------------------
    def create(self, data: dict[str, Any]) -> SagaRun:
        snapshot = new_snapshot(self.definition, str(uuid.uuid4()), data, self._tick())
        stored, _created = self.run(self.store.create(snapshot))
        saga = SagaRun(stored.saga_id, len(self.sagas) + 1, stored, data)
        self.sagas.append(saga)
        self._touched.add(saga.number)
        return saga

    def live(self) -> list[SagaRun]:
        return [s for s in self.sagas if not s.decided.is_terminal]

    def parked(self) -> list[SagaRun]:
        return [s for s in self.sagas if s.decided.status is SagaStatus.FAILED]

    def runnable(self) -> list[SagaRun]:
        return [s for s in self.sagas if s.runnable]

    def faults_for(self, saga: SagaRun) -> tuple[Fault, ...]:
        """The configured faults that can happen to the saga's next call: a timeout only
        where a deadline is set, as in production; a refusal only before the
        participant has seen the call's idempotency key (once it acted on a key, an
        idempotent participant answers that key as it did, it cannot refuse it)."""
        command = saga.next
        if not isinstance(command, RunStep | RunCompensation) or self._waits(saga, command):
            # A wait calls nothing: what ends it is a signal or its deadline.
            return (Fault.OK,)
        if command.step in self._table(saga).child_steps:
            return child_faults(self.config.faults, command)
        # A transactional step's effect commits with its outcome or not at all: no reply
        # is lost after the effect, and a crash leaves nothing (no ``crash_after``).
        effect_only = step_named(self._table(saga).definition, command.step).transactional
        return tuple(
            f
            for f in self.config.faults
            if not (f is Fault.TIMEOUT and command.deadline is None)
            and not (f is Fault.PERMANENT and command.idempotency_key in saga.seen_keys)
            and not (effect_only and f in _EFFECT_WITHOUT_OUTCOME)
        )

    # -- events ---------------------------------------------------------------------------
    def advance(self, saga: SagaRun, fault: Fault = Fault.OK) -> None:
        """Do the one thing the saga waits for: start it, wake it after a back-off, or
        make its outstanding call with ``fault`` around it. Finished: nothing to do.

        It acts on ``saga.decided``: after every rule the invariants prove the store
        returns exactly that snapshot, so it is what a recovered process would load."""
        self.run(self._advance(saga, fault))

    async def _advance(self, saga: SagaRun, fault: Fault) -> None:
        late = saga.late  # what was delayed arrives after this move: it was overtaken
        saga.late = []
        await self._move(saga, fault)
        await self._arrive_late(saga, late)

    async def _move(self, saga: SagaRun, fault: Fault) -> None:
        snapshot = saga.decided
        if snapshot.state == PENDING:
            await self._apply(saga, Event.start(self._tick()), "start")
        elif isinstance(saga.next, ScheduleWake):
            self._wait_until(saga.next.at)
            await self._apply(saga, Event.retry_due(self._tick()), "wake")
        elif isinstance(saga.next, RunStep | RunCompensation):
            await self._call(saga, saga.next, fault)

    def play(self, saga: SagaRun, move: Move) -> None:
        """One move of a planned path. A ``call`` first starts or wakes the saga if it
        must; a fault its next call cannot have (the path was planned for another
        call, because real code took another turn) is dropped."""
        kind, fault = move[0], move[1]
        if kind.startswith("signal:"):
            self.signal(saga, kind.partition(":")[2], {})
        elif kind == "cancel":
            self.cancel(saga)
        elif kind == "retry":
            self._past_branches(saga)  # a group parks once its other branches are done
            self.operator_retry(saga)
        elif kind == "tick":
            if not saga.runnable:
                self.advance(saga)
        else:
            for _ in range(2):
                if saga.runnable or saga.decided.is_terminal:
                    break
                self.advance(saga)
            if len(move) > 2:  # which of a parallel group's calls in flight
                self._past_branches(saga, until=move[2])
                self.choose(saga, move[2])
            else:
                self._past_branches(saga)
            if saga.runnable:
                self.advance(saga, fault if fault in self.faults_for(saga) else Fault.OK)

    def _past_branches(self, saga: SagaRun, until: str | None = None) -> None:
        """A planned call finds other branch calls outstanding than the plan had (a
        ``ForEach`` it was planned with fewer items for): they run cleanly first, so
        the move's fault lands on the call it was planned for (``until``: that branch
        step's call; None: the saga's own next step)."""
        for _ in range(self.config.finish_limit):
            if until is not None and until in self.calls(saga):
                return
            others = [c for c in self.calls(saga) if "/" in c and c != until]
            if not others:
                return
            self.choose(saga, others[0])
            self.advance(saga)

    def cancel(self, saga: SagaRun) -> None:
        self.run(self._operator(saga, Event.cancel(self._tick()), "cancel"))
        self.run(cancel_child(self, saga))

    def operator_retry(self, saga: SagaRun) -> None:
        self.run(self._operator(saga, Event.retry(self._tick()), "retry"))

    async def _operator(self, saga: SagaRun, event: Event, kind: TraceKind) -> None:
        state = saga.decided.state
        try:
            decision = decide(self._table(saga), saga.decided, event)
        except TransitionNotAllowed:
            self._record(saga, TraceEntry(kind, state, state, refused=True))
            return
        await self._save(saga, decision.snapshot, decision.history)
        self._record(saga, TraceEntry(kind, state, decision.snapshot.state))

    async def _apply(self, saga: SagaRun, event: Event, kind: TraceKind, **trace: Any) -> None:
        """Decide an event the saga's own outstanding command produced, and save it."""
        state = saga.decided.state
        try:
            decision = decide(self._table(saga), saga.decided, event)
        except TransitionNotAllowed as err:
            self._record(saga, TraceEntry(kind, state, state, **trace))
            self._violation(saga, "engine_accepts_its_own_commands", str(err))
        await self._save(saga, decision.snapshot, decision.history)
        self._record(saga, TraceEntry(kind, state, decision.snapshot.state, **trace))

    async def _save(
        self, saga: SagaRun, snapshot: Snapshot, history: tuple[HistoryEntry, ...]
    ) -> None:
        expected = saga.decided.version
        saga.decided = await self.store.save(snapshot, history, expected_version=expected)
        self._outstanding(saga)

    def _outstanding(self, saga: SagaRun) -> None:
        commands = outstanding(self._table(saga), saga.decided)
        saga.options = commands
        saga.next = commands[0] if commands else None

    def calls(self, saga: SagaRun) -> list[str]:
        """The steps of the calls the saga has outstanding (several while a parallel
        group runs branches concurrently): which one comes back first is a choice."""
        return [c.step for c in saga.options if isinstance(c, RunStep | RunCompensation)]

    def choose(self, saga: SagaRun, step: str) -> None:
        """Make the outstanding call of ``step`` the one that happens next."""
        for command in saga.options:
            if isinstance(command, RunStep | RunCompensation) and command.step == step:
                saga.next = command
                return

    def _record(self, saga: SagaRun, entry: TraceEntry) -> None:
        saga.trace.append(entry)
        self.timeline.append((saga.number, entry))
        self._touched.add(saga.number)

    def _waits(self, saga: SagaRun, command: RunStep | RunCompensation) -> bool:
        return isinstance(command, RunStep) and isinstance(
            step_named(self._table(saga).definition, command.step), WaitFor
        )

    def signal(self, saga: SagaRun, name: str, data: dict[str, Any]) -> None:
        """Deliver a signal as ``SagaClient.signal`` does, whatever the saga is doing."""
        self.run(self._signal(saga, name, data))

    async def _signal(self, saga: SagaRun, name: str, data: dict[str, Any]) -> None:
        state = saga.decided.state
        trace: dict[str, Any] = {"label": name, "step": saga.decided.current_step}
        try:
            event = signal_event(self._table(saga), saga.decided, name, data, self._tick())
        except SignalRefused:
            self._record(saga, TraceEntry("signal", state, state, refused=True, **trace))
            return
        if event is None:
            self._record(saga, TraceEntry("signal", state, state, repeated=True, **trace))
            return
        await self._apply(saga, event, "signal", **trace)

    async def _call(self, saga: SagaRun, command: RunStep | RunCompensation, fault: Fault) -> None:
        if command.step in self._table(saga).child_steps:
            await children_call(self, saga, command, fault)
            return
        if self._waits(saga, command):
            # Nothing came: time passes until the wait's deadline.
            assert command.deadline is not None  # a wait always has one
            self._wait_until(command.deadline)
            event = outcome_event(command, "timed_out", self.clock.now())
            await self._apply(saga, event, "deadline", step=command.step)
            return
        if command.request_id is not None:
            await self._remote(saga, command, fault)
            return
        compensation = isinstance(command, RunCompensation)
        phase: TraceKind = "compensation" if compensation else "step"
        step = step_named(self._table(saga).definition, command.step)
        fn, policy = callee(step, command)
        state = saga.decided.state
        at = self._tick()
        trace: dict[str, Any] = {
            "label": _label(step, compensation)
            if "/" not in command.step
            else (f"undo {command.step}" if compensation else command.step),
            "step": command.step,
            "attempt": command.attempt,
            "idempotency_key": command.idempotency_key,
            "fault": fault,
        }
        if fault is Fault.CRASH_BEFORE:
            self._record(saga, TraceEntry(phase, state, state, **trace))
            return
        if command.deadline is not None and at >= command.deadline:
            # As the orchestrator does after a takeover: no time left, no call.
            trace["deadline_passed"] = True
            # Whatever fault was drawn, the call never happened: nothing crashed around it.
            trace["fault"] = Fault.OK
            await self._apply(saga, outcome_event(command, "timed_out", at), phase, **trace)
            return
        if fault.calls:
            saga.seen_keys.add(command.idempotency_key)
        if fault is Fault.OK and step.transactional and not self.config.simulate:
            await self._transact(saga, command, fn, policy, at, trace)
            return
        if fault.calls and not self.config.simulate:
            trace.update(await self._invoke(saga.decided, command, fn))
            trace["called"] = True
        if fault is Fault.CRASH_AFTER:
            self._record(saga, TraceEntry(phase, state, state, **trace))
            return
        if fault is Fault.PERMANENT:
            event = outcome_event(command, "failed", at, error=REFUSED)
        elif fault is Fault.TRANSIENT:
            event = outcome_event(command, "failed", at, error=REPLY_LOST)
        elif fault is Fault.LOST:
            event = outcome_event(command, "failed", at, error=REQUEST_LOST)
        elif fault is Fault.TIMEOUT:
            assert command.deadline is not None
            self._wait_until(command.deadline)
            event = outcome_event(command, "timed_out", self.clock.now())
        else:
            returned, raised = trace.get("returned"), trace.get("raised")
            event = call_outcome(command, policy, at, returned=returned, raised=raised)
        await self._apply(saga, event, phase, **trace)

    async def _transact(
        self,
        saga: SagaRun,
        command: RunStep | RunCompensation,
        fn: Action,
        policy: RetryPolicy,
        at: datetime,
        trace: dict[str, Any],
    ) -> None:
        """A transactional call as the executor makes it: the function and the saved
        outcome in one transaction of the store; a failure rolled back, then saved."""
        store = self.store
        assert isinstance(store, TransactionalStore)  # checked when the driver opened
        before = saga.decided
        trace["called"] = True
        decided: list[Decision] = []

        def write(returned: Any) -> Write:
            trace.update(returned=returned, problem=result_problem(returned))
            event = call_outcome(command, policy, at, returned=returned)
            if event.error is not None:
                raise Rolled(event)
            decided.append(decide(self._table(saga), before, event))
            return (
                decided[-1].snapshot.with_version(before.version + 1),
                decided[-1].history,
                before.version,
                (),  # remote commands travel by the driver's own wire (see _remote)
            )

        try:
            saga.decided = await store.transact(calling(fn, step_context(before, command)), write)
        except ActionRaised as raised:
            trace["raised"] = raised.error
            failed = call_outcome(command, policy, at, raised=raised.error)
            await self._apply(saga, failed, trace_kind(command), **trace)
            return
        except Rolled as rolled:
            await self._apply(saga, rolled.event, trace_kind(command), **trace)
            return
        self._outstanding(saga)
        self._record(
            saga, TraceEntry(trace_kind(command), before.state, saga.decided.state, **trace)
        )

    # -- remote steps (see saga_fsm.testing._remote for the faults on the wire) ------------
    async def _remote(
        self, saga: SagaRun, command: RunStep | RunCompensation, fault: Fault
    ) -> None:
        compensation = isinstance(command, RunCompensation)
        phase: TraceKind = "compensation" if compensation else "step"
        step = step_named(self._table(saga).definition, command.step)
        label = f"undo {step.name}" if compensation else step.name
        state = saga.decided.state
        at = self._tick()
        trace: dict[str, Any] = {
            "label": label,
            "step": command.step,
            "attempt": command.attempt,
            "idempotency_key": command.idempotency_key,
            "fault": fault,
        }
        if fault is Fault.CRASH_BEFORE:
            self._record(saga, TraceEntry(phase, state, state, **trace))
            return
        assert command.deadline is not None  # a remote call always has one
        if at >= command.deadline:
            trace["deadline_passed"] = True
            # Whatever fault was drawn, the call never happened: nothing crashed around it.
            trace["fault"] = Fault.OK
            await self._apply(saga, outcome_event(command, "timed_out", at), phase, **trace)
            return
        message = command_message(self._table(saga), saga.decided, command)
        reply: Message | None = None
        if fault is Fault.PERMANENT:
            reply = refusal(message)
        elif fault is Fault.LOST:
            saga.late.append((label, message))
        else:
            saga.seen_keys.add(command.idempotency_key)
            reply, trace["called"], crashed = await self.participants.deliver(message)
            if reply is not None:
                trace["returned"], trace["raised"] = raised_of(reply)
            elif crashed is not None:
                trace["raised"] = crashed
        if fault is Fault.TIMEOUT and reply is not None:
            saga.late.append((label, reply))
        if reply is None or fault in (Fault.TRANSIENT, Fault.TIMEOUT, Fault.LOST):
            self._wait_until(command.deadline)
            event = outcome_event(command, "timed_out", self.clock.now())
            await self._apply(saga, event, phase, **trace)
            return
        await self._apply(saga, reply_event(saga.decided, reply, at), phase, **trace)
        if fault is Fault.CRASH_AFTER:
            await self._arrive(saga, label, reply, phase)

    async def _arrive_late(self, saga: SagaRun, late: list[tuple[str, Message]]) -> None:
        for label, message in late:
            phase: TraceKind = (
                "step" if ":compensate:" not in str(message.headers.request_id) else "compensation"
            )
            if message.kind.value == "command":
                reply, ran, crashed = await self.participants.deliver(message)
                state = saga.decided.state
                returned, raised = raised_of(reply) if reply is not None else (None, crashed)
                self._record(
                    saga,
                    TraceEntry(
                        phase,
                        state,
                        state,
                        label=label,
                        step=message.headers.step,
                        attempt=message.headers.attempt,
                        idempotency_key=message.headers.idempotency_key,
                        fault=Fault.LOST,
                        called=ran,
                        returned=returned,
                        raised=raised,
                        late="command arrived late" + (", ran" if ran else ", not run"),
                    ),
                )
                if reply is not None:
                    await self._arrive(saga, label, reply, phase)
            else:
                await self._arrive(saga, label, message, phase)

    async def _arrive(self, saga: SagaRun, label: str, reply: Message, phase: TraceKind) -> None:
        """A reply arriving outside its own move: applied only if it is current, as a
        worker does; a stale one must change nothing."""
        state = saga.decided.state
        why = stale_reason(saga.decided, reply)
        note = f"reply (attempt {reply.headers.attempt}) "
        if why is not None:
            self._record(saga, TraceEntry("wake", state, state, label=label, late=note + "dropped"))
            return
        event = reply_event(saga.decided, reply, self._tick())
        await self._apply(saga, event, "wake", label=label, late=note + "applied")

    async def _invoke(
        self, snapshot: Snapshot, command: RunStep | RunCompensation, fn: Action
    ) -> dict[str, Any]:
        """Call the real function as the orchestrator does; what it returned or raised."""
        found = branch_call(self.compiled, snapshot, command.step)
        if found is not None:  # a branch step sees its branch's data, as in production
            snapshot = replace(snapshot, data=dict(found[1]))
        ctx = step_context(snapshot, command)
        try:
            async with asyncio.timeout(self.config.call_timeout) as limit:
                returned = await invoke(fn, ctx)
        except TimeoutError as err:
            if limit.expired():
                self._hung = True
                limit_s = self.config.call_timeout
                return {"raised": CallDidNotReturn(f"no answer within {limit_s}s of real time")}
            return {"raised": err}
        except Exception as err:
            return {"raised": err}
        return {"returned": returned, "problem": result_problem(returned)}

    # -- the end of an example ------------------------------------------------------------
    def finish_all(self) -> None:
        """Drive every live saga to a final state with no faults; one that cannot get
        there is stuck (say, an action after the pivot that always refuses)."""
        for saga in self.live():
            for _ in range(self.config.finish_limit):
                if saga.decided.is_terminal:
                    break
                self.advance(saga)
                self.check(final=False, sagas=[saga])
            if not saga.decided.is_terminal:
                self._violation(
                    saga,
                    "finishes_once_faults_stop",
                    f"still at {saga.decided.state!r} after {self.config.finish_limit}"
                    " events with no fault injected",
                )

    # -- invariants -----------------------------------------------------------------------
    def context(self, saga: SagaRun, *, final: bool) -> InvariantContext:
        """The saga as the store holds it now, with its history and the trace."""

        async def read() -> tuple[Snapshot, list[HistoryEntry]]:
            return await self.store.load(saga.saga_id), await self.store.history(saga.saga_id)

        snapshot, history = self.run(read())
        return InvariantContext(
            definition=self._table(saga).definition,
            saga_id=saga.saga_id,
            snapshot=snapshot,
            decided=saga.decided,
            history=tuple(history),
            trace=tuple(saga.trace),
            world=self.world,
            final=final,
            number=saga.number,
        )

    def check(self, *, final: bool, sagas: list[SagaRun] | None = None) -> None:
        """Every invariant, built-in first; raises the first violation. Without
        ``sagas``: after a rule, the sagas that rule touched; at the end, all of them."""
        invariants = (
            *(BUILTIN_INVARIANTS if self.config.builtin_invariants else ()),
            *self.config.invariants,
        )
        if sagas is None:
            everyone = [*self.sagas, *self.children.values()]
            sagas = everyone if final else [s for s in everyone if s.number in self._touched]
        self._touched.difference_update(s.number for s in sagas)
        for saga in sagas:
            ctx = self.context(saga, final=final)
            for invariant in invariants:
                reason = invariant.violation(ctx)
                if reason is not None:
                    self._violation(saga, invariant.name, reason)

    def _violation(self, saga: SagaRun, invariant: str, reason: str) -> NoReturn:
        self.broken = True
        others = render_interleaving(self.timeline) if len(self.sagas) > 1 else ""
        raise InvariantViolation(
            invariant, reason, path=render_path(saga.trace), saga=saga.number, others=others
        )


def render_interleaving(timeline: list[tuple[int, TraceEntry]]) -> str:
    """Several sagas' events in the order they happened: ``[1] reserve ok -> [2] ...``."""
    words = [f"[{n}] {w}" for n, e in timeline if (w := e.describe())]
    return " -> ".join(words)

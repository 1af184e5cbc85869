"""What a worker runs: leases a saga, asks the core what to do, persists each
transition, then acts. Recovery is the same loop: load, decide again, act."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from saga_fsm._client import chosen, new_saga
from saga_fsm._clock import Clock, SystemClock, seconds
from saga_fsm._core import (
    Command,
    Decision,
    Event,
    Finish,
    RunCompensation,
    RunStep,
    ScheduleWake,
    decide,
    outcome_event,
    outstanding,
    signal_event,
    waiting_for,
)
from saga_fsm._core import idempotency_key as key_of
from saga_fsm._definition import SagaDefinition, Step
from saga_fsm._errors import (
    ConcurrencyConflict,
    InvalidArgument,
    SagaError,
    SagaLeased,
    SagaNotFound,
    SignalRefused,
    TransitionNotAllowed,
    UnknownDefinition,
)
from saga_fsm._fanout import fan_out
from saga_fsm._flow import PENDING, CompiledSaga
from saga_fsm._invoke import (
    STILL_RUNNING,
    call_outcome,
    callee,
    invoke,
    settle_late_calls,
    step_context,
)
from saga_fsm._logging import bind_saga, bind_step, get_logger, unbind
from saga_fsm._nesting import ChildWait, act_on_child, check_children, notify_parent
from saga_fsm._parallel import branch_call, group_at
from saga_fsm._registry import Definitions, registry
from saga_fsm._remote import (
    DEFAULT_REPLY_CHANNEL,
    remote_commands,
    reply_event,
    signal_of,
    stale_reason,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot, replace
from saga_fsm._transactional import Applied, require_transactions, transact
from saga_fsm.messaging._envelope import Message, MessageKind, check_channel
from saga_fsm.observability._observer import NO_OBSERVER, Observer
from saga_fsm.stores._outbox import OutboxMessage, OutboxStore
from saga_fsm.stores._protocol import Lease, SagaStore

log = get_logger("saga_fsm")

_CONFLICT_RETRIES = 5
DEFAULT_LEASE_SECONDS = 30.0
_HAND_BACK_WAIT = 1.0  # seconds a reply waits for this process to hand its saga back


class _LeaseLost(Exception):
    """Another writer took the saga: this worker must stop driving it."""

    def __init__(self, snapshot: Snapshot, lease: Lease | None) -> None:
        self.snapshot = snapshot
        self.lease = lease


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SagaExecutor:
    """Drives saga instances of the registered definitions against one store.

    Steps run at least once: a step is persisted as ``running`` (attempt number and
    idempotency key) before its action is called, and a crash before the result is
    persisted means the action runs again with the same key. State transitions happen
    exactly once. Participants deduplicate on ``StepContext.idempotency_key``.

    While it drives a saga the orchestrator holds the saga's lease (``worker_id``, renewed
    every third of ``lease_seconds``); a saga whose lease expired is taken over by any
    worker, and every takeover bumps the version so the old holder can no longer write.
    """

    def __init__(
        self,
        store: SagaStore,
        definitions: Definitions | Iterable[SagaDefinition] = (),
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        observer: Observer = NO_OBSERVER,
        reply_channel: str = DEFAULT_REPLY_CHANNEL,
    ) -> None:
        seconds("lease_seconds", lease_seconds)
        self.store = store
        self.reply_channel = check_channel(reply_channel)
        self.reply_counts: Counter[str] = Counter()
        # Set whenever this executor wrote outbox rows: an in-process relay publishes
        # them at once instead of at its next poll.
        self.outbox_written = asyncio.Event()
        self._leaving: dict[str, asyncio.Event] = {}
        self.clock: Clock = clock or SystemClock()
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.definitions = registry(definitions)
        self.observer = observer  # tracing, metrics, alerts: see saga_fsm.observability
        self._checked: set[tuple[str, int]] = set()  # definitions this store can run
        self._leases = _LeaseKeeper(self)
        self._child_waits: dict[str, ChildWait] = {}  # parents handed back for a child

    @property
    def served(self) -> tuple[tuple[str, int], ...]:
        """The (name, version) of every registered definition."""
        return self.definitions.served

    @property
    def claimable(self) -> tuple[tuple[str, int, str], ...]:
        """(name, version, fingerprint) of every registered definition: what a worker
        claims (never a saga pinned to another table)."""
        return self.definitions.claimable

    # -- public operations ----------------------------------------------------------------
    async def run(
        self,
        definition: SagaDefinition | str,
        data: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        saga_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        definition_ref: str | None = None,
    ) -> Snapshot:
        """Start an instance and drive it here until it is finished, parked, or waiting
        for a remote step's reply (which a ``Worker`` with a transport applies).
        ``definition`` may be a registered name: its newest version, or ``version``."""
        definition = chosen(self.definitions, definition, version)
        compiled = self.definitions.register(definition)
        self._check(compiled)
        snapshot = new_saga(
            self.definitions,
            self.clock,
            definition,
            data,
            saga_id,
            correlation_id,
            idempotency_key,
            self.observer,
        )
        if definition_ref is not None:
            snapshot = replace(snapshot, definition_ref=definition_ref)
        # The start transition is decided before the first write and persisted with it,
        # created already leased to us (no worker races this process for it): one write
        # instead of create + save. The row goes straight to "running" with its first
        # step marked running, which is what a separate start save would have stored.
        decision = decide(compiled, snapshot, Event.start(snapshot.created_at))
        outbox = remote_commands(compiled, decision.snapshot, decision.commands, self.reply_channel)
        if outbox:
            stored, created = await self.outbox_store().create(
                decision.snapshot, decision.history, lease=self._lease(), outbox=outbox
            )
            self.outbox_written.set()
        else:
            stored, created = await self.store.create(
                decision.snapshot, decision.history, lease=self._lease()
            )
        if not created:
            return await self.resume(stored.saga_id)
        self.observer.created(stored)
        self.observer.transitioned(snapshot, stored, decision.history)
        # What comes next is read back from the stored snapshot, as after a crash.
        return await self.drive(stored)

    async def resume(self, saga_id: str) -> Snapshot:
        """Take the saga's lease (``SagaLeased`` if a live worker holds it) and drive it
        from its last snapshot until it is finished or parked, waiting out back-offs."""
        snapshot = await self.store.acquire(
            saga_id, self.worker_id, now=self.clock.now(), lease_seconds=self.lease_seconds
        )
        try:
            self.definitions.compiled_for(snapshot)
        except UnknownDefinition:
            # Not ours to drive: leave it to a worker that serves its definition.
            await self.store.release(saga_id, self.worker_id)
            raise
        self.observer.claimed(snapshot)
        return await self.drive(snapshot)

    async def drive(
        self, snapshot: Snapshot, *, max_hold: float = float("inf"), event: Event | None = None
    ) -> Snapshot:
        """Drive a saga whose lease this orchestrator holds, from ``event`` (a reply)
        if given. A retry back-off longer than ``max_hold`` seconds is not waited out
        here: the wake-up time is stored, the lease released, and whichever worker is
        free then picks the saga up; so is a remote step's wait for its reply.

        A saga that waits for its child saga is handed back first; then the child is
        driven here (when no other worker has it), and a finished child's outcome is
        applied to its parent, which goes on here: the parent's snapshot is returned."""
        try:
            driven = await self._drive(snapshot, max_hold=max_hold, event=event)
        finally:
            # Only this drive's: a wait left by a drive that raised is never acted on later.
            wait = self._child_waits.pop(snapshot.saga_id, None)
        if wait is not None and wait.child is not None:
            await self.drive(wait.child, max_hold=max_hold, event=wait.child_event)
            with contextlib.suppress(SagaError):
                driven = await self.store.load(driven.saga_id)
        if driven.parent_id is not None and driven.is_terminal:
            await notify_parent(self, driven, max_hold)
        return driven

    async def _drive(self, snapshot: Snapshot, *, max_hold: float, event: Event | None) -> Snapshot:
        try:
            compiled = self.definitions.compiled_for(snapshot)
        except UnknownDefinition:
            # Never run on another table: handed back untouched for a worker that has it.
            with contextlib.suppress(SagaError):
                await self.store.release(snapshot.saga_id, self.worker_id)
            raise
        self._check(compiled)
        self._leases.hold(snapshot.saga_id)
        context = bind_saga(
            snapshot.saga_id,
            snapshot.correlation_id,
            definition=snapshot.definition,
            traceparent=snapshot.traceparent,
        )
        try:
            if event is not None:
                snapshot, commands = await self._apply(compiled, snapshot, event, max_hold)
            elif snapshot.state == PENDING:
                snapshot, commands = await self._apply(
                    compiled, snapshot, Event.start(self.clock.now()), max_hold
                )
            else:
                commands = outstanding(compiled, snapshot)
            while True:
                outcome = await self._act(compiled, snapshot, commands, max_hold)
                if outcome is None:
                    return snapshot
                if isinstance(outcome, tuple):  # a transactional step saved its own outcome
                    snapshot, commands = outcome
                    continue
                if outcome.step is not None:
                    self.observer.attempt_finished(snapshot, outcome)
                snapshot, commands = await self._apply(compiled, snapshot, outcome, max_hold)
        except _LeaseLost as lost:
            self.observer.lease_lost(lost.snapshot)
            owner = lost.lease.owner if lost.lease else None
            log.warning("saga %s: lease lost to %s", snapshot.saga_id, owner)
            snapshot = lost.snapshot
            return snapshot
        finally:
            unbind(context)
            saga_id = snapshot.saga_id
            # A reply for this saga waits until the lease is given back (see apply_reply).
            leaving = self._leaving.setdefault(saga_id, asyncio.Event())
            try:
                held = self._leases.drop(saga_id)
                if held:
                    # Interrupted (shutdown, store outage) or handed back to wait for a
                    # timer or a reply: let another worker take over as soon as the saga
                    # is due. (A write that finished the saga dropped the lease already.)
                    with contextlib.suppress(SagaError):
                        await self.store.release(saga_id, self.worker_id)
            finally:
                if saga_id not in self._leases.held:
                    self._leaving.pop(saga_id, None)
                    leaving.set()

    async def apply_reply(self, reply: Message) -> str:
        """Apply a participant's reply (or a signal message, see ``signal_message``) to
        the saga it names and drive the saga on from there. Returns what became of it:
        ``"applied"``; ``"stale"`` (an earlier attempt's, a finished or unknown saga's,
        a signal taken before: dropped, never applied); ``"refused"`` (a signal the saga
        cannot take: ``SignalRefused`` says why); ``"busy"`` (a worker holds the saga's
        lease: deliver it again shortly); ``"foreign"`` (a definition this executor does
        not serve: for another worker). A payload that is not a reply (or not a signal)
        raises ``MessageDecodeError``."""
        signal = signal_of(reply) if reply.kind is MessageKind.EVENT else None
        saga_id = reply.headers.saga_id
        if saga_id is None or (signal is None and reply.headers.request_id is None):
            return self._dropped(reply, "it names no saga or request")
        if saga_id in self._leases.held or saga_id in self._leaving:
            # Driven here right now (most often: it just sent the command this answers
            # and is handing the saga back): wait for that, briefly.
            leaving = self._leaving.setdefault(saga_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leaving.wait(), _HAND_BACK_WAIT)
            if saga_id in self._leases.held or saga_id in self._leaving:
                return "busy"
        try:
            snapshot = await self.store.load(saga_id)
        except SagaNotFound:
            return self._dropped(reply, "no such saga")
        why = None if signal is not None else stale_reason(snapshot, reply)
        if why is not None:
            return self._dropped(reply, why)
        try:
            compiled = self.definitions.compiled_for(snapshot)
        except UnknownDefinition:
            return "foreign"  # a worker that serves its definition takes it
        if signal is None and waiting_for(compiled, snapshot) is not None:
            return self._dropped(reply, "the saga waits for a signal, not a reply")
        try:
            snapshot = await self.store.acquire(
                saga_id, self.worker_id, now=self.clock.now(), lease_seconds=self.lease_seconds
            )
        except SagaLeased:
            return "busy"
        try:
            if signal is not None:
                event = signal_event(compiled, snapshot, *signal, self.clock.now())
                why = None if event is not None else "a signal taken before"
            else:
                why = stale_reason(snapshot, reply)
                event = None if why is not None else reply_event(snapshot, reply, self.clock.now())
        except SignalRefused:
            await self._let_go(saga_id)
            raise
        except SagaError:
            await self._let_go(saga_id)  # not a reply: a poison message, not the saga's
            raise
        if event is None:
            await self._let_go(saga_id)
            return self._dropped(reply, str(why))
        self.reply_counts["applied"] += 1
        self.observer.claimed(snapshot)
        if signal is None:
            self.observer.attempt_finished(snapshot, event)
        await self.drive(snapshot, event=event)
        return "applied"

    async def _let_go(self, saga_id: str) -> None:
        with contextlib.suppress(SagaError):
            await self.store.release(saga_id, self.worker_id)

    def _dropped(self, reply: Message, why: str) -> str:
        self.reply_counts["stale"] += 1
        self.observer.reply_dropped(reply, why)
        log.info("reply %s for saga %s dropped: %s", reply.message_id, reply.headers.saga_id, why)
        return "stale"

    # -- internals ------------------------------------------------------------------------
    def _check(self, compiled: CompiledSaga) -> None:
        key = (compiled.definition.name, compiled.definition.version)
        if key not in self._checked:
            require_transactions(self.store, compiled.definition)
            check_children(self.definitions, compiled.definition)
            self._checked.add(key)

    def outbox_store(self) -> OutboxStore:
        if not isinstance(self.store, OutboxStore):
            raise InvalidArgument(
                f"{self.store!r} has no outbox: remote steps need a store with one"
                " (memory, SQLite or PostgreSQL)"
            )
        return self.store

    async def _save(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry],
        expected_version: int,
        outbox: Sequence[OutboxMessage],
    ) -> Snapshot:
        if outbox:
            saved = await self.outbox_store().save(
                snapshot, history, expected_version=expected_version, outbox=outbox
            )
            self.outbox_written.set()
            return saved
        return await self.store.save(snapshot, history, expected_version=expected_version)

    def _lease_expiry(self) -> Any:
        return self.clock.now() + timedelta(seconds=self.lease_seconds)

    def _lease(self) -> Lease:
        return Lease(self.worker_id, self._lease_expiry())

    async def _apply(
        self, compiled: CompiledSaga, snapshot: Snapshot, event: Event, max_hold: float
    ) -> tuple[Snapshot, tuple[Command, ...]]:
        """Decide and persist (the store keeps the lease, and drops it once the saga is
        no longer due); on a lost race, load the winner's snapshot and decide again if
        the lease (the store's column) is still ours."""
        for _ in range(_CONFLICT_RETRIES):
            decision = decide(compiled, snapshot, event)
            release = self._releases(decision, max_hold)
            # Written at the version the store gives it, so the store has no copy to make.
            decided = decision.snapshot.with_version(snapshot.version + 1)
            outbox = remote_commands(compiled, decided, decision.commands, self.reply_channel)
            try:
                saved = await self._save(decided, decision.history, snapshot.version, outbox)
            except ConcurrencyConflict:
                snapshot = await self._reload_if_ours(snapshot.saga_id)
                try:
                    decide(compiled, snapshot, event)
                except TransitionNotAllowed:
                    # An operator's write already moved past this event: carry on.
                    return snapshot, outstanding(compiled, snapshot)
                continue
            return self._saved(snapshot, decision, saved, release)
        raise ConcurrencyConflict(snapshot.saga_id, snapshot.version, None)

    def _saved(
        self, before: Snapshot, decision: Decision, saved: Snapshot, release: bool
    ) -> tuple[Snapshot, tuple[Command, ...]]:
        if saved.due_at is None:
            self._leases.forget(before.saga_id)  # the store dropped the lease
        self.observer.transitioned(before, saved, decision.history)
        return saved, () if release and not saved.is_terminal else decision.commands

    async def _reload_if_ours(self, saga_id: str) -> Snapshot:
        """After a lost version race: the winner's snapshot, if the lease is still ours."""
        snapshot = await self.store.load(saga_id)
        lease = await self.store.lease(saga_id)
        if lease is None or lease.owner != self.worker_id:
            raise _LeaseLost(snapshot, lease) from None
        return snapshot

    def _releases(self, decision: Decision, max_hold: float) -> bool:
        """Whether the lease goes with this decision: finished, or a long back-off."""
        return decision.snapshot.is_terminal or any(
            isinstance(c, ScheduleWake)
            and (c.hand_back or (c.at - self.clock.now()).total_seconds() > max_hold)
            for c in decision.commands
        )

    async def _act(
        self,
        compiled: CompiledSaga,
        snapshot: Snapshot,
        commands: tuple[Command, ...],
        max_hold: float,
        *,
        branch: bool = False,
    ) -> Event | Applied | None:
        """Carry out the commands; the event they end in, or None when the saga is
        finished or handed back (a transactional step: what it saved with its outcome).
        One frame for the whole call: every saga in flight keeps its awaiting frames
        alive, so they are kept few. (``branch``: one call of a parallel group's
        branch, made by ``fan_out``.)"""
        if not branch and group_at(compiled, snapshot.state) is not None:
            # A parallel group: its branches' calls run concurrently.
            if not commands:
                return None
            return await fan_out(self, compiled, snapshot, commands, max_hold)
        for command in commands:
            if isinstance(command, Finish):
                return None
            if isinstance(command, ScheduleWake):
                delay = (command.at - self.clock.now()).total_seconds()
                if delay > max_hold:
                    return None
                await self.clock.sleep(delay)
                return Event.retry_due(self.clock.now())
            if not isinstance(command, RunStep | RunCompensation):
                continue
            if compiled.child_steps and command.step in compiled.child_steps:
                waits = await act_on_child(self, compiled, snapshot, command)
                if isinstance(waits, ChildWait):
                    self._child_waits[snapshot.saga_id] = waits
                    return waits.event  # None: handed back as it is
                return waits
            if command.request_id is not None:
                # A remote call: its command is in the outbox. Its reply comes by message
                # to any worker; until then nobody holds the saga, unless its deadline
                # already passed, which is a timeout.
                if command.deadline is not None and command.deadline <= self.clock.now():
                    log.warning("saga %s: no reply from %s in time", snapshot.saga_id, command.step)
                    return outcome_event(command, "timed_out", self.clock.now())
                return None
            step, seen = self._callee_step(compiled, snapshot, command)
            fn, policy = callee(step, command)
            phase = "compensation" if isinstance(command, RunCompensation) else "step"
            bind_step(command.step, command.attempt)
            self.observer.attempt_started(snapshot, command)
            log.debug("%s %s: attempt %d", phase, command.step, command.attempt)
            if isinstance(command, RunCompensation) and not await settle_late_calls(
                key_of(snapshot.saga_id, command.step), step.timeout or 0.0
            ):
                # The action's thread outlived its deadline and a grace as long again:
                # undoing now could come before its effect. An operator decides.
                log.warning("saga %s: action %s still running", snapshot.saga_id, command.step)
                return outcome_event(command, "failed", self.clock.now(), error=STILL_RUNNING)
            ctx = step_context(seen, command)
            # The deadline is stored: after a takeover only the time left is granted,
            # and a step whose deadline passed while no worker watched it has timed out.
            timeout = None
            if command.deadline is not None:
                timeout = (command.deadline - self.clock.now()).total_seconds()
                if timeout <= 0:
                    return outcome_event(command, "timed_out", self.clock.now())
            if step.transactional:
                return await transact(self, compiled, snapshot, command, fn, policy, max_hold)
            deadline = None
            try:
                if timeout is None:
                    result = await invoke(fn, ctx)
                else:
                    async with asyncio.timeout(timeout) as deadline:
                        result = await invoke(fn, ctx)
            except Exception as err:
                if isinstance(err, TimeoutError) and deadline is not None and deadline.expired():
                    log.warning("saga %s: %s %s timed out", snapshot.saga_id, phase, command.step)
                    return outcome_event(command, "timed_out", self.clock.now())
                log.debug("%s %s raised %r", phase, command.step, err)
                return call_outcome(command, policy, self.clock.now(), raised=err)
            event = call_outcome(command, policy, self.clock.now(), returned=result)
            if event.error is not None:
                log.warning("%s %s: invalid result: %s", phase, command.step, event.error.message)
            else:
                log.debug("%s %s succeeded", phase, command.step)
            return event
        return None

    @staticmethod
    def _callee_step(
        compiled: CompiledSaga, snapshot: Snapshot, command: RunStep | RunCompensation
    ) -> tuple[Step, Snapshot]:
        """The step a command calls, and the snapshot its context is made from (a
        branch step of a parallel group sees its branch's data: see branch_call)."""
        if "/" in command.step:
            found = branch_call(compiled, snapshot, command.step)
            if found is not None:
                step, data = found
                return step, replace(snapshot, data=dict(data))
        return compiled.definition.steps[compiled.step_index[command.step]], snapshot


class _LeaseKeeper:
    """Renews the leases an orchestrator holds: one task for all the sagas it drives,
    each renewed every third of ``lease_seconds`` (a save leaves the lease as it is),
    instead of a task per saga, which cost time to start and stop and memory while it slept."""

    def __init__(self, orchestrator: SagaExecutor) -> None:
        self._orchestrator = orchestrator
        self._held: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, saga_id: str) -> None:
        self._held[saga_id] = self._held.get(saga_id, 0) + 1
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    def drop(self, saga_id: str) -> bool:
        """Stop renewing it for one driver; whether the lease was still held then."""
        count = self._held.pop(saga_id, 0)
        if count > 1:
            self._held[saga_id] = count - 1
        return count > 0

    @property
    def held(self) -> set[str] | dict[str, int]:
        """The sagas driven here right now."""
        return self._held

    def forget(self, saga_id: str) -> None:
        """The lease was released by a write: stop renewing it now, not at ``drop``."""
        self._held.pop(saga_id, None)

    async def _renew_forever(self) -> None:
        orchestrator = self._orchestrator
        while self._held:
            await asyncio.sleep(orchestrator.lease_seconds / 3)
            # All of them in one call (the store batches them): a worker with thousands
            # of sagas in flight must not spend the lease renewing them one by one.
            wanted = list(self._held)
            try:
                held = await orchestrator.store.renew_leases(
                    wanted, orchestrator.worker_id, expires_at=orchestrator._lease_expiry()
                )
            except SagaError as err:
                log.warning("lease renewal of %d sagas failed: %s", len(wanted), err)
                continue
            for saga_id in wanted:
                if saga_id not in held and saga_id in self._held:
                    # Its writes will now fail and the drive loop stops; stop renewing.
                    log.warning(
                        "saga %s: lease no longer held by %s", saga_id, orchestrator.worker_id
                    )
                    del self._held[saga_id]

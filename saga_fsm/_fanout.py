"""Running a parallel group's calls concurrently, for the executor.

A decision at a group may start several calls at once (one per branch ready to go).
They run as tasks; each outcome is applied as its own event, one at a time (the saga
has one writer: this driver, holding its lease, saving at the optimistic version), and
the calls that decision starts join the ones in flight. A branch's retry back-off is a
timer task among them. The group is left, with no call in flight, by the decision that
moves the saga past it; the executor's ordinary loop goes on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from saga_fsm._core import (
    Command,
    Event,
    Finish,
    RunCompensation,
    RunStep,
    ScheduleWake,
    outstanding,
)
from saga_fsm._errors import TransitionNotAllowed
from saga_fsm._flow import CompiledSaga
from saga_fsm._snapshot import Snapshot

if TYPE_CHECKING:
    from saga_fsm._executor import SagaExecutor
    from saga_fsm._transactional import Applied


async def fan_out(
    executor: SagaExecutor,
    compiled: CompiledSaga,
    snapshot: Snapshot,
    commands: tuple[Command, ...],
    max_hold: float,
) -> Event | Applied | None:
    """Drive the group the saga is at until it is left (the saved snapshot and what
    comes next, for the executor's loop), or handed back (None: a back-off longer than
    ``max_hold`` with nothing in flight)."""
    from saga_fsm._parallel import group_at, waits_for_reply

    calls: dict[asyncio.Future[Any], RunStep | RunCompensation] = {}
    timer: asyncio.Future[Any] | None = None
    wake: datetime | None = None
    clock = executor.clock

    async def call(command: RunStep | RunCompensation, seen: Snapshot) -> object:
        return await executor._act(compiled, seen, (command,), max_hold, branch=True)

    try:
        while True:
            finished = False
            scheduled: datetime | None = None
            for command in commands:
                if isinstance(command, Finish):
                    finished = True
                elif isinstance(command, ScheduleWake):
                    scheduled = command.at
                elif isinstance(command, RunStep | RunCompensation):
                    if command.request_id is not None:
                        continue  # a remote call: its command is in the outbox
                    calls[asyncio.ensure_future(call(command, snapshot))] = command
            if finished:
                return None
            # While calls run, a branch's back-off is the snapshot's wake-up time; with
            # none in flight the group schedules it (the lease goes if it is far off).
            wanted = snapshot.wake_at if calls else scheduled
            if (
                not calls
                and (wanted is None or wanted > clock.now())
                and waits_for_reply(compiled, snapshot)
            ):
                # Only replies are awaited: nobody holds the saga until one comes (to
                # any worker) or the earliest deadline, when it is due again.
                return snapshot, ()
            if wanted != wake and timer is not None:
                timer.cancel()
                timer = None
            wake = wanted
            if wake is not None and timer is None:
                delay = (wake - clock.now()).total_seconds()
                if not calls and delay > max_hold:
                    return snapshot, ()
                timer = asyncio.ensure_future(clock.sleep(max(0.0, delay)))
            if not calls and timer is None:
                return snapshot, ()
            waiting: set[asyncio.Future[Any]] = set(calls)
            if timer is not None:
                waiting.add(timer)
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            commands = ()
            events: list[Event] = []
            for finished_call in done:
                if finished_call is timer:
                    timer, wake = None, None
                    events.append(Event.retry_due(clock.now()))
                    continue
                command = calls.pop(finished_call)
                outcome = finished_call.result()
                if outcome is None:
                    continue
                assert isinstance(outcome, Event), f"unexpected outcome of {command.step}"
                executor.observer.attempt_finished(snapshot, outcome)
                events.append(outcome)
            # A timer's wake-up last: outcomes in hand may change what is due.
            events.sort(key=lambda e: e.trigger == "retry_due")
            for event in events:
                try:
                    snapshot, decided = await executor._apply(compiled, snapshot, event, max_hold)
                except TransitionNotAllowed:
                    if event.trigger != "retry_due":
                        raise
                    continue  # the branch it was for moved on meanwhile
                commands = (*commands, *decided)
                if group_at(compiled, snapshot.state) is None:
                    return snapshot, commands  # (no call is left in flight by then)
            commands = (*commands, *_missing(compiled, snapshot, calls.values(), commands))
    finally:
        for pending in calls:
            pending.cancel()
        if timer is not None:
            timer.cancel()
        for pending in list(calls):
            with contextlib.suppress(BaseException):
                await pending


def _missing(
    compiled: CompiledSaga,
    snapshot: Snapshot,
    running: Iterable[RunStep | RunCompensation],
    decided: Iterable[Command],
) -> list[Command]:
    """Calls the snapshot says are due that are neither running here nor just decided:
    those an operator's write decided (a cancel saved between two of ours, which this
    driver took in when its save lost the race)."""
    calls = [c for c in (*running, *decided) if isinstance(c, RunStep | RunCompensation)]
    known = {(type(c), c.step, c.attempt) for c in calls}
    return [
        c
        for c in outstanding(compiled, snapshot)
        if isinstance(c, RunStep | RunCompensation)
        and c.request_id is None
        and (type(c), c.step, c.attempt) not in known
    ]

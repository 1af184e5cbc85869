"""Calling a user's action or compensation, shared by the orchestrator and by
``saga_fsm.testing``: a property test must call actions exactly as production does, so
there is one copy of how a function is called and how its outcome is judged."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from saga_fsm._codec import data_problem
from saga_fsm._core import INVALID_RESULT, Event, RunCompensation, RunStep, outcome_event
from saga_fsm._definition import Action, RetryPolicy, Step, StepContext
from saga_fsm._errors import StepFailed
from saga_fsm._snapshot import ErrorInfo, Snapshot


def callee(step: Step, command: RunStep | RunCompensation) -> tuple[Action, RetryPolicy]:
    """What ``command`` calls, and the policy that judges its failures."""
    if isinstance(command, RunCompensation):
        fn, policy = step.compensation, step.compensation_retry
    else:
        fn, policy = step.action, step.retry
    assert fn is not None  # the flow issues no RunCompensation for a step without one
    return fn, policy


def step_context(snapshot: Snapshot, command: RunStep | RunCompensation) -> StepContext:
    """What the called function sees: the saga's data read-only, the attempt's key."""
    return StepContext(
        saga_id=snapshot.saga_id,
        step=command.step,
        attempt=command.attempt,
        idempotency_key=command.idempotency_key,
        correlation_id=snapshot.correlation_id,
        data=MappingProxyType(snapshot.data),
        compensating=isinstance(command, RunCompensation),
    )


def invoke(fn: Action, ctx: StepContext) -> Awaitable[Any]:
    """Call ``fn(ctx)``, for the caller to await: coroutine functions are awaited, sync
    functions run in a thread. (Not itself a coroutine, so that an async action awaits
    in its own frame only: each saga in flight keeps its chain of frames alive.)"""
    if inspect.iscoroutinefunction(fn):
        return fn(ctx)
    return _in_thread(fn, ctx)


_late_lock = threading.Lock()
_late: dict[str, list[threading.Event]] = {}
"""Idempotency key -> sync calls whose caller stopped waiting (a timeout) while their
thread still runs; each event is set when its thread returns."""


def _forget_late(key: str, done: threading.Event) -> None:
    with _late_lock:
        waiting = _late.get(key, [])
        if done in waiting:
            waiting.remove(done)
        if not waiting:
            _late.pop(key, None)


async def _in_thread(fn: Action, ctx: StepContext) -> Any:
    # Sync actions run in a thread so a slow one neither blocks other sagas nor escapes
    # its timeout. The thread itself cannot be killed: an abandoned one is remembered
    # until it returns, so that its compensation does not run before its effect lands.
    done = threading.Event()
    key = ctx.idempotency_key

    def call() -> Any:
        try:
            return fn(ctx)
        finally:
            done.set()
            _forget_late(key, done)

    try:
        result = await asyncio.to_thread(call)
    except asyncio.CancelledError:
        with _late_lock:
            if not done.is_set():
                _late.setdefault(key, []).append(done)
        raise
    if inspect.isawaitable(result):
        return await result
    return result


async def settle_late_calls(key: str, grace: float) -> bool:
    """Wait up to ``grace`` seconds for this process's abandoned calls with idempotency
    key ``key`` (sync actions past their deadline, still running in their thread) to
    return. False if one is still running then."""
    give_up = time.monotonic() + grace
    while True:
        with _late_lock:
            if key not in _late:
                return True
        if time.monotonic() >= give_up:
            return False
        await asyncio.sleep(min(0.01, max(0.0, give_up - time.monotonic())))


STILL_RUNNING = ErrorInfo(
    "ActionStillRunning", "action still running after its deadline", retryable=False
)
"""Why a compensation was not run: undoing now could come before the effect lands."""


def call_outcome(
    command: RunStep | RunCompensation,
    policy: RetryPolicy,
    at: datetime,
    *,
    returned: Any = None,
    raised: Exception | None = None,
) -> Event:
    """The event a call that returned ``returned`` (or raised ``raised``) ends in: the
    one judgement of a call's outcome, shared by the orchestrator and saga_fsm.testing.
    (A missed deadline is told apart by the caller: ``outcome_event(.., "timed_out")``.)"""
    if raised is not None:
        return outcome_event(command, "failed", at, error=failure_info(raised, policy))
    problem = result_problem(returned)
    if problem is not None:
        error = ErrorInfo(INVALID_RESULT, problem, retryable=False)
        return outcome_event(command, "failed", at, error=error)
    return outcome_event(command, "succeeded", at, result=returned)


def result_problem(result: Any) -> str | None:
    """Why an action's return value cannot be merged into the saga data, or None."""
    if result is None:
        return None
    if not isinstance(result, Mapping):
        return f"an action must return a mapping or None, got {type(result).__name__}"
    if not all(isinstance(k, str) for k in result):
        return "an action's result must have string keys"
    problem = data_problem(dict(result), "result")
    if problem is not None:
        return f"an action's result must be plain JSON: {problem}"
    return None


def failure_info(err: Exception, policy: RetryPolicy) -> ErrorInfo:
    """How an exception raised by an action is recorded: ``StepFailed`` says itself
    whether a retry can help; a type listed in the policy's ``non_retryable`` is
    permanent; anything else is transient. The orchestrator and saga_fsm.testing both
    judge failures here; only the orchestrator's own deadline is told apart before."""
    if isinstance(err, StepFailed):
        return ErrorInfo.from_exception(err, retryable=err.retryable)
    if isinstance(err, TimeoutError):
        return ErrorInfo.from_exception(TimeoutError(), retryable=True)
    return ErrorInfo.from_exception(err, retryable=not isinstance(err, policy.non_retryable))


def is_declared_failure(err: Exception, policy: RetryPolicy) -> bool:
    """Whether an action failed on purpose: ``StepFailed`` or a ``non_retryable`` type."""
    return isinstance(err, (StepFailed, *policy.non_retryable))

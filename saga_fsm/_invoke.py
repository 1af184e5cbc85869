"""Calling a user's action or compensation, shared by the orchestrator and by
``saga_fsm.testing``: a property test must call actions exactly as production does, so
there is one copy of how a function is called and how its outcome is judged."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import Any

from saga_fsm._codec import data_problem
from saga_fsm._core import RunCompensation, RunStep
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


async def _in_thread(fn: Action, ctx: StepContext) -> Any:
    # Sync actions run in a thread so a slow one neither blocks other sagas nor escapes
    # its timeout (the thread itself cannot be killed; its result is then ignored).
    result = await asyncio.to_thread(fn, ctx)
    if inspect.isawaitable(result):
        return await result
    return result


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

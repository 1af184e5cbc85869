"""Remote steps on the orchestrator's side: the command a transition puts in the outbox,
and what a participant's reply means for the saga it names.

Pure: no I/O. A command's message id is derived from its request id, so a command
decided twice (or re-published by a relay) keeps one id and brokers that deduplicate
by id can; a reply is applied only while its request is the one the snapshot waits for.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from saga_fsm._codec import dumps
from saga_fsm._core import (
    INVALID_RESULT,
    Command,
    Event,
    RunCompensation,
    RunStep,
    idempotency_key,
    outcome_event,
)
from saga_fsm._definition import WaitFor
from saga_fsm._flow import CompiledSaga
from saga_fsm._invoke import result_problem
from saga_fsm._parallel import awaited_branch, branch_call
from saga_fsm._snapshot import ErrorInfo, Snapshot, StepStatus, split_state
from saga_fsm.messaging._envelope import Headers, Message, MessageKind, message_to_json
from saga_fsm.messaging._errors import MessageDecodeError
from saga_fsm.messaging._reply import Outcome, reply_from_payload
from saga_fsm.stores._outbox import OutboxMessage

DEFAULT_REPLY_CHANNEL = "saga_fsm.replies"
"""The base of the reply channels unless a worker names another (see ``reply_channel_for``)."""


def reply_channel_for(base: str, definition: str) -> str:
    """Where participants answer a definition's commands: ``base.<definition>`` (dots
    in the name become ``_``), so that workers serving other definitions, competing on
    their own channels, never take these replies."""
    return f"{base}.{definition.replace('.', '_')}"


_COMMAND_IDS = uuid.UUID("3b0f5d0e-8f5c-4c8e-9a55-0d6f2b7e4c19")


def command_id(request_id: str) -> str:
    """The message id of the command of request ``request_id``: the same every time."""
    return uuid.uuid5(_COMMAND_IDS, request_id).hex


def remote_commands(
    compiled: CompiledSaga, snapshot: Snapshot, commands: tuple[Command, ...], reply_base: str
) -> list[OutboxMessage]:
    """The outbox rows of a decision: one per remote step or compensation it starts,
    answered on ``reply_channel_for(reply_base, definition)``."""
    rows = []
    reply_channel = reply_channel_for(reply_base, snapshot.definition)
    for command in commands:
        if not isinstance(command, RunStep | RunCompensation) or command.request_id is None:
            continue
        payload = dict(snapshot.data)
        found = branch_call(compiled, snapshot, command.step) if "/" in command.step else None
        if found is not None:  # a parallel group's branch step: its branch's data
            step, data = found
            payload = dict(data)
        else:
            step = compiled.definition.steps[compiled.step_index[command.step]]
            if isinstance(step, WaitFor):
                continue  # a wait sends nothing: a signal ends it
        compensating = isinstance(command, RunCompensation)
        channel = step.compensation_command if compensating else step.command
        if channel is None:
            continue  # a child saga step: its request is the child saga, not a message
        message = Message(
            channel=channel,
            kind=MessageKind.COMMAND,
            payload=payload,
            headers=Headers(
                saga_id=snapshot.saga_id,
                definition=snapshot.definition,
                step=command.step,
                attempt=command.attempt,
                # The step's key, for its compensation too: the participant files both
                # under it, so that it can tell an undo from one that came first.
                idempotency_key=idempotency_key(snapshot.saga_id, command.step),
                request_id=command.request_id,
                reply_channel=reply_channel,
                correlation_id=snapshot.correlation_id,
                traceparent=snapshot.traceparent,
            ),
            message_id=command_id(command.request_id),
        )
        rows.append(
            OutboxMessage(snapshot.saga_id, channel, message.message_id, message_to_json(message))
        )
    return rows


_SIGNAL_IDS = uuid.UUID("0f0a8e63-3f59-4f0c-8d8e-2b7f1f7e6a24")


def signal_message(
    saga_id: str,
    definition: str,
    signal: str,
    data: Mapping[str, Any] | None = None,
    *,
    reply_base: str = DEFAULT_REPLY_CHANNEL,
    message_id: str | None = None,
) -> Message:
    """A signal as a message: published on the definition's reply channel, a worker
    serving the definition (``saga-fsm worker --broker``) delivers it as
    ``SagaClient.signal`` would. Without ``message_id``, the id is derived from the
    saga, the event and its data, so the same signal published twice is one message."""
    payload = {"signal": signal, "data": dict(data or {})}
    if message_id is None:
        message_id = uuid.uuid5(_SIGNAL_IDS, dumps([saga_id, payload])).hex
    return Message(
        channel=reply_channel_for(reply_base, definition),
        kind=MessageKind.EVENT,
        payload=payload,
        headers=Headers(saga_id=saga_id, definition=definition),
        message_id=message_id,
    )


def signal_of(message: Message) -> tuple[str, dict[str, Any]]:
    """The event name and data a signal message carries; ``MessageDecodeError`` for
    anything else (a poison message)."""
    name, data = message.payload.get("signal"), message.payload.get("data", {})
    if not isinstance(name, str) or not isinstance(data, dict):
        raise MessageDecodeError(
            message.message_id, 'a signal is {"signal": "<event>", "data": {...}}'
        )
    return name, data


def awaited(snapshot: Snapshot, request: str | None = None) -> RunStep | RunCompensation | None:
    """The remote call the saga is waiting for, if it waits for one (at a parallel
    group, of several: the one waiting for the reply to ``request``)."""
    step = split_state(snapshot.state)[1]
    if step is None:
        return None
    record = snapshot.step(step)
    if record.branches is not None:
        return awaited_branch(snapshot, request)
    if record.request_id is None:
        return None
    if record.status is StepStatus.RUNNING:
        return RunStep(step, record.attempts, "", record.deadline, record.request_id)
    if record.status is StepStatus.COMPENSATING:
        return RunCompensation(
            step, record.compensation_attempts, "", record.deadline, record.request_id
        )
    return None


def stale_reason(snapshot: Snapshot, reply: Message) -> str | None:
    """Why ``reply`` does not answer what ``snapshot`` waits for (None: it does)."""
    if snapshot.is_terminal:
        return f"the saga is finished ({snapshot.state})"
    waiting = awaited(snapshot, reply.headers.request_id)
    if waiting is None:
        return f"the saga waits for no reply ({snapshot.state})"
    if reply.headers.request_id != waiting.request_id:
        return (
            f"answers request {reply.headers.request_id!r}, the saga waits for"
            f" {waiting.request_id!r}"
        )
    return None


def reply_event(snapshot: Snapshot, reply: Message, at: datetime) -> Event:
    """The event a current reply stands for; ``MessageDecodeError`` for a payload that
    is not a reply, or an outcome that does not fit the call (a poison message)."""
    waiting = awaited(snapshot, reply.headers.request_id)
    assert waiting is not None and stale_reason(snapshot, reply) is None
    body = reply_from_payload(reply.payload, message_id=reply.message_id)
    compensating = isinstance(waiting, RunCompensation)
    if body.outcome is Outcome.COMPENSATED:
        if not compensating:
            raise MessageDecodeError(reply.message_id, "a compensation's answer to a step")
        return outcome_event(waiting, "succeeded", at)
    if body.outcome is Outcome.FAILED:
        error = body.error or ErrorInfo("RemoteStepFailed", "no error given", retryable=True)
        return outcome_event(waiting, "failed", at, error=error)
    if compensating:
        return outcome_event(waiting, "succeeded", at)
    problem = result_problem(body.data)
    if problem is not None:
        # The participant acted, and its answer cannot be merged: like a local action's.
        error = ErrorInfo(INVALID_RESULT, problem, retryable=False)
        return outcome_event(waiting, "failed", at, error=error)
    return outcome_event(waiting, "succeeded", at, result=body.data)

"""Remote steps under test: commands to participants and their replies over the
in-memory transport, with the wire's faults injected.

The harness does what a worker does with a remote step (the command as the outbox holds
it, the reply applied only while its request is the one the snapshot waits for) and
hands the command to the user's own ``Participant`` (its handlers, its idempotent
inbox and suspension guard); a channel no given participant handles is answered by an
ideal one. Around a remote call the faults mean:

============  ==============================================================================
fault         on the wire
============  ==============================================================================
ok            command delivered, reply applied
transient     command delivered, reply lost: the step times out at its deadline
permanent     the participant refuses before acting (a definite refusal reply)
timeout       command delivered, reply late: the step times out; the reply arrives at the
              saga's next move (after a retry was sent, or after compensation) and is dropped
crash_before  the relay died before publishing: the command goes out on the next move
crash_after   the reply is delivered twice (a worker died before acknowledging it)
lost          command delayed: the step times out; the command reaches the participant at
              the saga's next move, overtaken by the retry or by the compensation
============  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from saga_fsm._core import RunCompensation, RunStep
from saga_fsm._errors import StepFailed
from saga_fsm._flow import CompiledSaga
from saga_fsm._remote import remote_commands
from saga_fsm._snapshot import Snapshot
from saga_fsm.messaging import (
    Delivery,
    Message,
    Outcome,
    ReplyBody,
    message_from_json,
    reply_from_payload,
    reply_to_payload,
)
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.participant import Command, MemoryInbox, Participant
from saga_fsm.participant._participant import Route
from saga_fsm.testing._faults import REFUSED

REPLY_CHANNEL = "saga_fsm_testing.replies"


def command_message(
    compiled: CompiledSaga, snapshot: Snapshot, command: RunStep | RunCompensation
) -> Message:
    """The command as the worker's outbox would hold it."""
    [row] = remote_commands(compiled, snapshot, (command,), REPLY_CHANNEL)
    return message_from_json(row.body)


def refusal(command: Message) -> Message:
    return command.reply(reply_to_payload(ReplyBody(Outcome.FAILED, error=REFUSED)))


def raised_of(reply: Message) -> tuple[Any, Exception | None]:
    """A reply as the trace records a call: what it returned, or what it raised."""
    body = reply_from_payload(reply.payload, message_id=reply.message_id)
    if body.outcome is Outcome.FAILED:
        error = body.error
        message = error.message if error else "failed"
        return None, StepFailed(message, retryable=bool(error and error.retryable))
    return body.data, None


class _Settled:
    """A delivery's settlement, noted rather than sent anywhere."""

    def __init__(self) -> None:
        self.how = ""

    async def ack(self) -> None:
        self.how = "ack"

    async def nack(self, delay: float) -> None:
        self.how = "nack"

    async def dead_letter(self, reason: str) -> None:
        self.how = "dead_letter"


@attrs.define(eq=False)
class Participants:
    """The user's participants on one in-memory broker, each handler wrapped to note
    that it ran (the suspension guard and the inbox decide whether it does)."""

    given: Iterable[Participant] = ()
    transport: MemoryTransport = attrs.field(factory=MemoryTransport)
    inbox: MemoryInbox = attrs.field(factory=MemoryInbox)
    ran: list[str] = attrs.field(factory=list)
    raised: list[Exception] = attrs.field(factory=list)
    _by_channel: dict[str, Participant] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for participant in self.given:
            wrapped = Participant(participant.name, retry_delay=participant.retry_delay)
            for channel, route in participant.routes.items():
                wrapped.routes[channel] = Route(channel, self._noting(route), route.compensates)
                self._by_channel[channel] = wrapped

    def _noting(self, route: Route) -> Any:
        handler = route.handler

        def run(command: Command) -> Any:
            self.ran.append(command.message.channel)
            try:
                return handler(command)
            except StepFailed:
                raise
            except Exception as err:
                # A fault of the handler: the participant asks for a redelivery, and
                # the trace says what it raised.
                self.raised.append(err)
                raise

        return run

    async def deliver(self, command: Message) -> tuple[Message | None, bool, Exception | None]:
        """The participant's reply to ``command`` (None: it failed and asked for a
        redelivery), whether its handler ran, and what it raised if it crashed."""
        participant = self._by_channel.get(command.channel)
        if participant is None:
            # An ideal participant: it does the step, or undoes it, and says so.
            outcome = (
                Outcome.COMPENSATED
                if ":compensate:" in str(command.headers.request_id)
                else Outcome.SUCCEEDED
            )
            return command.reply(reply_to_payload(ReplyBody(outcome))), False, None
        before, errors = len(self.ran), len(self.raised)
        channel = str(command.headers.reply_channel)
        # The broker stores an id once; a reply answered again from the inbox must show.
        self.transport.broker.seen.pop(channel, None)
        replies = await self.transport.subscribe(channel)
        try:
            settled = _Settled()
            await participant.handle(
                Delivery(command, 1, settle=settled), self.transport, self.inbox
            )
            delivery = await replies.receive(timeout=0)
            reply = None
            if delivery is not None:
                reply = delivery.message
                await delivery.ack()
        finally:
            await replies.close()
        crashed = self.raised[errors] if len(self.raised) > errors else None
        return reply, len(self.ran) > before, crashed

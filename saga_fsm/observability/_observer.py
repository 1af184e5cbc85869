"""The one door through which tracing, metrics and users' own alerts watch sagas.

The orchestrator, the worker and participants call an ``Observer`` at a handful of
points, always after the fact (a transition is reported once it is persisted, so a lost
race or a crash never reports what did not happen). The base class does nothing: an
observer overrides the calls it cares about. Observers must not raise and must not block:
they run on the engine's own task.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga_fsm._core import Event, RunCompensation, RunStep
    from saga_fsm._errors import SnapshotDecodeError
    from saga_fsm._snapshot import HistoryEntry, Snapshot
    from saga_fsm.messaging import Message


class Observer:
    """Watches sagas; every method is a no-op here."""

    def stamp(self, snapshot: Snapshot) -> Snapshot:
        """A new saga, before its first write: return it, perhaps with fields set (the
        tracer stores its ``traceparent``)."""
        return snapshot

    def created(self, snapshot: Snapshot) -> None:
        """A new saga was written (not called when an idempotency key found an old one)."""

    def claimed(self, snapshot: Snapshot) -> None:
        """A worker took a stored saga over to drive it (claimed, or ``resume``)."""

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        """A decision was persisted: ``history`` holds its transitions."""

    def attempt_started(self, snapshot: Snapshot, command: RunStep | RunCompensation) -> None:
        """An action or compensation attempt is about to be called."""

    def attempt_finished(self, snapshot: Snapshot, event: Event) -> None:
        """How the attempt ``event.step``/``event.attempt`` ended (its outcome event)."""

    def lease_lost(self, snapshot: Snapshot) -> None:
        """Another worker took the saga over while this one drove it."""

    def decode_failed(self, error: SnapshotDecodeError) -> None:
        """A stored row could not be decoded (it is quarantined)."""

    def consuming(self, participant: str, message: Message) -> AbstractContextManager[object]:
        """Wraps a participant's handling of one delivered command."""
        return nullcontext()

    def publishing(self, message: Message) -> AbstractContextManager[Message]:
        """Wraps the relay's publish of one outbox message: yields the message to send
        (the tracer's carries its PRODUCER span's ``traceparent``)."""
        return nullcontext(message)

    def duplicate(self, participant: str, message: Message) -> None:
        """A participant answered a command it had seen before from its inbox."""

    def reply_dropped(self, reply: Message, reason: str) -> None:
        """A worker dropped a reply without applying it: stale (an earlier attempt's, a
        finished saga's) or a duplicate."""


NO_OBSERVER = Observer()


class Observers(Observer):
    """Several observers, called in order (``stamp`` through each in turn)."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def stamp(self, snapshot: Snapshot) -> Snapshot:
        for observer in self.observers:
            snapshot = observer.stamp(snapshot)
        return snapshot

    def created(self, snapshot: Snapshot) -> None:
        for observer in self.observers:
            observer.created(snapshot)

    def claimed(self, snapshot: Snapshot) -> None:
        for observer in self.observers:
            observer.claimed(snapshot)

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        for observer in self.observers:
            observer.transitioned(before, after, history)

    def attempt_started(self, snapshot: Snapshot, command: RunStep | RunCompensation) -> None:
        for observer in self.observers:
            observer.attempt_started(snapshot, command)

    def attempt_finished(self, snapshot: Snapshot, event: Event) -> None:
        for observer in self.observers:
            observer.attempt_finished(snapshot, event)

    def lease_lost(self, snapshot: Snapshot) -> None:
        for observer in self.observers:
            observer.lease_lost(snapshot)

    def decode_failed(self, error: SnapshotDecodeError) -> None:
        for observer in self.observers:
            observer.decode_failed(error)

    @contextmanager
    def consuming(self, participant: str, message: Message) -> Iterator[None]:
        with ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.consuming(participant, message))
            yield

    @contextmanager
    def publishing(self, message: Message) -> Iterator[Message]:
        with ExitStack() as stack:
            for observer in self.observers:
                message = stack.enter_context(observer.publishing(message))
            yield message

    def duplicate(self, participant: str, message: Message) -> None:
        for observer in self.observers:
            observer.duplicate(participant, message)

    def reply_dropped(self, reply: Message, reason: str) -> None:
        for observer in self.observers:
            observer.reply_dropped(reply, reason)


class ParkedAlert(Observer):
    """Calls ``post(text)`` once when a saga parks in ``failed`` (its compensation gave
    up and an operator must act): e.g. a chat channel's send. Reported after the write,
    so a decision re-taken after a lost race never posts twice."""

    def __init__(self, post: object) -> None:
        if not callable(post):
            raise TypeError(f"post must be callable, got {post!r}")
        self.post = post

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        if after.state == "failed" and before.state != "failed":
            self.post(
                f"saga {after.saga_id} ({after.definition} v{after.definition_version}) parked"
                f" in failed at {after.parked_at}: {after.failure}"
            )

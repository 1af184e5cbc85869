"""OpenTelemetry spans for sagas (extra ``saga-fsm[otel]``: opentelemetry-api only).

No long-lived root span (sagas outlive processes): the start's span context is stored
in the snapshot (``Snapshot.traceparent``) and every later span of the saga, in any
process, is its child, so one saga is one trace across crashes, workers and hours.

- ``saga.start <name>``: the start (its context is the saga's ``traceparent``);
- ``saga.step <step>`` / ``saga.compensate <step>``: one span per attempt, current while
  the action runs (so the action's own spans and publishes are its children), status
  ERROR with the error on failure or timeout, the decision's transitions as events
  (``from``, ``to``, ``trigger``);
- ``saga.resume <name>``: a worker took a stored saga over;
- ``saga.cancel <name>`` / ``saga.retry <name>``: operator commands; a retry also links
  the operator's own trace when one is current;
- across brokers: ``publish`` wraps a publish in a PRODUCER span and puts W3C
  ``traceparent``/``tracestate`` in the message headers; a participant built with
  ``observer=SagaTracing()`` handles each command in a CONSUMER span continuing it.

Attributes: ``saga.name``, ``saga.id``, ``saga.definition.version``, ``saga.step``,
``saga.step.kind``, ``saga.step.attempt``, ``saga.phase``, ``saga.outcome``,
``saga.correlation_id``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from saga_fsm._core import Event, RunCompensation, RunStep
from saga_fsm._errors import SnapshotDecodeError
from saga_fsm._snapshot import HistoryEntry, Snapshot, replace
from saga_fsm.messaging import Message, Transport
from saga_fsm.observability._observer import Observer

_PROPAGATOR = TraceContextTextMapPropagator()
_FAILED_TRIGGERS = frozenset(
    {"step_failed", "step_timed_out", "compensation_failed", "compensation_timed_out"}
)
_OUTCOMES = {
    "step_succeeded": "succeeded",
    "step_failed": "failed",
    "step_timed_out": "timed_out",
    "compensation_succeeded": "succeeded",
    "compensation_failed": "failed",
    "compensation_timed_out": "timed_out",
}


def saga_attributes(snapshot: Snapshot) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "saga.name": snapshot.definition,
        "saga.id": snapshot.saga_id,
        "saga.definition.version": snapshot.definition_version,
    }
    if snapshot.correlation_id is not None:
        attributes["saga.correlation_id"] = snapshot.correlation_id
    return attributes


_CONTEXTS: dict[str, otel_context.Context] = {}
_CONTEXTS_MAX = 4096


def context_of(traceparent: str | None) -> otel_context.Context:
    """The OpenTelemetry context a stored or received ``traceparent`` stands for (the
    current one when there is none). Parsed once per saga while it is recent: each of a
    saga's spans needs it."""
    if traceparent is None:
        return otel_context.get_current()
    known = _CONTEXTS.get(traceparent)
    if known is None:
        if len(_CONTEXTS) >= _CONTEXTS_MAX:
            _CONTEXTS.clear()
        known = _CONTEXTS[traceparent] = _PROPAGATOR.extract({"traceparent": traceparent})
    return known


def traceparent_of(span: Span) -> tuple[str | None, str | None]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent"), carrier.get("tracestate")


@attrs.define
class _Attempt:
    span: Span
    token: object | None


class SagaTracing(Observer):
    """An ``Observer`` that turns what the engine reports into spans."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("saga_fsm", tracer_provider=tracer_provider)
        self._attempts: dict[str, _Attempt] = {}  # saga id -> the attempt span still open
        self._pending: dict[str, list[HistoryEntry]] = {}  # transitions waiting for a span

    # -- the saga's own spans -------------------------------------------------------------
    def stamp(self, snapshot: Snapshot) -> Snapshot:
        span = self.tracer.start_span(
            f"saga.start {snapshot.definition}", attributes=saga_attributes(snapshot)
        )
        traceparent, _state = traceparent_of(span)
        span.end()
        return replace(snapshot, traceparent=traceparent)

    def claimed(self, snapshot: Snapshot) -> None:
        if snapshot.state == "pending":
            return  # started elsewhere, never run: nothing is resumed
        span = self._span(f"saga.resume {snapshot.definition}", snapshot)
        span.set_attribute("saga.state", snapshot.state)
        span.end()

    def attempt_started(self, snapshot: Snapshot, command: RunStep | RunCompensation) -> None:
        self._end(snapshot.saga_id)  # an attempt whose decision never got written
        compensating = isinstance(command, RunCompensation)
        name = f"saga.compensate {command.step}" if compensating else f"saga.step {command.step}"
        attributes = saga_attributes(snapshot)
        attributes["saga.step"] = command.step
        attributes["saga.step.attempt"] = command.attempt
        attributes["saga.phase"] = "compensate" if compensating else "forward"
        span = self._span(name, snapshot, attributes=attributes)
        self._add_events(span, self._pending.pop(snapshot.saga_id, ()))
        token = otel_context.attach(trace.set_span_in_context(span))
        self._attempts[snapshot.saga_id] = _Attempt(span, token)

    def attempt_finished(self, snapshot: Snapshot, event: Event) -> None:
        attempt = self._attempts.get(snapshot.saga_id)
        if attempt is None:
            return
        if attempt.token is not None:
            otel_context.detach(attempt.token)  # type: ignore[arg-type]
            attempt.token = None
        attempt.span.set_attribute("saga.outcome", _OUTCOMES.get(event.trigger, event.trigger))
        if event.trigger in _FAILED_TRIGGERS:
            error = event.error
            description = str(error) if error is not None else event.trigger
            attempt.span.set_status(Status(StatusCode.ERROR, description))
            if error is not None:
                attempt.span.add_event(
                    "exception",
                    {"exception.type": error.type, "exception.message": error.message},
                )

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        attempt = self._attempts.pop(after.saga_id, None)
        triggers = {entry.trigger for entry in history}
        if attempt is not None:
            self._add_events(attempt.span, history)
            if after.is_terminal:
                attempt.span.set_attribute("saga.state", after.state)
            self._finish(attempt)
        elif triggers & {"cancel", "retry"}:
            operation = "retry" if "retry" in triggers else "cancel"
            links = []
            ambient = trace.get_current_span().get_span_context()
            if operation == "retry" and ambient.is_valid:
                links.append(Link(ambient))
            span = self._span(f"saga.{operation} {after.definition}", after, links=links)
            self._add_events(span, history)
            span.end()
        else:
            self._pending.setdefault(after.saga_id, []).extend(history)
        if after.is_terminal or after.due_at is None or after.wake_at is not None:
            # Finished, parked, or waiting for a timer (possibly handed back to whichever
            # worker wakes it): not ours to keep.
            self._pending.pop(after.saga_id, None)

    def lease_lost(self, snapshot: Snapshot) -> None:
        self._end(snapshot.saga_id)
        self._pending.pop(snapshot.saga_id, None)

    def decode_failed(self, error: SnapshotDecodeError) -> None:
        span = self.tracer.start_span("saga.quarantine", attributes={"saga.id": str(error.saga_id)})
        span.set_status(Status(StatusCode.ERROR, error.reason))
        span.end()

    # -- participants ---------------------------------------------------------------------
    @contextmanager
    def consuming(self, participant: str, message: Message) -> Iterator[Span]:
        headers = message.headers
        parent = context_of(headers.traceparent)
        attributes: dict[str, Any] = {
            "messaging.operation": "process",
            "messaging.destination.name": message.channel,
            "messaging.message.id": message.message_id,
            "saga.participant": participant,
        }
        for name, value in (
            ("saga.id", headers.saga_id),
            ("saga.correlation_id", headers.correlation_id),
            ("saga.step.attempt", headers.attempt),
        ):
            if value is not None:
                attributes[name] = value
        with self.tracer.start_as_current_span(
            f"{message.channel} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield span

    @contextmanager
    def publishing(self, message: Message) -> Iterator[Message]:
        """The relay's publish of a command: a PRODUCER span, a child of the saga's
        stored trace context, whose own ``traceparent`` the sent message carries."""
        with self.tracer.start_as_current_span(
            f"{message.channel} publish",
            context=context_of(message.headers.traceparent),
            kind=SpanKind.PRODUCER,
            attributes=_publish_attributes(message),
        ) as span:
            traceparent, _tracestate = traceparent_of(span)
            headers = attrs.evolve(message.headers, traceparent=traceparent)
            yield attrs.evolve(message, headers=headers)

    # -- helpers --------------------------------------------------------------------------
    def _span(
        self,
        name: str,
        snapshot: Snapshot,
        links: Sequence[Link] = (),
        attributes: dict[str, Any] | None = None,
    ) -> Span:
        return self.tracer.start_span(
            name,
            context=context_of(snapshot.traceparent),
            attributes=saga_attributes(snapshot) if attributes is None else attributes,
            links=links,
        )

    @staticmethod
    def _add_events(span: Span, history: Sequence[HistoryEntry]) -> None:
        for entry in history:
            span.add_event(
                "transition",
                {"from": entry.from_state, "to": entry.to_state, "trigger": entry.trigger},
            )

    def _end(self, saga_id: str) -> None:
        attempt = self._attempts.pop(saga_id, None)
        if attempt is not None:
            self._finish(attempt)

    @staticmethod
    def _finish(attempt: _Attempt) -> None:
        if attempt.token is not None:
            otel_context.detach(attempt.token)  # type: ignore[arg-type]
        attempt.span.end()


async def publish(
    transport: Transport,
    message: Message,
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> None:
    """Publish ``message`` in a PRODUCER span (a child of the current span, e.g. a step
    attempt's), with the W3C ``traceparent`` of that span in its headers."""
    tracer = trace.get_tracer("saga_fsm", tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        f"{message.channel} publish",
        kind=SpanKind.PRODUCER,
        attributes=_publish_attributes(message),
    ) as span:
        traceparent, _tracestate = traceparent_of(span)
        headers = attrs.evolve(message.headers, traceparent=traceparent)
        await transport.publish(attrs.evolve(message, headers=headers))


def _publish_attributes(message: Message) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.operation": "publish",
        "messaging.destination.name": message.channel,
        "messaging.message.id": message.message_id,
    }
    if message.headers.saga_id is not None:
        attributes["saga.id"] = message.headers.saga_id
    return attributes

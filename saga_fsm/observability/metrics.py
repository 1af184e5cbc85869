"""Prometheus metrics for sagas (extra ``saga-fsm[metrics]``: prometheus-client).

``SagaMetrics`` is an ``Observer``: give it to the ``Orchestrator`` (and to a
``Participant``) and it counts what they report. Its metrics live on the registry it is
given (default: prometheus-client's global ``REGISTRY``, which ``start_http_server``
serves); labels are bounded (definition, step, outcome, state: never a saga id).
``refresh_from_store`` sets the gauges only the store can answer (sagas in flight by
state, stuck sagas); a worker started with ``--metrics-port`` does it every poll.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from saga_fsm._core import Event, RunCompensation, RunStep
from saga_fsm._errors import SnapshotDecodeError
from saga_fsm._snapshot import HistoryEntry, SagaStatus, Snapshot
from saga_fsm.messaging import Message
from saga_fsm.observability._observer import Observer
from saga_fsm.stores._queries import EVERYTHING, SagaFilter, SagaQueries

_DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_OUTCOMES = {
    "step_succeeded": "succeeded",
    "step_failed": "failed",
    "step_timed_out": "timed_out",
    "compensation_succeeded": "succeeded",
    "compensation_failed": "failed",
    "compensation_timed_out": "timed_out",
}
_LIVE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def outcome_of(snapshot: Snapshot) -> str:
    """completed, compensated, cancelled (compensated on request) or failed."""
    if snapshot.state == SagaStatus.COMPENSATED and snapshot.cancel_requested:
        return "cancelled"
    return snapshot.state


def _step(name: str) -> str:
    """A step's label: a ``ForEach`` branch step (``group/<index>/step``) as
    ``group/*/step``, so the label stays bounded however long the list."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1].isdigit():
        return f"{parts[0]}/*/{parts[2]}"
    return name


class SagaMetrics(Observer):
    """The saga metrics, registered on ``registry``, and the observer that updates them."""

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, stuck_after: float = 300.0
    ) -> None:
        self.stuck_after = stuck_after
        r = registry
        self.sagas_started = Counter(
            "saga_fsm_sagas_started", "Sagas started.", ["definition"], registry=r
        )
        self.sagas_finished = Counter(
            "saga_fsm_sagas_finished",
            "Sagas that ended: completed, compensated, cancelled, or failed (parked).",
            ["definition", "outcome"],
            registry=r,
        )
        self.saga_duration = Histogram(
            "saga_fsm_saga_duration_seconds",
            "From a saga's creation to its end.",
            ["definition", "outcome"],
            buckets=_DURATIONS,
            registry=r,
        )
        self.step_attempts = Counter(
            "saga_fsm_step_attempts",
            "Action attempts by outcome (succeeded, failed, timed_out).",
            ["definition", "step", "outcome"],
            registry=r,
        )
        self.compensation_attempts = Counter(
            "saga_fsm_compensation_attempts",
            "Compensation attempts by outcome (succeeded, failed, timed_out).",
            ["definition", "step", "outcome"],
            registry=r,
        )
        self.step_duration = Histogram(
            "saga_fsm_step_duration_seconds",
            "How long one attempt took, by phase (forward, compensate).",
            ["definition", "step", "phase"],
            buckets=_DURATIONS,
            registry=r,
        )
        self.retries = Counter(
            "saga_fsm_step_retries",
            "Attempts after the first, actions and compensations.",
            ["definition", "step", "phase"],
            registry=r,
        )
        self.compensation_failures = Counter(
            "saga_fsm_compensation_failures",
            "Compensations that gave up: the saga parked in failed at this step.",
            ["definition", "step"],
            registry=r,
        )
        self.lease_takeovers = Counter(
            "saga_fsm_lease_takeovers",
            "Sagas taken over with an attempt in flight (its worker died or lost the lease).",
            ["definition"],
            registry=r,
        )
        self.leases_lost = Counter(
            "saga_fsm_leases_lost",
            "Sagas this process was driving when another worker took them over.",
            ["definition"],
            registry=r,
        )
        self.decode_failures = Counter(
            "saga_fsm_snapshot_decode_failures",
            "Stored rows that could not be decoded (quarantined).",
            registry=r,
        )
        self.in_flight = Gauge(
            "saga_fsm_sagas_in_flight",
            "Unfinished sagas in the store, by definition and state.",
            ["definition", "state"],
            registry=r,
        )
        self.stuck = Gauge(
            "saga_fsm_sagas_stuck",
            "Unfinished sagas with no transition for stuck_after seconds.",
            registry=r,
        )
        self.oldest_due_age = Gauge(
            "saga_fsm_oldest_due_saga_age_seconds",
            "How long the oldest due saga has waited for a worker (queue lag).",
            registry=r,
        )
        # Messaging.
        self.inbox_duplicates = Counter(
            "saga_fsm_inbox_duplicates",
            "Commands a participant had seen before, answered from its inbox.",
            ["participant", "channel"],
            registry=r,
        )
        self.stale_replies = Counter(
            "saga_fsm_stale_replies",
            "Replies dropped unapplied: an earlier attempt's, a finished saga's, a duplicate.",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "saga_fsm_outbox_backlog", "Messages decided but not yet published.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "saga_fsm_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest message not yet published.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "saga_fsm_dead_letters", "Messages parked in a channel's dead letters.", ["channel"],
            registry=r,
        )  # fmt: skip
        self._started: dict[tuple[str, str, int], float] = {}  # (saga, step, attempt) -> t0
        self._known: set[tuple[str, str]] = set()  # in_flight label sets ever set
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (they are bounded):
        this runs on every attempt."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- the observer ---------------------------------------------------------------------
    def created(self, snapshot: Snapshot) -> None:
        self.sagas_started.labels(snapshot.definition).inc()

    def claimed(self, snapshot: Snapshot) -> None:
        current = snapshot.current_step
        if current is not None and snapshot.step(current).status in ("running", "compensating"):
            self.lease_takeovers.labels(snapshot.definition).inc()

    def attempt_started(self, snapshot: Snapshot, command: RunStep | RunCompensation) -> None:
        self._started[(snapshot.saga_id, command.step, command.attempt)] = time.perf_counter()
        if command.attempt > 1:
            phase = "compensate" if isinstance(command, RunCompensation) else "forward"
            self._child(self.retries, snapshot.definition, _step(command.step), phase).inc()

    def attempt_finished(self, snapshot: Snapshot, event: Event) -> None:
        assert event.step is not None
        compensating = event.trigger.startswith("compensation")
        outcome = _OUTCOMES.get(event.trigger, event.trigger)
        counter = self.compensation_attempts if compensating else self.step_attempts
        self._child(counter, snapshot.definition, _step(event.step), outcome).inc()
        t0 = self._started.pop((snapshot.saga_id, event.step, event.attempt or 0), None)
        if t0 is not None:
            phase = "compensate" if compensating else "forward"
            step = _step(event.step)
            duration = self._child(self.step_duration, snapshot.definition, step, phase)
            duration.observe(time.perf_counter() - t0)

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        if before.is_terminal or not after.is_terminal:
            return
        outcome = outcome_of(after)
        self.sagas_finished.labels(after.definition, outcome).inc()
        seconds = (after.updated_at - after.created_at).total_seconds()
        self.saga_duration.labels(after.definition, outcome).observe(max(seconds, 0.0))
        if outcome == "failed" and after.parked_at is not None:
            step = after.parked_at.partition(":")[2]
            self.compensation_failures.labels(after.definition, step).inc()

    def lease_lost(self, snapshot: Snapshot) -> None:
        self.leases_lost.labels(snapshot.definition).inc()

    def decode_failed(self, error: SnapshotDecodeError) -> None:
        self.decode_failures.inc()

    def duplicate(self, participant: str, message: Message) -> None:
        self.inbox_duplicates.labels(participant, message.channel).inc()

    def reply_dropped(self, reply: Message, reason: str) -> None:
        self.stale_replies.inc()

    # -- what only the store knows --------------------------------------------------------
    async def refresh_from_store(self, store: SagaQueries, now: datetime) -> None:
        """Set the in-flight and stuck gauges from the store's counts (two queries)."""
        counts = await store.counts(EVERYTHING)
        seen: set[tuple[str, str]] = set()
        for count in counts:
            if count.state.partition(":")[0] in _LIVE:
                seen.add((count.definition, count.state))
                self.in_flight.labels(count.definition, count.state).set(count.count)
        for gone in self._known - seen:
            self.in_flight.labels(*gone).set(0)
        self._known |= seen
        cutoff = now - timedelta(seconds=self.stuck_after)
        stuck = await store.counts(SagaFilter(stuck_before=cutoff))
        self.stuck.set(sum(c.count for c in stuck))


METRIC_NAMES = (
    "saga_fsm_sagas_started_total",
    "saga_fsm_sagas_finished_total",
    "saga_fsm_saga_duration_seconds",
    "saga_fsm_step_attempts_total",
    "saga_fsm_compensation_attempts_total",
    "saga_fsm_step_duration_seconds",
    "saga_fsm_step_retries_total",
    "saga_fsm_compensation_failures_total",
    "saga_fsm_lease_takeovers_total",
    "saga_fsm_leases_lost_total",
    "saga_fsm_snapshot_decode_failures_total",
    "saga_fsm_sagas_in_flight",
    "saga_fsm_sagas_stuck",
    "saga_fsm_oldest_due_saga_age_seconds",
    "saga_fsm_inbox_duplicates_total",
    "saga_fsm_stale_replies_total",
    "saga_fsm_outbox_backlog",
    "saga_fsm_outbox_oldest_unpublished_age_seconds",
    "saga_fsm_dead_letters",
)
"""Every series name ``SagaMetrics`` exposes (histograms add _bucket, _sum, _count)."""

"""The tracker: follows every instance of a choreography from its events alone and
records each as a saga snapshot with its history, in the same store as orchestrated
sagas (``saga-fsm ls/show/history`` read them unchanged).

It commands nothing. The one thing it may publish is the compensating event an
expectation names, for a stuck instance, when built with ``publish_compensations=True``.

Stored form: the snapshot's state is the Machine's (``running:<state>``,
``compensating:<failure>``, ``completed``, ``compensated``); one step record per state
visited (the current one ``running``); ``data`` holds the correlation keys, the event
path, the event ids seen (duplicates are recognised in the same write that applies an
event), the anomalies, ``stuck`` (the missing event) and what the tracker published;
``wake_at`` is the next expected event's deadline.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter
from datetime import datetime
from typing import Any

from attrs import evolve

from saga_fsm._clock import Clock, SystemClock
from saga_fsm._errors import ConcurrencyConflict, SagaNotFound, StoreError
from saga_fsm._snapshot import HistoryEntry, Snapshot, StepRecord, StepStatus
from saga_fsm.choreography._definition import PENDING, TRACKER, Choreography
from saga_fsm.choreography._events import channel, derived_id, event_id, event_messages, event_name
from saga_fsm.choreography._track import (
    EARLY,
    Anomaly,
    Decision,
    Instance,
    Observed,
    deadline,
    expire,
    track,
)
from saga_fsm.messaging import Delivery, Transport, TransportError
from saga_fsm.stores import SnapshotStore

log = logging.getLogger("saga_fsm.choreography")


class Unknown(enum.StrEnum):
    """What to do with an event for an instance the tracker has not seen start."""

    CREATE = "create"
    """Create the instance (``pending``) and record the event as an anomaly."""
    DISCARD = "discard"
    """Drop it (counted in ``Tracker.counts``)."""
    HOLD = "hold"
    """Deliver it again later, until its start event has arrived, for ``hold_for``
    seconds; then park it in the dead letters with the reason."""


def instance_id(c: Choreography, first_key: str) -> str:
    return f"{c.name}-{first_key}"


def to_snapshot(
    c: Choreography,
    saga_id: str,
    instance: Instance,
    anomalies: list[dict[str, Any]],
    ref: str | None,
) -> Snapshot:
    steps: dict[str, StepRecord] = {}
    due = deadline(c, instance)
    current = instance.state.partition(":")[2]
    for name, record in _visited(instance):
        steps[name] = record
    if current:
        steps[current] = StepRecord(current, StepStatus.RUNNING, started_at=instance.entered_at)
    return Snapshot(
        saga_id=saga_id,
        definition=c.name,
        definition_version=c.version,
        state=instance.state,
        steps=tuple(steps.values()),
        data={
            "keys": dict(instance.keys),
            "path": list(instance.path),
            "seen": list(instance.seen),
            "compensations_seen": list(instance.compensations_seen),
            "stuck": instance.stuck,
            "published": list(instance.published),
            "visited": list(instance.visited),
            "anomalies": anomalies,
            "entered_at": instance.entered_at.isoformat(),
        },
        created_at=instance.entered_at,
        updated_at=instance.entered_at,
        correlation_id=instance.keys.get(c.correlation[0]),
        wake_at=None if due is None or instance.stuck else due[1],
        definition_ref=ref,
    )


def _visited(instance: Instance) -> list[tuple[str, StepRecord]]:
    """A succeeded step record per state the instance has left."""
    left = [s.partition(":")[2] for s in instance.visited if s != instance.state]
    return [(name, StepRecord(name, StepStatus.SUCCEEDED)) for name in left if name]


def from_snapshot(snapshot: Snapshot) -> tuple[Instance, list[dict[str, Any]]]:
    data = snapshot.data
    instance = Instance(
        snapshot.state,
        datetime.fromisoformat(data["entered_at"]),
        keys=dict(data["keys"]),
        path=data["path"],
        seen=data["seen"],
        compensations_seen=data["compensations_seen"],
        stuck=data["stuck"],
        published=data["published"],
        visited=data["visited"],
    )
    return instance, list(data["anomalies"])


class Tracker:
    """Follows one choreography's instances; ``serve`` consumes its channel and checks
    expected events' deadlines every ``check_every`` seconds."""

    def __init__(
        self,
        choreography: Choreography,
        store: SnapshotStore,
        transport: Transport,
        *,
        unknown: Unknown = Unknown.HOLD,
        hold_for: float = 30.0,
        reorder_window: float = 5.0,
        retry_delay: float = 0.2,
        publish_compensations: bool = False,
        clock: Clock | None = None,
        ref: str | None = None,
    ) -> None:
        self.choreography = choreography
        self.store = store
        self.transport = transport
        self.unknown = Unknown(unknown)
        self.hold_for = hold_for
        self.reorder_window = reorder_window
        self.retry_delay = retry_delay
        self.publish_compensations = publish_compensations
        self.clock = clock or SystemClock()
        self.ref = ref
        self.counts: Counter[str] = Counter()
        self._index: dict[tuple[str, str], str] = {}
        self._first_seen: dict[str, datetime] = {}

    @property
    def channel(self) -> str:
        return channel(self.choreography, TRACKER)

    async def load_index(self) -> None:
        """Learn the secondary keys of the instances already stored, finished ones too:
        a duplicate known only by its secondary key is then recognised as one after a
        restart, as it is by a tracker that never restarted, not held and dead-lettered."""
        for item in await self.store.list(definition=self.choreography.name):
            if isinstance(item, Snapshot):
                self._learn(item.saga_id, item.data.get("keys", {}))

    def _learn(self, saga_id: str, keys: dict[str, str]) -> None:
        for key, value in keys.items():
            self._index[(key, value)] = saga_id

    def correlate(self, name: str, payload: dict[str, Any]) -> str | None:
        """The instance an event belongs to, by its first key the tracker knows."""
        c = self.choreography
        for key in c.keys_of(name):
            if key not in payload:
                continue
            value = str(payload[key])
            if key == c.correlation[0]:
                return instance_id(c, value)
            if (key, value) in self._index:
                return self._index[(key, value)]
        return None

    async def handle(self, delivery: Delivery) -> None:
        """Apply one delivered event; settle the delivery."""
        message = delivery.message
        name = event_name(message)
        c = self.choreography
        if name is None or name not in {e.name for e in c.events}:
            await delivery.dead_letter(f"not an event of {c.name}: {name!r}")
            return
        now = self.clock.now()
        observed = Observed(name, message.payload, event_id(message), now)
        saga_id = self.correlate(name, message.payload)
        try:
            snapshot = await self.store.load(saga_id) if saga_id else None
        except SagaNotFound:
            snapshot = None
        if snapshot is None:
            if name != c.start:
                await self._unknown(delivery, observed, saga_id)
                return
            assert saga_id is not None  # the start event carries the first key
            await self._apply(delivery, saga_id, None, Instance(PENDING, now), [], observed)
            return
        instance, anomalies = from_snapshot(snapshot)
        await self._apply(delivery, snapshot.saga_id, snapshot, instance, anomalies, observed)

    async def _unknown(self, delivery: Delivery, observed: Observed, saga_id: str | None) -> None:
        if self.unknown is Unknown.DISCARD:
            self.counts["discarded"] += 1
            await delivery.ack()
        elif self.unknown is Unknown.CREATE and saga_id is not None:
            instance = Instance(PENDING, observed.at)
            await self._apply(delivery, saga_id, None, instance, [], observed)
        elif self._waited(observed) < self.hold_for:
            self.counts["held"] += 1
            await delivery.nack(self.retry_delay)
        else:
            self.counts["dead"] += 1
            self._first_seen.pop(observed.message_id, None)
            await delivery.dead_letter(
                f"event {observed.name} {observed.message_id}: no instance started within"
                f" {self.hold_for}s"
            )

    def _waited(self, observed: Observed) -> float:
        first = self._first_seen.setdefault(observed.message_id, observed.at)
        return (observed.at - first).total_seconds()

    async def _apply(
        self,
        delivery: Delivery,
        saga_id: str,
        snapshot: Snapshot | None,
        instance: Instance,
        anomalies: list[dict[str, Any]],
        observed: Observed,
    ) -> None:
        c = self.choreography
        decision = track(c, instance, observed)
        if decision.duplicate:
            self.counts["duplicates"] += 1
            await delivery.ack()
            return
        early = [a for a in decision.anomalies if a.kind == EARLY]
        if early and self._waited(observed) < self.reorder_window:
            self.counts["reordered"] += 1
            await delivery.nack(self.retry_delay)
            return
        self._first_seen.pop(observed.message_id, None)
        history = _history(instance, decision, observed)
        if decision.anomalies:
            self.counts["anomalies"] += 1
            anomalies = [*anomalies, *(_anomaly(a, observed) for a in decision.anomalies)]
            # A recorded anomaly is seen: its redelivery is a duplicate, not a new anomaly.
            after = evolve(instance, seen=(*instance.seen, observed.message_id))
        else:
            after = decision.instance
        new = to_snapshot(c, saga_id, after, anomalies, self.ref)
        new = evolve(
            new, updated_at=observed.at, created_at=snapshot.created_at if snapshot else observed.at
        )
        try:
            if snapshot is None:
                await self.store.create(new, history)
            else:
                await self.store.save(new, history, expected_version=snapshot.version)
        except ConcurrencyConflict:
            await delivery.nack(0.0)  # another tracker wrote first: decide again on fresh state
            return
        self._learn(saga_id, after.keys)
        self.counts["events"] += 1
        await delivery.ack()

    async def check_deadlines(self) -> list[Snapshot]:
        """Mark every instance whose expected event is overdue stuck (the event named);
        publish its compensating event first when asked (same event id every time, so a
        crash before the write publishes nothing new). Returns the instances marked."""
        c = self.choreography
        now = self.clock.now()
        marked: list[Snapshot] = []
        for item in await self.store.list(definition=c.name, unfinished=True):
            if not isinstance(item, Snapshot) or item.wake_at is None or item.wake_at > now:
                continue
            instance, anomalies = from_snapshot(item)
            decision = expire(c, instance, now)
            if decision.instance == instance:
                continue
            commands = decision.commands if self.publish_compensations else ()
            after = decision.instance
            if not self.publish_compensations:
                after = evolve(after, published=instance.published)
            for command in commands:
                for message in event_messages(
                    c,
                    command.event,
                    dict(instance.keys),
                    event_id=derived_id(item.saga_id, "compensate", command.event),
                ):
                    await self.transport.publish(message)
                self.counts["compensations"] += 1
            entry = HistoryEntry(
                instance.state,
                instance.state,
                "stuck",
                now,
                {"missing": after.stuck, "published": [cmd.event for cmd in commands]},
            )
            new = evolve(
                to_snapshot(c, item.saga_id, after, anomalies, self.ref),
                created_at=item.created_at,
                updated_at=item.updated_at,
            )
            try:
                marked.append(await self.store.save(new, [entry], expected_version=item.version))
            except ConcurrencyConflict:
                continue  # an event moved it meanwhile
            self.counts["stuck"] += 1
        return marked

    async def _handle_or_retry(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except StoreError as err:  # the store is away: the event waits, nothing is decided
            log.warning("tracker %s: %s; event delivered again in 1s", self.choreography.name, err)
            await delivery.nack(1.0)

    async def serve(self, *, stop: asyncio.Event | None = None, check_every: float = 1.0) -> None:
        """Consume the tracker's channel and check deadlines until ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.load_index()
        subscription = await self.transport.subscribe(self.channel, prefetch=64)
        loop = asyncio.get_running_loop()
        next_check = loop.time()
        try:
            while not stop.is_set():
                try:
                    if loop.time() >= next_check:
                        await self.check_deadlines()
                        next_check = loop.time() + check_every
                    delivery = await subscription.receive(timeout=min(0.5, check_every))
                    if delivery is not None:
                        await self._handle_or_retry(delivery)
                except (TransportError, StoreError) as err:
                    log.warning("tracker %s: %s; again in 1s", self.choreography.name, err)
                    await asyncio.sleep(1.0)
        finally:
            try:
                await subscription.close()
            except TransportError as err:  # what it held comes back to the next tracker
                log.warning("tracker %s: %s", self.choreography.name, err)


def _history(before: Instance, decision: Decision, observed: Observed) -> list[HistoryEntry]:
    detail: dict[str, Any] = {"event_id": observed.message_id}
    if decision.anomalies:
        detail["anomaly"] = decision.anomalies[0].kind
        return [
            HistoryEntry(
                before.state, before.state, f"anomaly:{observed.name}", observed.at, detail
            )
        ]
    return [HistoryEntry(before.state, decision.instance.state, observed.name, observed.at, detail)]


def _anomaly(anomaly: Anomaly, observed: Observed) -> dict[str, Any]:
    return {
        "kind": anomaly.kind,
        "event": anomaly.event,
        "state": anomaly.state,
        "event_id": anomaly.message_id,
        "at": observed.at.isoformat(),
    }

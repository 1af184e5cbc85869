"""One example of exploring a choreography: simulated participants, a simulated broker
and the real tracker.

The participants publish what the choreography's table allows next (``track``, the
tracker's own decision on its Machine, says which events are legal), and the broker
delivers them to a real ``Tracker`` (``handle``, ``check_deadlines`` and ``load_index``:
the code a tracker process runs) on a real store. In between, faults: an event is lost
(nobody reacts to it, so its instance stops there, but for the other compensations of
the same failure), delivered twice, delivered out of order, or published late (after
its expectation's deadline has passed); the tracker restarts with an empty memory, also
between publishing a compensating event and recording that it did.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from attrs import define, field

from saga_fsm._clock import FakeClock
from saga_fsm._errors import InvalidArgument, SagaNotFound
from saga_fsm._snapshot import HistoryEntry
from saga_fsm.choreography._definition import (
    COMPENSATED,
    COMPLETED,
    PENDING,
    TRACKER,
    Choreography,
)
from saga_fsm.choreography._events import channel, event_messages
from saga_fsm.choreography._track import Instance, Observed, deadline, legal_here, track
from saga_fsm.choreography._tracker import Tracker, Unknown, from_snapshot, instance_id
from saga_fsm.messaging import Delivery, Message
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.testing._invariants import InvariantViolation

T = TypeVar("T")
T0 = datetime(2000, 1, 1, tzinfo=UTC)
_SETTLE_LIMIT = 20_000


class EventFault(enum.StrEnum):
    """What can go wrong between a choreography's participants and its tracker."""

    LOST = "lost"
    """Published but never delivered: nobody reacts to it."""
    DUPLICATED = "duplicated"
    """Delivered twice (a participant published it again after a crash)."""
    REORDERED = "reordered"
    """Delivered in any order, not the order it was published in."""
    LATE = "late"
    """Published after the deadline of the event its instance awaits."""
    TRACKER_CRASH = "tracker_crash"
    """The tracker restarts (its memory lost, the store kept), also between publishing a
    compensating event and recording it."""


def event_faults(values: Iterable[EventFault | str] | None) -> tuple[EventFault, ...]:
    if values is None:
        return tuple(EventFault)
    if isinstance(values, str):
        values = [values]
    found: list[EventFault] = []
    for value in values:
        try:
            found.append(EventFault(value))
        except ValueError:
            names = ", ".join(f.value for f in EventFault)
            raise InvalidArgument(f"unknown fault {value!r}: faults are {names}") from None
    return tuple(dict.fromkeys(found))


@define
class WorldConfig:
    choreography: Choreography
    faults: tuple[EventFault, ...]
    instances: int
    unknown: Unknown
    reorder_window: float
    hold_for: float
    publish_compensations: bool


@define
class Run:
    """One instance as its participants see it."""

    number: int
    key: str
    truth: Instance
    """Where the participants have taken it (what they published, lost or not)."""
    produced: list[tuple[str, str]] = field(factory=list)
    """(event, event id) in the order published."""
    causes: list[frozenset[int]] = field(factory=list)
    """For each event published, the events (indices into ``produced``) it reacted to."""
    entered_by: int | None = None
    """The event that moved ``truth`` into its state: what the next event reacts to."""
    lost: list[str] = field(factory=list)
    lost_ids: set[str] = field(factory=set)
    late: list[tuple[str, int | None]] = field(factory=list)
    """Events its participants publish only once time has passed (with their cause)."""
    halted: bool = False
    """A lost event stopped the chain: nobody reacts until the tracker publishes."""

    @property
    def name(self) -> str:
        return f"o{self.number}"


class _Crash(Exception):
    """The tracker process dies right after the broker took its message."""


class _Settle:
    def __init__(self, world: World, message: Message, count: int) -> None:
        self.world, self.message, self.count = world, message, count
        self.acked = False

    async def ack(self) -> None:
        self.acked = True

    async def nack(self, delay: float) -> None:
        self.world.queue.append((self.message, self.count + 1))

    async def dead_letter(self, reason: str) -> None:
        self.world.dead.append((self.message, reason))


class _Broker(MemoryTransport):
    """What the tracker publishes (compensating events) comes to the world."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.crash_on_publish = False

    async def publish(self, message: Message) -> None:
        await self.world.tracker_published(message)
        if self.crash_on_publish and message.channel == self.world.channel:
            self.crash_on_publish = False
            raise _Crash


class World:
    """One example: its event loop, store, broker, tracker and instances."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.c = config.choreography
        self.channel = channel(self.c, TRACKER)
        self.clock = FakeClock(T0)
        self.store = MemoryStore()
        self.broker = _Broker(self)
        self.runs: list[Run] = []
        self.queue: deque[tuple[Message, int]] = deque()
        self.dead: list[tuple[Message, str]] = []
        self.timeline: list[str] = []
        self.publications: Counter[str] = Counter()
        self.crashes = 0
        self.stuck_on: set[str] = set()
        self.broken = False
        self._loop = asyncio.new_event_loop()
        self.tracker = self._new_tracker()
        waits = [e.within for e in self.c.expectations]
        self.pause = max([*waits, config.reorder_window, config.hold_for]) + 1.0

    # -- plumbing -------------------------------------------------------------------------
    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self._loop.run_until_complete(wrapped())

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()

    def _new_tracker(self) -> Tracker:
        cfg = self.config
        return Tracker(
            self.c,
            self.store,
            self.broker,
            unknown=cfg.unknown,
            hold_for=cfg.hold_for,
            reorder_window=cfg.reorder_window,
            publish_compensations=cfg.publish_compensations,
            clock=self.clock,
        )

    def note(self, text: str) -> None:
        self.timeline.append(text)

    @property
    def path(self) -> str:
        return " -> ".join(self.timeline) if self.timeline else "(nothing happened)"

    def violation(self, invariant: str, reason: str, run: Run | None = None) -> NoReturn:
        self.broken = True
        raise InvariantViolation(invariant, reason, path=self.path, saga=run.number if run else 1)

    # -- what the participants do ---------------------------------------------------------
    def can_start(self) -> bool:
        return len(self.runs) < self.config.instances

    def start(self) -> Run:
        run = Run(len(self.runs) + 1, f"k{len(self.runs) + 1}", Instance(PENDING, T0))
        self.runs.append(run)
        self._produce(run, self.c.start, lost=False, copies=1)
        return run

    def next_events(self, run: Run) -> list[str]:
        """What the participants may publish next for ``run``."""
        if run.halted or run.late or run.truth.finished:
            return []
        state, done = run.truth.state, run.truth.compensations_seen
        return [
            e.name
            for e in self.c.events
            if legal_here(self.c, state, e.name) and e.name not in done
        ]

    def producing(self) -> list[Run]:
        return [r for r in self.runs if self.next_events(r)]

    def may_be_late(self, run: Run) -> bool:
        return deadline(self.c, run.truth) is not None

    def publish(self, run: Run, name: str, fault: EventFault | None = None) -> None:
        if fault is EventFault.LATE:
            run.late.append((name, run.entered_by))
            self.note(f"{run.name} {name} delayed")
            return
        copies = 2 if fault is EventFault.DUPLICATED else 1
        self._produce(run, name, lost=fault is EventFault.LOST, copies=copies)

    def _payload(self, run: Run, name: str) -> dict[str, Any]:
        first = self.c.correlation[0]
        return {k: run.key if k == first else f"{k}-{run.key}" for k in self.c.keys_of(name)}

    def _produce(
        self,
        run: Run,
        name: str,
        *,
        lost: bool,
        copies: int,
        event_id: str | None = None,
        causes: frozenset[int] | None = None,
    ) -> None:
        index = len(run.produced)
        event_id = event_id or f"{run.key}-{index}-{name}"
        if causes is None:
            causes = frozenset(() if run.entered_by is None else (run.entered_by,))
        before = run.truth.state
        run.produced.append((name, event_id))
        run.causes.append(causes)
        observed = Observed(name, self._payload(run, name), event_id, self.clock.now())
        run.truth = track(self.c, run.truth, observed).instance
        if run.truth.state != before:
            run.entered_by = index
        if lost:
            run.lost.append(name)
            run.lost_ids.add(event_id)
            # Compensations react to the failure, not to each other: only they go on.
            failure = before.partition(":")[2] if before.startswith("compensating:") else None
            if failure is None or name not in self.c.compensations_of(failure):
                run.halted = True
            self.note(f"{run.name} {name} lost")
            return
        message = self._message(run, name, event_id)
        self.queue.extend((message, 1) for _ in range(copies))
        self.note(f"{run.name} {name}" + (" (twice)" if copies > 1 else ""))

    def _message(self, run: Run, name: str, event_id: str) -> Message:
        return event_messages(self.c, name, self._payload(run, name), event_id=event_id)[0]

    def _run_of(self, message: Message) -> Run:
        first = self.c.correlation[0]
        key, value = next(iter(message.payload.items()))
        wanted = str(value) if key == first else str(value).removeprefix(f"{key}-")
        return next(r for r in self.runs if r.key == wanted)

    async def tracker_published(self, message: Message) -> None:
        """The tracker published a compensating event: the participants react to it."""
        if message.channel != self.channel:
            return  # a consumer's copy: the tracker's copy stands for the event
        run, name = self._run_of(message), message.headers.step or ""
        event_id = message.headers.idempotency_key or message.message_id
        self.publications[f"{run.name} {name} {event_id}"] += 1
        if any(i == event_id for _, i in run.produced):
            self.queue.append((message, 1))  # published again after a crash: a duplicate
            self.note(f"tracker publishes {name} for {run.name} again")
            return
        # The participants go on from where the tracker was: it reacted to all it saw.
        run.truth = from_snapshot(await self.store.load(instance_id(self.c, run.key)))[0]
        run.halted = False
        seen = frozenset(i for i, (_, e) in enumerate(run.produced) if e not in run.lost_ids)
        self.note(f"tracker publishes {name} for {run.name}")
        self._produce(run, name, lost=False, copies=1, event_id=event_id, causes=seen)
        run.entered_by = len(run.produced) - 1

    # -- what the broker and the tracker do -----------------------------------------------
    def deliver(self, index: int = 0) -> bool:
        """Hand the ``index``-th queued message to the tracker; True if it was acked."""
        message, count = self.queue[index]
        del self.queue[index]
        settle = _Settle(self, message, count)
        self.run(self.tracker.handle(Delivery(message, count, settle=settle)))
        if index:
            self.note(f"{self._run_of(message).name} {message.headers.step} delivered early")
        return settle.acked

    def restart_tracker(self) -> None:
        self.tracker = self._new_tracker()
        self.run(self.tracker.load_index())
        self.note("tracker restarts")

    def time_passes(self, crash: bool = False) -> None:
        """Every deadline passes; the tracker checks them; late events are published."""
        self.clock.advance(self.pause)
        self.note(f"{self.pause:g}s pass")
        self.broker.crash_on_publish = crash
        try:
            marked = self.run(self.tracker.check_deadlines())
        except _Crash:
            self.crashes += 1
            self.note("tracker crashes after publishing")
            self.restart_tracker()
            marked = self.run(self.tracker.check_deadlines())
        finally:
            self.broker.crash_on_publish = False
        for snapshot in marked:
            run = next(r for r in self.runs if instance_id(self.c, r.key) == snapshot.saga_id)
            missing = snapshot.data["stuck"]
            self.stuck_on.add(missing)
            self.note(f"{run.name} stuck waiting for {missing}")
        for run in self.runs:
            late, run.late = run.late, []
            for name, cause in late:
                causes = frozenset(() if cause is None else (cause,))
                self._produce(run, name, lost=False, copies=1, causes=causes)

    def settle(self) -> None:
        """Deliver everything queued, in order; when only held events are left, let the
        tracker's windows pass (time goes on in production too)."""
        idle = 0
        for _ in range(_SETTLE_LIMIT):
            if not self.queue:
                return
            idle = 0 if self.deliver() else idle + 1
            if idle > len(self.queue):
                self.clock.advance(max(self.config.reorder_window, self.config.hold_for) + 1)
                self.note("the tracker's waiting windows pass")
                idle = 0
        names = sorted({m.headers.step or "" for m, _ in self.queue})
        self.violation("tracker_settles", f"events are delivered again forever: {names}")

    # -- the end of an example --------------------------------------------------------------
    def finish(self) -> None:
        """Let every instance run to its end without faults: what the participants still
        publish, along a shortest way to an end; deadlines passing; the tracker's
        compensating events and what follows them."""
        for _ in range(4 * len(self.c.events) + 8):
            self.settle()
            moved = False
            for run in self.runs:
                live = not (run.halted or run.late or run.truth.finished)
                while live:
                    way = shortest_to_end(self.c, run.truth)
                    if way is None:
                        self.violation(
                            "every_state_can_end",
                            f"{run.name} is in {run.truth.state}, from where no events lead"
                            f" to {COMPLETED} or {COMPENSATED}",
                            run,
                        )
                    if not way:
                        break
                    self._produce(run, way[0], lost=False, copies=1)
                    moved = True
                    live = not (run.halted or run.late or run.truth.finished)
            self.settle()
            published = sum(len(r.produced) for r in self.runs)
            self.time_passes()
            self.settle()
            if not moved and sum(len(r.produced) for r in self.runs) == published:
                return

    def history(self, run: Run) -> list[HistoryEntry]:
        return self.run(self.store.history(instance_id(self.c, run.key)))

    def check(self, *, final: bool) -> None:
        """The choreography's properties: nothing dead-lettered, no compensating event
        published twice; at the end, each instance where its delivered events lead and
        completed, compensated or stuck naming the event it awaits."""
        if self.dead:
            message, reason = self.dead[0]
            self.violation("nothing_dead_lettered", f"{message.headers.step}: {reason}")
        for publication, count in self.publications.items():
            if count > 1 + self.crashes:
                self.violation("compensations_published_once", f"{publication} x{count}")
        if not final:
            return
        for run in self.runs:
            self._check_run(run)

    def _check_run(self, run: Run) -> None:
        c, saga_id = self.c, instance_id(self.c, run.key)
        try:
            snapshot = self.run(self.store.load(saga_id))
        except SagaNotFound:
            self.violation("every_instance_accounted_for", f"{saga_id} was never recorded", run)
        instance, anomalies = from_snapshot(snapshot)
        order = self._applied_order(run)
        ancestors = _ancestors(run.causes)
        position = {index: at for at, index in enumerate(order)}
        anomalous = {a["event_id"] for a in anomalies}

        def explained(index: int) -> bool:
            """An event out of place because a concurrent one came first (a late event
            racing the tracker's compensating event) is an anomaly, not a fault."""
            before = order[: position[index]]
            return any(_concurrent(ancestors, index, other) for other in before)

        for index in order:
            if run.produced[index][1] in anomalous and explained(index):
                continue
            for cause in sorted(ancestors[index]):
                # Applied after what it reacts to, or after the same event published
                # by someone else (a late event and the tracker's compensating one).
                same = [
                    position[i]
                    for i, (name, _) in enumerate(run.produced)
                    if name == run.produced[cause][0] and i in position
                ]
                if cause in position and min(same) > position[index]:
                    self.violation(
                        "tracker_follows_causal_order",
                        f"{run.name}: the tracker applied {run.produced[index][0]} before"
                        f" {run.produced[cause][0]}, which it reacts to",
                        run,
                    )
        expected = Instance(PENDING, T0)
        for index in order:
            name, event_id = run.produced[index]
            observed = Observed(name, self._payload(run, name), event_id, T0)
            expected = track(c, expected, observed).instance
        if instance.state != expected.state:
            self.violation(
                "tracker_follows_causal_order",
                f"the tracker has {run.name} in {instance.state}; the events it applied lead"
                f" to {expected.state}",
                run,
            )
        for anomaly in anomalies:
            index = next(i for i, (_, e) in enumerate(run.produced) if e == anomaly["event_id"])
            if not explained(index):
                self.violation(
                    "no_unexplained_anomalies",
                    f"{run.name}: {anomaly['event']} is not legal in {anomaly['state']}, though"
                    " every event it follows was applied and no concurrent event came first"
                    + (" (the tracker published it)" if len(run.causes[index]) > 1 else ""),
                    run,
                )
        if instance.finished:
            return
        if instance.stuck is not None and legal_here(c, instance.state, instance.stuck):
            return
        lost = f"{', '.join(run.lost)} lost" if run.lost else "nothing lost"
        self.violation(
            "every_instance_accounted_for",
            f"{run.name} ended in {instance.state}, neither {COMPLETED}, {COMPENSATED} nor"
            f" stuck ({lost}): expect() the events awaited there, so a missing one is noticed",
            run,
        )

    def _applied_order(self, run: Run) -> list[int]:
        """The events the tracker applied (or recorded as anomalies), in its order; each
        delivered event exactly once."""
        index_of = {event_id: i for i, (_, event_id) in enumerate(run.produced)}
        order: list[int] = []
        for entry in self.history(run):
            event_id = entry.detail.get("event_id")
            if event_id is None:
                continue
            index = index_of[event_id]
            if index in order:
                self.violation(
                    "every_event_applied_once",
                    f"{run.name}: {run.produced[index][0]} was applied twice",
                    run,
                )
            order.append(index)
        for index, (name, event_id) in enumerate(run.produced):
            if event_id not in run.lost_ids and index not in order:
                self.violation(
                    "every_event_applied_once",
                    f"{run.name}: {name} was delivered but the tracker never applied it",
                    run,
                )
        return order


def _ancestors(causes: list[frozenset[int]]) -> list[frozenset[int]]:
    """Every event each event happened after (causes always precede what they cause)."""
    found: list[frozenset[int]] = []
    for direct in causes:
        found.append(frozenset(direct).union(*(found[i] for i in direct)))
    return found


def _concurrent(ancestors: list[frozenset[int]], a: int, b: int) -> bool:
    return a != b and a not in ancestors[b] and b not in ancestors[a]


def shortest_to_end(c: Choreography, start: Instance) -> list[str] | None:
    """A shortest sequence of events from ``start`` to ``completed`` or ``compensated``."""
    todo: deque[tuple[Instance, list[str]]] = deque([(start, [])])
    seen = {(start.state, frozenset(start.compensations_seen))}
    while todo:
        instance, way = todo.popleft()
        if instance.finished:
            return way
        for event in c.events:
            observed = Observed(event.name, {}, f"way-{len(instance.seen)}", T0)
            decision = track(c, instance, observed)
            if not decision.moved:
                continue
            after = decision.instance
            key = (after.state, frozenset(after.compensations_seen))
            if key not in seen:
                seen.add(key)
                todo.append((after, [*way, event.name]))
    return None

"""Workers: claim due sagas from a shared store and drive them, many at once.

Any number of workers, in any number of processes and machines, can share one store:
the store hands each due saga to one of them under a lease with an expiry, renewed
while the worker drives it. A worker that dies stops renewing; once its leases expire,
the others take its sagas over from their last snapshot.

A worker runs only the definitions registered with its orchestrator: it claims sagas
of those (name, version) pairs pinned to those tables (fingerprints) and leaves the
others to workers that serve them. A row
it cannot decode is quarantined: set aside in the store, no longer claimed by anyone,
until an operator fixes it and lets it go (``saga-fsm unquarantine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from saga_fsm._clock import seconds
from saga_fsm._errors import (
    InvalidArgument,
    SagaError,
    SnapshotDecodeError,
    StoreError,
    UnknownDefinition,
)
from saga_fsm._executor import SagaExecutor
from saga_fsm._fingerprint import short
from saga_fsm._logging import get_logger
from saga_fsm._snapshot import Snapshot
from saga_fsm._versions import find_unrunnable
from saga_fsm.messaging._protocol import Transport

log = get_logger("saga_fsm.worker")

# At most this many sagas per claim (a full claim is followed by another at once): a worker
# with thousands of free slots does not hold thousands of rows in one result at a time.
_CLAIM_BATCH = 256
# Sagas of each name a starting worker looks at for ones pinned to other tables: a
# bound on what it decodes and keeps, however large the store.
_LOOK_AT = 10_000


class Worker:
    """Claims due sagas and drives up to ``concurrency`` of them at a time.

    Retry back-offs up to ``max_hold`` seconds are waited out in the worker; longer
    ones release the lease, leaving the wake-up time in the store (a durable timer).
    When the store cannot be reached the worker backs off (doubling up to
    ``max_backoff`` seconds) and keeps trying: it never exits on an outage.

    With a ``transport``, the worker also consumes the participants' replies to its
    remote steps (on ``reply_channel.<definition>`` for each definition it serves) and,
    unless ``relay`` is False,
    runs an outbox relay publishing the commands of remote steps (``saga-fsm relay``
    runs one alone).

    It logs (logger ``saga_fsm.worker``) a start line naming ``store_name`` (default:
    the store's repr, which never holds a password), the definitions it serves and its
    concurrency; a summary every ``summary_every`` seconds while busy; each claim at
    DEBUG.
    """

    def __init__(
        self,
        orchestrator: SagaExecutor,
        *,
        concurrency: int = 8,
        poll_interval: float = 0.2,
        max_hold: float = 1.0,
        max_backoff: float = 5.0,
        summary_every: float = 10.0,
        store_name: str | None = None,
        transport: Transport | None = None,
        relay: bool = True,
    ) -> None:
        if concurrency < 1:
            raise InvalidArgument(f"concurrency must be at least 1, got {concurrency}")
        if not orchestrator.served:
            raise InvalidArgument(
                "a worker needs the definitions it serves: register them with its executor"
            )
        for name, value in (
            ("poll_interval", poll_interval),
            ("max_hold", max_hold),
            ("max_backoff", max_backoff),
        ):
            seconds(name, value)
        self.orchestrator = orchestrator
        self.transport = transport
        self.relay = relay
        self.summary_every = summary_every
        self.store_name = store_name if store_name is not None else repr(orchestrator.store)
        # Since the last summary: claimed, completed, compensated, failed.
        self.counts: Counter[str] = Counter()
        self._bad: set[str] = set()  # undecodable rows leased here, not yet quarantined
        self._left: set[str] = set()  # sagas of tables not registered here, leased here
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.max_hold = max_hold
        self.max_backoff = max_backoff
        self._tasks: set[asyncio.Task[Snapshot]] = set()
        self._saga_of: dict[asyncio.Task[Snapshot], str] = {}
        self._freed: asyncio.Event | None = None
        self.driven = 0

    @property
    def worker_id(self) -> str:
        return self.orchestrator.worker_id

    async def run(self, stop: asyncio.Event, *, grace: float = 30.0) -> None:
        """Serve until ``stop`` is set, then shut down gracefully: stop claiming, let
        in-flight steps finish for up to ``grace`` seconds, then cancel what is left and
        release its leases so another worker resumes it at once."""
        seconds("grace", grace, allow_zero=True)
        backoff = self.poll_interval
        self._freed = asyncio.Event()  # bound to this run's event loop
        store, clock = self.orchestrator.store, self.orchestrator.clock
        # Each table by its own fingerprint (listed first), not the older ones it accepts.
        served = self.orchestrator.claimable
        tables: dict[tuple[str, int], str] = {}
        for name, version, table in served:
            tables.setdefault((name, version), table)
        log.info(
            "worker %s serving %s from %s, concurrency %d",
            self.worker_id,
            ", ".join(
                f"{name} v{version} ({short(table)})" for (name, version), table in tables.items()
            ),
            self.store_name,
            self.concurrency,
        )
        # Beside the claims, not before them: a large store takes a while to look at.
        looking = asyncio.create_task(self._left_behind())
        last_summary = time.monotonic()
        messaging = self._messaging(stop)
        try:
            while not stop.is_set():
                if time.monotonic() - last_summary >= self.summary_every:
                    self._summary()
                    last_summary = time.monotonic()
                self._freed.clear()  # a saga finishing from now on ends the idle wait
                free = self.concurrency - len(self._tasks)
                claimed: list[Snapshot | SnapshotDecodeError] = []
                if free > 0:
                    try:
                        claimed = await store.claim_due(
                            self.worker_id,
                            now=clock.now(),
                            lease_seconds=self.orchestrator.lease_seconds,
                            limit=min(free, _CLAIM_BATCH),
                            definitions=served,
                        )
                        backoff = self.poll_interval
                    except StoreError as err:
                        log.warning(
                            "worker %s: store unavailable (%s); retrying in %.1fs",
                            self.worker_id,
                            err,
                            backoff,
                        )
                        await _wait(stop, backoff)
                        backoff = min(backoff * 2, self.max_backoff)
                        continue
                for item in claimed:
                    self.counts["claimed"] += 1
                    if isinstance(item, SnapshotDecodeError):
                        await self._quarantine(item)
                        continue
                    if not self._runs_here(item):
                        continue
                    log.debug(
                        "claimed saga %s (%s)",
                        item.saga_id,
                        item.state,
                        extra={"saga_id": item.saga_id, "correlation_id": item.correlation_id},
                    )
                    self._start(item)
                full = free > 0 and len(claimed) == min(free, _CLAIM_BATCH)
                claimed = []  # each is now its task's alone: do not keep them alive here
                if full:
                    continue  # there may be more due work: claim again at once
                await self._idle(stop)
        finally:
            looking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await looking
            await self._shutdown(grace)
            for task in messaging:
                # Given the stop signal too: they finish what they hold, then return
                # (cancelled when the worker stopped for another reason).
                if not stop.is_set():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._summary()
        log.info("worker %s stopped", self.worker_id)

    async def _left_behind(self) -> None:
        """Say once, at start, which sagas of the versions served here this worker will
        leave because they are pinned to another table of that version (looking at the
        newest ``_LOOK_AT`` unfinished and parked sagas of each name, at most)."""
        try:
            found = await find_unrunnable(
                self.orchestrator.store,
                self.orchestrator.definitions,
                names={name for name, _ in self.orchestrator.served},
                limit=_LOOK_AT,
            )
        except SagaError as err:
            log.warning("worker %s: could not look for unrunnable sagas: %s", self.worker_id, err)
            return
        served = self.orchestrator.served
        groups = Counter(
            (s.definition, s.definition_version, s.definition_fingerprint)
            for s in (u.snapshot for u in found)
            if (s.definition, s.definition_version) in served
        )
        for (name, version, pinned), count in sorted(groups.items(), key=str):
            table = (
                "started before fingerprints, on other steps"
                if pinned is None
                else f"pinned to table {short(pinned)}"
            )
            log.warning(
                "worker %s: leaving %d saga(s) of %s v%d %s, not the table registered"
                " here: they need a worker with theirs (saga-fsm ls --unrunnable)",
                self.worker_id,
                count,
                name,
                version,
                table,
            )

    def _messaging(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The reply consumer and the relay, when the worker has a transport."""
        if self.transport is None:
            return []
        from saga_fsm._replies import ReplyConsumer
        from saga_fsm.messaging._relay import OutboxRelay

        consumer = ReplyConsumer(self.orchestrator, self.transport, concurrency=self.concurrency)
        log.info(
            "worker %s: replies on %s over the %s transport%s",
            self.worker_id,
            ", ".join(consumer.channels()),
            self.transport.name,
            ", relaying the outbox" if self.relay else "",
        )
        tasks = [asyncio.create_task(consumer.run(stop))]
        if self.relay:
            store = self.orchestrator.outbox_store()
            relay = OutboxRelay(
                store,
                self.transport,
                self.worker_id,
                clock=self.orchestrator.clock,
                wake=self.orchestrator.outbox_written,
                observer=self.orchestrator.observer,
            )
            tasks.append(asyncio.create_task(relay.run(stop)))
        return tasks

    def _summary(self) -> None:
        """One line of what happened since the last one; nothing when idle."""
        if not self.counts and not self._tasks:
            return
        c = self.counts
        log.info(
            "worker %s: claimed %d, completed %d, compensated %d, failed %d, in flight %d",
            self.worker_id,
            c["claimed"],
            c["completed"],
            c["compensated"],
            c["failed"],
            len(self._tasks),
        )
        c.clear()

    async def _quarantine(self, err: SnapshotDecodeError) -> None:
        """Set an undecodable row aside so that no worker claims it again after every
        lease expiry; if the store cannot take that now, the lease is released at
        shutdown and the next claim tries again."""
        saga_id = str(err.saga_id)
        log.error("quarantining saga %s: %s", saga_id, err.reason, extra={"saga_id": saga_id})
        self.orchestrator.observer.decode_failed(err)
        try:
            await self.orchestrator.store.quarantine(
                saga_id, err.reason, now=self.orchestrator.clock.now()
            )
        except SagaError as failed:
            log.warning("saga %s: quarantine failed (%s)", saga_id, failed)
            self._bad.add(saga_id)

    def _runs_here(self, snapshot: Snapshot) -> bool:
        """Whether the claimed saga's table is registered here. One the claim could not
        tell apart (started before fingerprints, its step records from another table) is
        left untouched and logged once; its lease is kept until it runs out, so that it
        is not claimed again at every poll, then any worker with its table takes it."""
        try:
            self.orchestrator.definitions.compiled_for(snapshot)
        except UnknownDefinition as err:
            if snapshot.saga_id not in self._left:
                log.warning("worker %s: leaving saga %s: %s", self.worker_id, snapshot.saga_id, err)
            self._left.add(snapshot.saga_id)
            return False
        return True

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for a poll tick, a finished saga (a free slot), or the stop signal.

        A finished saga sets ``_freed`` from its done callback: waiting on every task
        in flight instead would hang a callback on each of them at every poll."""
        assert self._freed is not None
        stopper = asyncio.create_task(stop.wait())
        freed = asyncio.create_task(self._freed.wait())
        try:
            await asyncio.wait(
                {stopper, freed}, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
            freed.cancel()

    def _start(self, snapshot: Snapshot) -> None:
        """Drive one claimed saga in its own task. The task runs ``drive`` itself (no
        wrapper coroutine: every saga in flight keeps its frames alive) and reports how
        it ended from its done callback, ``_finished``."""
        self.orchestrator.observer.claimed(snapshot)
        task = asyncio.create_task(self.orchestrator.drive(snapshot, max_hold=self.max_hold))
        self._tasks.add(task)
        self._saga_of[task] = snapshot.saga_id
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Snapshot]) -> None:
        self._tasks.discard(task)
        saga_id = self._saga_of.pop(task, "?")
        if self._freed is not None:
            self._freed.set()
        if task.cancelled():
            return
        err = task.exception()
        if err is None:
            self.driven += 1
            state = task.result().state
            if state in ("completed", "compensated", "failed"):
                self.counts[state] += 1
        elif isinstance(err, SagaError):
            # A store outage mid-saga: the lease runs out and the saga is retried later;
            # this worker goes on with the others.
            log.error("worker %s: saga %s: %s", self.worker_id, saga_id, err)
        else:
            log.error(
                "worker %s: saga %s failed unexpectedly",
                self.worker_id,
                saga_id,
                exc_info=(type(err), err, err.__traceback__),
            )

    async def _shutdown(self, grace: float) -> None:
        for saga_id in sorted(self._bad | self._left):
            # Rows this worker leased but cannot run: free them for the next claimer now.
            with contextlib.suppress(SagaError):
                await self.orchestrator.store.release(saga_id, self.worker_id)
        self._bad.clear()
        self._left.clear()
        if not self._tasks:
            return
        log.info(
            "worker %s: waiting up to %.0fs for %d saga(s)", self.worker_id, grace, len(self._tasks)
        )
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()  # drive() releases the lease on the way out
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

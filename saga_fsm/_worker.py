"""Workers: claim due sagas from a shared store and drive them, many at once.

Any number of workers, in any number of processes and machines, can share one store:
the store hands each due saga to one of them under a lease with an expiry, renewed
while the worker drives it. A worker that dies stops renewing; once its leases expire,
the others take its sagas over from their last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from saga_fsm._clock import seconds
from saga_fsm._errors import SagaError, SnapshotDecodeError, StoreError
from saga_fsm._orchestrator import Orchestrator
from saga_fsm._snapshot import Snapshot

log = logging.getLogger("saga_fsm.worker")

# At most this many sagas per claim (a full claim is followed by another at once): a worker
# with thousands of free slots does not hold thousands of rows in one result at a time.
_CLAIM_BATCH = 256


class Worker:
    """Claims due sagas and drives up to ``concurrency`` of them at a time.

    Retry back-offs up to ``max_hold`` seconds are waited out in the worker; longer
    ones release the lease, leaving the wake-up time in the store (a durable timer).
    When the store cannot be reached the worker backs off (doubling up to
    ``max_backoff`` seconds) and keeps trying: it never exits on an outage.
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        concurrency: int = 8,
        poll_interval: float = 0.2,
        max_hold: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        for name, value in (
            ("poll_interval", poll_interval),
            ("max_hold", max_hold),
            ("max_backoff", max_backoff),
        ):
            seconds(name, value)
        self.orchestrator = orchestrator
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
        log.info("worker %s serving", self.worker_id)
        try:
            while not stop.is_set():
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
                    if isinstance(item, SnapshotDecodeError):
                        log.error("worker %s: skipping saga: %s", self.worker_id, item)
                        continue
                    self._start(item)
                full = free > 0 and len(claimed) == min(free, _CLAIM_BATCH)
                claimed = []  # each is now its task's alone: do not keep them alive here
                if full:
                    continue  # there may be more due work: claim again at once
                await self._idle(stop)
        finally:
            await self._shutdown(grace)
        log.info("worker %s stopped", self.worker_id)

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
        elif isinstance(err, SagaError):
            # Unknown definition, undecodable row, store outage mid-saga: the lease runs
            # out and the saga is retried later; this worker goes on with the others.
            log.error("worker %s: saga %s: %s", self.worker_id, saga_id, err)
        else:
            log.error(
                "worker %s: saga %s failed unexpectedly",
                self.worker_id,
                saga_id,
                exc_info=(type(err), err, err.__traceback__),
            )

    async def _shutdown(self, grace: float) -> None:
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

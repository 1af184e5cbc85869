"""Group commit: the writes of many sagas driven at once share one statement and one
commit, without weakening durability.

Every ``submit`` waits until the statement holding its write has returned, and a
statement in autocommit mode returns only once its transaction is committed (with
PostgreSQL's default ``synchronous_commit=on``, flushed to the WAL). A saga's next side
effect therefore still happens after its transition is durable; the only change is
that several sagas' transitions become durable in the same commit.

There is no timer and no waiting for company: a write submitted while no batch is in
flight is sent at once, so a saga driven alone pays nothing. Writes submitted while a
batch is in flight queue up and go together in the next one. A batch never holds two
writes of the same saga (they would be one UPDATE of one row): the later one waits for
the next batch. When a batch fails for something one of its writes could have caused
(a bad value, a constraint, a deadlock), each write is retried alone so that only the
guilty one sees the error; when it fails for the connection or the server (which every
write would meet again), every write gets that error at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

Execute = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]


class GroupCommit(Generic[Item, Result]):
    """Sends submitted items to ``execute`` in batches, one batch in flight at a time.

    ``execute(items)`` runs one statement for all of them and returns one result per
    item, in order; the ``key`` an item is submitted with names the row it writes (a
    batch holds at most one item per key).
    """

    def __init__(
        self,
        execute: Execute[Item, Result],
        *,
        max_batch: int = 256,
        retry_alone: Callable[[BaseException], bool] = lambda _err: True,
    ) -> None:
        self._execute = execute
        self._retry_alone = retry_alone
        self._max_batch = max_batch
        self._queue: list[tuple[str, Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # how many statements were sent (for benchmarks and tests)
        self.items = 0

    async def submit(self, key: str, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((key, item, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch: list[tuple[str, Item, asyncio.Future[Result]]] = []
            rest: list[tuple[str, Item, asyncio.Future[Result]]] = []
            keys: set[str] = set()
            for entry in self._queue:
                if entry[0] in keys or len(batch) >= self._max_batch:
                    rest.append(entry)
                else:
                    keys.add(entry[0])
                    batch.append(entry)
            self._queue = rest
            await self._send(batch)

    async def _send(self, batch: list[tuple[str, Item, asyncio.Future[Result]]]) -> None:
        # Abandoned writes (their saga was cancelled while queued) are not sent.
        batch = [entry for entry in batch if not entry[2].done()]
        if not batch:
            return
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._execute([item for _, item, _ in batch])
        except asyncio.CancelledError:
            for *_, future in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as err:
            if len(batch) > 1 and self._retry_alone(err):
                for entry in batch:
                    await self._send([entry])
                return
            for *_, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

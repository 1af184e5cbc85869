"""A worker process for the kill -9 test of transactional steps: drives sagas ``t0`` ..
``t<n-1>`` on PostgreSQL (starting the missing ones, resuming the unfinished ones) until
all are finished, or until it is killed. Every saga with an odd number fails at ship."""

from __future__ import annotations

import asyncio
import sys

from saga_fsm import Orchestrator, SagaNotFound
from saga_fsm.stores.postgres import PostgresStore
from tests.test_transactional import pg_definition

DEFINITION = pg_definition(
    lambda ctx: int(ctx.saga_id[1:]) % 2 == 1 and ctx.step == "ship", name="killed", pause=0.05
)


async def drive(orchestrator: Orchestrator, saga_id: str, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            snapshot = await orchestrator.store.load(saga_id)
        except SagaNotFound:
            await orchestrator.run(DEFINITION, {}, saga_id=saga_id)
            return
        if not snapshot.is_terminal:
            await orchestrator.resume(saga_id)


async def main(dsn: str, sagas: int) -> None:
    store = await PostgresStore.open(dsn, max_size=10)
    # One worker id for every incarnation: a restarted process takes its own leases back.
    orchestrator = Orchestrator(store, [DEFINITION], worker_id="killed-worker")
    gate = asyncio.Semaphore(8)
    print("ready", flush=True)
    await asyncio.gather(*(drive(orchestrator, f"t{i}", gate) for i in range(sagas)))
    await store.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

"""A parallel saga whose participants record their effects in PostgreSQL tables, for
the kill -9 test (workers load it as ``tests.durability.parallel_participants:definition``
and find the database in ``$SAGA_FSM_FAULT_DSN``).

open -> reserve: Parallel north/south/east (reserve, then confirm), at most 2 at once
     -> pack: ForEach over data["parcels"] (pack), at most 2 at once -> charge (pivot)

Every effect and every compensation goes into ``par_log`` with one sequence, so the
test can check the order: within a branch, later steps undone first; no compensation
of a group before its last forward effect; ``open`` undone after every branch. Effects
are keyed by idempotency key (a repeat is absorbed, and counted); ``data["fail_at"]``
names a branch step (``reserve/east/confirm``) that refuses for good.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from psycopg_pool import AsyncConnectionPool

from saga_fsm import ForEach, Parallel, RetryPolicy, SagaDefinition, Step, StepContext, StepFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS par_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    idempotency_key text NOT NULL,
    compensating boolean NOT NULL,
    absorbed boolean NOT NULL);
CREATE TABLE IF NOT EXISTS par_effects (
    idempotency_key text PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL);
CREATE TABLE IF NOT EXISTS par_undone (
    idempotency_key text PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL);
"""

REF = "tests.durability.parallel_participants:definition"
_pools: dict[int, AsyncConnectionPool[Any]] = {}


async def _pool() -> AsyncConnectionPool[Any]:
    loop = id(asyncio.get_running_loop())
    if loop not in _pools:
        pool = AsyncConnectionPool(
            os.environ["SAGA_FSM_FAULT_DSN"],
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"autocommit": True},
        )
        await pool.open()
        _pools[loop] = pool
    return _pools[loop]


async def act(ctx: StepContext) -> dict[str, Any]:
    # A call takes a while, so kills land in the middle of fan-outs.
    await asyncio.sleep(random.uniform(0.01, float(ctx.data.get("delay", 0.05))))
    if ctx.data.get("fail_at") == ctx.step:
        raise StepFailed(f"{ctx.step} refused", retryable=False)
    async with (await _pool()).connection() as conn, conn.transaction():
        applied = await conn.execute(
            "INSERT INTO par_effects VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (ctx.idempotency_key, ctx.saga_id, ctx.step),
        )
        absorbed = await applied.fetchone() is None
        await conn.execute(
            "INSERT INTO par_log (saga_id, step, idempotency_key, compensating, absorbed)"
            " VALUES (%s, %s, %s, false, %s)",
            (ctx.saga_id, ctx.step, ctx.idempotency_key, absorbed),
        )
    return {ctx.step.replace("/", "_"): True}


async def undo(ctx: StepContext) -> None:
    await asyncio.sleep(random.uniform(0.005, float(ctx.data.get("delay", 0.05)) / 2))
    forward = ctx.idempotency_key.removesuffix(":compensate")
    async with (await _pool()).connection() as conn, conn.transaction():
        applied = await conn.execute(
            "INSERT INTO par_undone VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (forward, ctx.saga_id, ctx.step),
        )
        absorbed = await applied.fetchone() is None
        await conn.execute(
            "INSERT INTO par_log (saga_id, step, idempotency_key, compensating, absorbed)"
            " VALUES (%s, %s, %s, true, %s)",
            (ctx.saga_id, ctx.step, forward, absorbed),
        )


RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05, max_interval=0.2)
UNDO_RETRY = RetryPolicy(max_attempts=10, initial_interval=0.05, max_interval=0.2)


def _step(name: str) -> Step:
    return Step(name, act, undo, retry=RETRY, compensation_retry=UNDO_RETRY)


definition = SagaDefinition(
    "parallel_kill",
    [
        _step("open"),
        Parallel(
            "reserve",
            branches={k: [_step("reserve"), _step("confirm")] for k in ("north", "south", "east")},
            max_concurrency=2,
        ),
        ForEach("pack", items="parcels", steps=[_step("pack")], max_concurrency=2),
        Step("charge", act, kind="pivot", retry=RetryPolicy(max_attempts=None)),
    ],
)

BRANCH_STEPS = tuple(
    f"reserve/{k}/{s}" for k in ("north", "south", "east") for s in ("reserve", "confirm")
)

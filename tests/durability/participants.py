"""A saga whose participants record their effects in PostgreSQL tables.

Workers load it by reference (``tests.durability.participants:definition``) and find
the participants' database in ``$SAGA_FSM_FAULT_DSN``. Each forward step inserts its
effect keyed by the idempotency key (ON CONFLICT DO NOTHING: the participant honours
the key), and logs every attempt; each compensation checks that the forward effect
exists. ``data["fail_at"]`` names a step that fails for good, ``data["hang_at"]`` one
that never returns.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

from saga_fsm import RetryPolicy, SagaBuilder, StepContext, StepFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    idempotency_key text PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS compensations (
    idempotency_key text PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    forward_found boolean NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz);
CREATE TABLE IF NOT EXISTS in_flight (
    idempotency_key text NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    PRIMARY KEY (idempotency_key, attempt));
CREATE TABLE IF NOT EXISTS overlapping_runs (
    idempotency_key text NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL);
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dsn() -> str:
    return os.environ["SAGA_FSM_FAULT_DSN"]


_pools: dict[int, AsyncConnectionPool[Any]] = {}


async def _pool() -> AsyncConnectionPool[Any]:
    """The participants' own connection pool, one per event loop (per worker process)."""
    loop = id(asyncio.get_running_loop())
    if loop not in _pools:
        pool = AsyncConnectionPool(
            _dsn(), min_size=1, max_size=8, open=False, kwargs={"autocommit": True}
        )
        await pool.open()
        _pools[loop] = pool
    return _pools[loop]


async def _forward(ctx: StepContext) -> dict[str, Any]:
    if ctx.data.get("hang_at") == ctx.step:
        await asyncio.sleep(3600)
    flaky_until = ctx.data.get("flaky_until")
    if flaky_until is not None and time.time() < flaky_until:
        raise ConnectionError(f"{ctx.step}: participant unavailable")
    pid = os.getpid()
    key, attempt = ctx.idempotency_key, ctx.attempt
    async with (await _pool()).connection() as conn:
        async with conn.transaction():  # one commit: the attempt starts
            await conn.execute(
                "INSERT INTO attempts (idempotency_key, attempt, pid) VALUES (%s, %s, %s)",
                (key, attempt, pid),
            )
            # Two workers running the same attempt at once would collide here.
            claimed = await conn.execute(
                "INSERT INTO in_flight VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                (key, attempt, pid),
            )
            if await claimed.fetchone() is None:
                holder = await conn.execute(
                    "SELECT pid FROM in_flight WHERE idempotency_key = %s AND attempt = %s",
                    (key, attempt),
                )
                row = await holder.fetchone()
                if row is not None and _alive(row[0]):
                    await conn.execute(
                        "INSERT INTO overlapping_runs VALUES (%s, %s, %s)", (key, attempt, pid)
                    )
                else:  # the holder was killed mid-step: this is the recovery run
                    await conn.execute(
                        "UPDATE in_flight SET pid = %s WHERE idempotency_key = %s AND attempt = %s",
                        (pid, key, attempt),
                    )
        # A step takes a while, so kills land in the middle of steps.
        await asyncio.sleep(random.uniform(0.002, float(ctx.data.get("delay", 0.02))))
        if ctx.data.get("fail_at") == ctx.step:
            await conn.execute(
                "DELETE FROM in_flight WHERE idempotency_key = %s AND pid = %s", (key, pid)
            )
            raise StepFailed(f"{ctx.step} refused", retryable=False)
        async with conn.transaction():  # one commit: the effect, once per key
            await conn.execute(
                "DELETE FROM in_flight WHERE idempotency_key = %s AND pid = %s", (key, pid)
            )
            await conn.execute(
                "INSERT INTO effects (idempotency_key, saga_id, step) VALUES (%s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (key, ctx.saga_id, ctx.step),
            )
            await conn.execute(
                "UPDATE attempts SET finished_at = clock_timestamp()"
                " WHERE idempotency_key = %s AND attempt = %s AND pid = %s",
                (key, attempt, pid),
            )
    return {f"{ctx.step}_done": True}


async def _compensate(ctx: StepContext) -> None:
    forward_key = ctx.idempotency_key.removesuffix(":compensate")
    async with (await _pool()).connection() as conn:
        found = await conn.execute(
            "SELECT 1 FROM effects WHERE idempotency_key = %s", (forward_key,)
        )
        await conn.execute(
            "INSERT INTO compensations VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (ctx.idempotency_key, ctx.saga_id, ctx.step, await found.fetchone() is not None),
        )


_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.05, max_interval=0.5)
_FOREVER = RetryPolicy(max_attempts=None, initial_interval=0.05, max_interval=0.5)

definition = (
    SagaBuilder("fault_saga")
    .step(
        "reserve",
        _forward,
        compensation=_compensate,
        retry=_RETRY,
        compensation_retry=_RETRY,
        timeout=2.0,
    )
    .step(
        "charge",
        _forward,
        compensation=_compensate,
        retry=_RETRY,
        compensation_retry=_RETRY,
        timeout=2.0,
    )
    .pivot("ship", _forward, retry=_RETRY, timeout=2.0)
    .retriable("notify", _forward, retry=_FOREVER, timeout=2.0)
    .build()
)
REF = "tests.durability.participants:definition"

_SLOW = RetryPolicy(max_attempts=3, initial_interval=2.0, max_interval=2.0)
slow_retry = (
    SagaBuilder("fault_saga_slow_retry")
    .step("reserve", _forward, compensation=_compensate, retry=_SLOW)
    .pivot("ship", _forward)
    .build()
)
SLOW_REF = "tests.durability.participants:slow_retry"

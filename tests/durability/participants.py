"""A saga whose participants record their effects in PostgreSQL tables.

Workers load it by reference (``tests.durability.participants:definition``) and find
the participants' database in ``$SAGA_FSM_FAULT_DSN``, their own name in
``$SAGA_FSM_FAULT_WORKER``. What the participants keep:

- ``attempts``: every call of an action or compensation, append-only (attempt number,
  worker, pid), whatever happens to it after;
- ``effects``: the effect of a participant honouring the idempotency key (a unique key,
  ON CONFLICT DO NOTHING), and ``effect_log``: every application of an effect, as a
  participant that ignores the key would see it (``absorbed``: the key-honouring one
  refused it as a repeat);
- ``compensations``: every compensation applied, with a sequence number and whether the
  forward effect existed;
- ``violations``: the persistence-order probe. At the start of every call the participant
  reads the saga's row from the store: the step must be stored as in flight at this
  attempt, every earlier step as succeeded (an action) or every later one as no longer
  done (a compensation): ``kind`` is ``order``. A call made while another worker holds
  the saga (a stalled worker finishing what it began before a takeover) is recorded as
  ``unleased`` instead;
- ``overlapping_runs``: a call of an attempt that another live process is inside (the
  worker calling, and the one inside). Being inside a call is marked by a file per call
  under ``$TMPDIR/saga_fsm_fault_calls/<pid>/``, removed when the call returns however it
  returns: a call that failed because the database went away leaves its ``in_flight``
  row behind (the row could not be deleted), but not its marker.

``data["fail_at"]`` names a step that fails for good, ``data["hang_at"]`` one that
never returns, ``data["unavailable_for"]`` how many first attempts of each step fail.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from saga_fsm import RetryPolicy, SagaBuilder, StepContext, StepFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL,
    saga_id text NOT NULL,
    step text NOT NULL,
    compensating boolean NOT NULL,
    attempt integer NOT NULL,
    worker text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS effects (
    idempotency_key text PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    worker text NOT NULL);
CREATE TABLE IF NOT EXISTS effect_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL,
    saga_id text NOT NULL,
    step text NOT NULL,
    worker text NOT NULL,
    absorbed boolean NOT NULL);
CREATE TABLE IF NOT EXISTS compensations (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL,
    saga_id text NOT NULL,
    step text NOT NULL,
    worker text NOT NULL,
    forward_found boolean NOT NULL);
CREATE TABLE IF NOT EXISTS violations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    idempotency_key text NOT NULL,
    worker text NOT NULL,
    detail text NOT NULL);
CREATE TABLE IF NOT EXISTS in_flight (
    idempotency_key text NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    worker text NOT NULL,
    PRIMARY KEY (idempotency_key, attempt));
CREATE TABLE IF NOT EXISTS overlapping_runs (
    idempotency_key text NOT NULL,
    attempt integer NOT NULL,
    worker text NOT NULL,
    holder text NOT NULL);
"""

FORWARD = ("reserve", "charge", "ship", "notify")
UNDONE = {"compensated", "failed", "timed_out", "skipped", "pending"}


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (running or stalled), not gone or a zombie."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


_CALLS = Path(tempfile.gettempdir()) / "saga_fsm_fault_calls"


def _marker(pid: int, key: str, attempt: int) -> Path:
    return _CALLS / str(pid) / f"{key.replace('/', '_')}#{attempt}"


@contextmanager
def _inside(ctx: StepContext) -> Iterator[None]:
    """Mark this process as inside the call of ``ctx`` while the block runs."""
    marker = _marker(os.getpid(), ctx.idempotency_key, ctx.attempt)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _dsn() -> str:
    return os.environ["SAGA_FSM_FAULT_DSN"]


def _worker() -> str:
    return os.environ.get("SAGA_FSM_FAULT_WORKER", "?")


_pools: dict[int, AsyncConnectionPool[Any]] = {}


async def _pool() -> AsyncConnectionPool[Any]:
    """The participants' own connection pool, one per event loop (per worker process)."""
    loop = id(asyncio.get_running_loop())
    if loop not in _pools:
        pool = AsyncConnectionPool(
            _dsn(),
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,  # a server restart breaks them all
        )
        await pool.open()
        _pools[loop] = pool
    return _pools[loop]


def order_problems(snapshot: dict[str, Any], ctx: StepContext) -> list[str]:
    """What the stored snapshot says is wrong about calling ``ctx`` now."""
    steps = {s["name"]: s for s in snapshot["steps"]}
    names = [s["name"] for s in snapshot["steps"]]
    here = steps[ctx.step]
    expected = "compensating" if ctx.compensating else "running"
    attempts = here["compensation_attempts"] if ctx.compensating else here["attempts"]
    problems = []
    if (here["status"], attempts) != (expected, ctx.attempt):
        problems.append(f"stored {here['status']}#{attempts}, not {expected}#{ctx.attempt}")
    index = names.index(ctx.step)
    for name in names[:index]:
        if steps[name]["status"] != "succeeded":
            problems.append(f"earlier step {name} is stored {steps[name]['status']}")
    if ctx.compensating:
        for name in names[index + 1 :]:
            if steps[name]["status"] not in UNDONE:
                problems.append(f"later step {name} is stored {steps[name]['status']}")
    return problems


async def _probe(conn: Any, ctx: StepContext) -> None:
    """The persistence-order probe (see the module docstring)."""
    row = await (
        await conn.execute(
            "SELECT snapshot, lease_owner FROM saga_fsm_sagas WHERE saga_id = %s", (ctx.saga_id,)
        )
    ).fetchone()
    snapshot, owner = row
    key = ctx.idempotency_key
    if owner != _worker():
        # A stalled worker calling what it started before another took the saga over:
        # counted (and bounded by the tests), not an ordering fault of the holder.
        problems, kind = [f"lease held by {owner}"], "unleased"
    else:
        problems, kind = order_problems(snapshot, ctx), "order"
    for problem in problems:
        await conn.execute(
            "INSERT INTO violations (kind, idempotency_key, worker, detail)"
            " VALUES (%s, %s, %s, %s)",
            (kind, key, _worker(), problem),
        )


async def _begin(conn: Any, ctx: StepContext) -> None:
    """Probe, log the attempt, and claim it in ``in_flight`` (one commit)."""
    key, attempt, pid = ctx.idempotency_key, ctx.attempt, os.getpid()
    async with conn.transaction():
        await _probe(conn, ctx)
        await conn.execute(
            "INSERT INTO attempts (idempotency_key, saga_id, step, compensating, attempt,"
            " worker, pid) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (key, ctx.saga_id, ctx.step, ctx.compensating, attempt, _worker(), pid),
        )
        # Two workers running the same attempt at once would collide here.
        claimed = await conn.execute(
            "INSERT INTO in_flight VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (key, attempt, pid, _worker()),
        )
        if await claimed.fetchone() is None:
            holder = await conn.execute(
                "SELECT pid, worker FROM in_flight WHERE idempotency_key = %s AND attempt = %s",
                (key, attempt),
            )
            row = await holder.fetchone()
            inside = row is not None and _marker(row[0], key, attempt).exists()
            if row is not None and row[0] != pid and _alive(row[0]) and inside:
                await conn.execute(
                    "INSERT INTO overlapping_runs VALUES (%s, %s, %s, %s)",
                    (key, attempt, _worker(), row[1]),
                )
            await conn.execute(  # the holder was killed (or stalled) mid-call: take it over
                "UPDATE in_flight SET pid = %s, worker = %s"
                " WHERE idempotency_key = %s AND attempt = %s",
                (pid, _worker(), key, attempt),
            )


async def _forward(ctx: StepContext) -> dict[str, Any]:
    if ctx.data.get("hang_at") == ctx.step:
        await asyncio.sleep(3600)
    if ctx.attempt <= ctx.data.get("unavailable_for", 0):
        raise ConnectionError(f"{ctx.step}: participant unavailable")
    key, pid = ctx.idempotency_key, os.getpid()
    with _inside(ctx):
        await _forward_call(ctx, key, pid)
    return {f"{ctx.step}_done": True}


async def _forward_call(ctx: StepContext, key: str, pid: int) -> None:
    async with (await _pool()).connection() as conn:
        await _begin(conn, ctx)
        # A step takes a while, so kills land in the middle of steps.
        await asyncio.sleep(random.uniform(0.002, float(ctx.data.get("delay", 0.02))))
        if ctx.data.get("fail_at") == ctx.step:
            await conn.execute(
                "DELETE FROM in_flight WHERE idempotency_key = %s AND pid = %s", (key, pid)
            )
            raise StepFailed(f"{ctx.step} refused", retryable=False)
        async with conn.transaction():  # one commit: the effect, as each participant sees it
            await conn.execute(
                "DELETE FROM in_flight WHERE idempotency_key = %s AND pid = %s", (key, pid)
            )
            applied = await conn.execute(
                "INSERT INTO effects VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1",
                (key, ctx.saga_id, ctx.step, _worker()),
            )
            await conn.execute(
                "INSERT INTO effect_log (idempotency_key, saga_id, step, worker, absorbed)"
                " VALUES (%s, %s, %s, %s, %s)",
                (key, ctx.saga_id, ctx.step, _worker(), await applied.fetchone() is None),
            )


async def _compensate(ctx: StepContext) -> None:
    forward_key = ctx.idempotency_key.removesuffix(":compensate")
    key, pid = ctx.idempotency_key, os.getpid()
    with _inside(ctx):
        await _compensate_call(ctx, forward_key, key, pid)


async def _compensate_call(ctx: StepContext, forward_key: str, key: str, pid: int) -> None:
    async with (await _pool()).connection() as conn:
        await _begin(conn, ctx)
        async with conn.transaction():
            await conn.execute(
                "DELETE FROM in_flight WHERE idempotency_key = %s AND pid = %s", (key, pid)
            )
            found = await conn.execute(
                "SELECT 1 FROM effects WHERE idempotency_key = %s", (forward_key,)
            )
            await conn.execute(
                "INSERT INTO compensations (idempotency_key, saga_id, step, worker, forward_found)"
                " VALUES (%s, %s, %s, %s, %s)",
                (key, ctx.saga_id, ctx.step, _worker(), await found.fetchone() is not None),
            )


# Enough attempts to outlast a server restart of a second or two.
_RETRY = RetryPolicy(max_attempts=10, initial_interval=0.05, max_interval=1.0)
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

_SLOW = RetryPolicy(max_attempts=3, initial_interval=4.0, max_interval=4.0)
slow_retry = (
    SagaBuilder("fault_saga_slow_retry")
    .step("reserve", _forward, compensation=_compensate, retry=_SLOW)
    .pivot("ship", _forward)
    .build()
)
SLOW_REF = "tests.durability.participants:slow_retry"

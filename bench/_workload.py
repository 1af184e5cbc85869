"""The throughput workload: a 3-step saga (reserve, charge, ship) whose steps write to the
application's own tables, and the checks that the world is right afterwards.

Each forward step does one small INSERT into its own table through the application's
connection pool (never the saga store's); each compensation does one UPDATE that marks
its step's row undone. A seeded plan says, per saga, at which step (if any) it fails
for good, so saga_fsm and the raw-psycopg floor run the very same work.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from saga_fsm import SagaBuilder, SagaDefinition, StepContext, StepFailed

STEPS = ("reserve", "charge", "ship")
TABLES = {step: f"bench_{step}" for step in STEPS}
SCHEMA = "\n".join(
    f"CREATE TABLE IF NOT EXISTS {table} ("
    " idempotency_key text PRIMARY KEY, saga_id text NOT NULL,"
    " undone boolean NOT NULL DEFAULT false);"
    for table in TABLES.values()
)
# The participant honours the idempotency key: a repeated attempt changes nothing.
INSERT = {
    step: f"INSERT INTO {table} (idempotency_key, saga_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    for step, table in TABLES.items()
}
UNDO = {
    step: f"UPDATE {table} SET undone = true WHERE idempotency_key = %s"
    for step, table in TABLES.items()
}


def plan(sagas: int, fail_rate: float, seed: int) -> list[str | None]:
    """Per saga, the step that fails for good, or None: the same for every engine."""
    rng = random.Random(seed)
    return [rng.choice(STEPS) if rng.random() < fail_rate else None for _ in range(sagas)]


def forward_key(saga_id: str, step: str) -> str:
    return f"{saga_id}:{step}"


class PostgresApp:
    """The application's tables in PostgreSQL, reached through its own pool."""

    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: AsyncConnectionPool[Any] | None = None
        self.calls = 0

    def prepare(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute("TRUNCATE " + ", ".join(TABLES.values()))
        self.calls = 0

    async def open(self, size: int) -> None:
        self.pool = AsyncConnectionPool(
            self.dsn,
            min_size=size,
            max_size=size,
            open=False,
            kwargs={"autocommit": True},
            name="bench app",
        )
        await self.pool.open(wait=True)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def forward(self, step: str, ctx: StepContext) -> None:
        self.calls += 1
        if ctx.data["fail_at"] == step:
            raise StepFailed(f"{step} declined", retryable=False)
        assert self.pool is not None
        async with self.pool.connection() as conn:
            await conn.execute(INSERT[step], (ctx.idempotency_key, ctx.saga_id))

    async def undo(self, step: str, ctx: StepContext) -> None:
        self.calls += 1
        assert self.pool is not None
        async with self.pool.connection() as conn:
            await conn.execute(UNDO[step], (forward_key(ctx.saga_id, step),))

    # Transactional steps: the same statements on the saga store's connection, inside the
    # transaction that also writes the step's transition (the tables share its database).
    async def forward_in(self, step: str, ctx: StepContext) -> None:
        self.calls += 1
        if ctx.data["fail_at"] == step:
            raise StepFailed(f"{step} declined", retryable=False)
        await ctx.connection.execute(INSERT[step], (ctx.idempotency_key, ctx.saga_id))

    async def undo_in(self, step: str, ctx: StepContext) -> None:
        self.calls += 1
        await ctx.connection.execute(UNDO[step], (forward_key(ctx.saga_id, step),))

    def effects(self) -> dict[str, dict[str, bool]]:
        """Per step: idempotency key -> undone."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return {
                step: dict(conn.execute(f"SELECT idempotency_key, undone FROM {table}").fetchall())
                for step, table in TABLES.items()
            }


class InProcessApp:
    """The same participants keeping their rows in a dict: no I/O, so what is measured
    is the engine alone (used with ``--app in-process``, or when no PostgreSQL answers)."""

    kind = "in-process"

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, bool]] = {step: {} for step in STEPS}
        self.calls = 0

    def prepare(self) -> None:
        self.rows = {step: {} for step in STEPS}
        self.calls = 0

    async def open(self, size: int) -> None:
        return None

    async def close(self) -> None:
        return None

    async def forward(self, step: str, ctx: StepContext) -> None:
        self.calls += 1
        if ctx.data["fail_at"] == step:
            raise StepFailed(f"{step} declined", retryable=False)
        self.rows[step].setdefault(ctx.idempotency_key, False)

    async def undo(self, step: str, ctx: StepContext) -> None:
        self.calls += 1
        key = forward_key(ctx.saga_id, step)
        if key in self.rows[step]:
            self.rows[step][key] = True

    def effects(self) -> dict[str, dict[str, bool]]:
        return self.rows


App = PostgresApp | InProcessApp


def definition(app: App, *, transactional: bool = False) -> SagaDefinition:
    """reserve -> charge -> ship, each compensable, each step one write to its table;
    ``transactional``: each write in the transaction of the step's transition."""
    if transactional and not isinstance(app, PostgresApp):
        raise SystemExit("--transactional: the application tables must be the store's")
    forward_of = app.forward_in if isinstance(app, PostgresApp) and transactional else app.forward
    undo_of = app.undo_in if isinstance(app, PostgresApp) and transactional else app.undo

    def forward(step: str) -> Callable[[StepContext], Any]:
        async def action(ctx: StepContext) -> None:
            await forward_of(step, ctx)

        action.__name__ = step
        return action

    def undo(step: str) -> Callable[[StepContext], Any]:
        async def compensation(ctx: StepContext) -> None:
            await undo_of(step, ctx)

        compensation.__name__ = f"undo_{step}"
        return compensation

    builder = SagaBuilder("bench_order")
    for step in STEPS:
        # (Passed only when set, so that this workload still runs on releases without it.)
        options = {"transactional": True} if transactional else {}
        builder.step(step, forward(step), compensation=undo(step), **options)
    return builder.build()


def check(app: App, outcomes: Iterable[tuple[str, str | None, str]]) -> tuple[bool, list[str]]:
    """Completed sagas have every effect and none undone; compensated ones have the
    effects of the steps before the failing one, all undone, and nothing after; and no
    row belongs to no saga. Returns (correct, the first few problems)."""
    effects = app.effects()
    problems: list[str] = []
    expected_rows = 0
    for saga_id, fail_at, state in outcomes:
        want_state = "completed" if fail_at is None else "compensated"
        if state != want_state:
            problems.append(f"{saga_id}: {state}, expected {want_state}")
            continue
        reached = STEPS if fail_at is None else STEPS[: STEPS.index(fail_at)]
        for step in STEPS:
            undone = effects[step].get(forward_key(saga_id, step))
            if step in reached:
                expected_rows += 1
                if undone is None:
                    problems.append(f"{saga_id}: no {step} effect")
                elif undone != (fail_at is not None):
                    problems.append(f"{saga_id}: {step} undone={undone} in a {state} saga")
            elif undone is not None:
                problems.append(f"{saga_id}: a {step} effect after the failing step")
    total = sum(len(rows) for rows in effects.values())
    if total != expected_rows:
        problems.append(f"{total} effect rows, expected {expected_rows}")
    return not problems, problems[:5]

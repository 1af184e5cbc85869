"""Transactional steps: the step's SQL and its transition commit together, on
PostgreSQL and on SQLite, or not at all."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from saga_fsm import (
    InvalidArgument,
    MemoryStore,
    Orchestrator,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    SqliteStore,
    StepContext,
    StepFailed,
    load_definition_file,
)
from saga_fsm.stores.postgres import PostgresStore

STEPS = ("reserve", "charge", "ship")
EFFECTS = "CREATE TABLE effects (saga_id text NOT NULL, step text NOT NULL, undo boolean NOT NULL)"


class Boom(Exception):
    """Raised by a step after its own write: the write must not survive."""


# -- the same definitions for both stores: only the placeholders differ ----------------------
def sqlite_definition(fail: Callable[[StepContext], bool], name: str = "tx") -> SagaDefinition:
    def write(undo: bool) -> Callable[[StepContext], None]:
        def action(ctx: StepContext) -> None:
            ctx.connection.execute(
                "INSERT INTO effects VALUES (?, ?, ?)", (ctx.saga_id, ctx.step, undo)
            )
            if not undo and fail(ctx):
                raise Boom(ctx.step)

        return action

    builder = SagaBuilder(name)
    for step in STEPS:
        builder.step(
            step,
            write(False),
            compensation=write(True),
            transactional=True,
            retry=RetryPolicy(max_attempts=3, initial_interval=0.01, non_retryable=(StepFailed,)),
        )
    return builder.build()


def pg_definition(
    fail: Callable[[StepContext], bool], name: str = "tx", pause: float = 0.0
) -> SagaDefinition:
    def write(undo: bool) -> Callable[[StepContext], Any]:
        async def action(ctx: StepContext) -> None:
            await ctx.connection.execute(
                "INSERT INTO effects VALUES (%s, %s, %s)", (ctx.saga_id, ctx.step, undo)
            )
            if pause:
                await asyncio.sleep(random.random() * pause)
            if not undo and fail(ctx):
                raise Boom(ctx.step)

        return action

    builder = SagaBuilder(name)
    for step in STEPS:
        builder.step(
            step,
            write(False),
            compensation=write(True),
            transactional=True,
            retry=RetryPolicy(max_attempts=3, initial_interval=0.01),
        )
    return builder.build()


@asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tuple[Any, Callable[[], list[Any]]]]:
    path = tmp_path / "sagas.db"
    store = SqliteStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute(EFFECTS)

    def rows() -> list[Any]:
        with sqlite3.connect(path) as conn:
            found = conn.execute("SELECT saga_id, step, undo FROM effects ORDER BY rowid")
            return [(s, t, bool(u)) for s, t, u in found]

    try:
        yield store, rows
    finally:
        await store.close()


@asynccontextmanager
async def pg_store(dsn: str) -> AsyncIterator[tuple[Any, Callable[[], list[Any]]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EFFECTS)

    def rows() -> list[Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute("SELECT saga_id, step, undo FROM effects ORDER BY ctid").fetchall()

    store = await PostgresStore.open(dsn, max_size=20)
    try:
        yield store, rows
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """(open the store, the definition factory) for each durable store."""
    if request.param == "sqlite":
        return lambda: sqlite_store(tmp_path), sqlite_definition
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: pg_store(dsn), pg_definition


def test_writes_commit_with_the_transition_and_roll_back_on_an_error(durable: Any) -> None:
    """A completed saga has each step's row once; in a saga whose ``charge`` raises, the
    row charge wrote is gone, only the failure was saved, and reserve was undone in
    its own transaction."""
    opened, make = durable
    definition = make(lambda ctx: ctx.data["fail"] and ctx.step == "charge")

    async def go() -> tuple[Any, ...]:
        async with opened() as (store, rows):
            orchestrator = Orchestrator(store, [definition])
            ok = await orchestrator.run(definition, {"fail": False}, saga_id="ok")
            bad = await orchestrator.run(definition, {"fail": True}, saga_id="bad")
            return ok, bad, rows(), await store.history("bad")

    ok, bad, rows, history = asyncio.run(go())
    assert ok.state == "completed"
    assert bad.state == "compensated"
    charge = bad.steps[definition.index("charge")]
    # Retried (the whole transaction re-run each time), never a row left behind.
    assert (charge.status, charge.attempts) == ("compensated", 3)
    assert bad.failure is not None and bad.failure.message == "charge"
    assert rows == [
        ("ok", "reserve", False),
        ("ok", "charge", False),
        ("ok", "ship", False),
        ("bad", "reserve", False),
        # Compensated like any step that failed for a reason other than a refusal: the
        # compensation finds nothing to undo (its forward row was rolled back).
        ("bad", "charge", True),
        ("bad", "reserve", True),
    ]
    assert [h.to_state for h in history][-2:] == ["compensating:reserve", "compensated"]


def test_a_retry_reruns_the_whole_transaction(durable: Any) -> None:
    opened, make = durable
    definition = make(lambda ctx: ctx.step == "ship" and ctx.attempt == 1)

    async def go() -> tuple[Any, ...]:
        async with opened() as (store, rows):
            done = await Orchestrator(store, [definition]).run(definition, {}, saga_id="s")
            return done, rows()

    done, rows = asyncio.run(go())
    assert done.state == "completed"
    assert done.steps[definition.index("ship")].attempts == 2
    assert rows == [("s", step, False) for step in STEPS]


def test_the_memory_store_refuses_transactional_steps() -> None:
    definition = sqlite_definition(lambda ctx: False)

    async def go() -> None:
        await Orchestrator(MemoryStore(), [definition]).run(definition, {})

    with pytest.raises(InvalidArgument, match=r"transactional steps \(reserve, charge, ship\)"):
        asyncio.run(go())


def test_an_async_transactional_action_on_sqlite_fails_for_good(tmp_path: Path) -> None:
    """SQLite's transaction lives on the store's thread: a coroutine cannot run there."""

    async def action(ctx: StepContext) -> None:
        return None

    definition = SagaBuilder("tx").step("only", action, read_only=True, transactional=True).build()

    async def go() -> Any:
        async with sqlite_store(tmp_path) as (store, _rows):
            return await Orchestrator(store, [definition]).run(definition, {})

    done = asyncio.run(go())
    assert done.state == "compensated"
    error = done.steps[0].error
    assert error is not None and "must be a plain function" in error.message
    assert done.steps[0].attempts == 1


def test_transactional_is_read_from_a_definition_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        'name = "t"\n[[steps]]\nname = "a"\n'
        'action = "saga_fsm.examples.order_fulfillment:create_shipment"\n'
        'kind = "pivot"\ntransactional = true\n'
    )
    assert load_definition_file(path).steps[0].transactional


def test_one_failing_step_in_a_batch_aborts_no_other_saga(postgres_dsn: str) -> None:
    """Sixteen sagas at once on PostgreSQL, their plain writes group-committed: the one
    whose step raises after writing loses only its own row."""
    definition = pg_definition(lambda ctx: ctx.saga_id == "s7" and ctx.step == "charge")

    async def go() -> tuple[list[Any], list[Any], int]:
        async with pg_store(postgres_dsn) as (store, rows):
            orchestrator = Orchestrator(store, [definition])
            done = await asyncio.gather(
                *(orchestrator.run(definition, {}, saga_id=f"s{i}") for i in range(16))
            )
            return done, rows(), store._saves.batches

    done, rows, _batches = asyncio.run(go())
    assert [d.state for d in done] == ["completed"] * 7 + ["compensated"] + ["completed"] * 8
    assert sorted(r for r in rows if r[0] != "s7") == sorted(
        (f"s{i}", step, False) for i in range(16) if i != 7 for step in STEPS
    )
    assert [r for r in rows if r[0] == "s7"] == [
        ("s7", "reserve", False),
        ("s7", "charge", True),
        ("s7", "reserve", True),
    ]


def test_kill_9_never_doubles_nor_loses_a_step_on_postgres(postgres_dsn: str) -> None:
    """A worker process killed (SIGKILL) again and again while its transactional steps
    are mid-transaction, then restarted until every saga is finished: each step's row,
    written by a plain INSERT with no idempotency key, is there exactly once."""
    sagas = 60
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS)
    command = [sys.executable, "-m", "tests.transactional_child", postgres_dsn, str(sagas)]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    rng = random.Random(17)
    kills = 0
    for _ in range(8):
        child = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE)
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        time.sleep(0.05 + rng.random() * 0.2)  # into the sagas' steps
        if child.poll() is not None:
            break
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
    finished = subprocess.run(command, cwd=root, env=env, capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert kills >= 3  # the kills landed while sagas were in flight

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT saga_id, step, undo, count(*) FROM effects GROUP BY 1, 2, 3"
        ).fetchall()
        states = dict(conn.execute("SELECT saga_id, state FROM saga_fsm_sagas").fetchall())
    assert all(count == 1 for *_, count in rows), [r for r in rows if r[3] != 1]
    expected = set()
    for i in range(sagas):
        odd = i % 2 == 1
        assert states[f"t{i}"] == ("compensated" if odd else "completed")
        expected |= {(f"t{i}", step, False) for step in (STEPS[:2] if odd else STEPS)}
        # ship failed (rolled back) and is compensated too, finding nothing to undo.
        expected |= {(f"t{i}", step, True) for step in STEPS if odd}
    assert {tuple(r[:3]) for r in rows} == expected


def test_the_readme_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Transactional steps")[1]
    code = section.split("```python\n")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    done = asyncio.run(namespace["main"](str(tmp_path / "shop.db")))
    assert done.state == "completed"
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        assert conn.execute("SELECT count(*) FROM shipments").fetchone() == (1,)


def test_a_failing_statement_is_the_steps_failure_on_postgres(postgres_dsn: str) -> None:
    """The step's own SQL error (here: a table that does not exist) fails the step, not
    the store: it is retried, then compensated, and the saga's writes go on."""

    async def broken(ctx: StepContext) -> None:
        await ctx.connection.execute("INSERT INTO no_such_table VALUES (1)")

    async def nothing(ctx: StepContext) -> None:
        return None

    definition = (
        SagaBuilder("tx_sql_error")
        .step(
            "broken",
            broken,
            compensation=nothing,
            transactional=True,
            retry=RetryPolicy(max_attempts=2, initial_interval=0.01),
        )
        .build()
    )

    async def go() -> Any:
        async with pg_store(postgres_dsn) as (store, _rows):
            return await Orchestrator(store, [definition]).run(definition, {})

    done = asyncio.run(go())
    assert done.state == "compensated"
    assert done.steps[0].attempts == 2
    assert done.failure is not None and "no_such_table" in done.failure.message


def test_a_lost_version_race_rolls_the_step_back_and_runs_it_again(postgres_dsn: str) -> None:
    """Another writer moves the saga's version while the step runs: the step's save
    finds the other version, the step's row is rolled back with it, and the step runs
    again from what is stored; its row is there once."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS)
    raced: list[str] = []

    async def step(ctx: StepContext) -> None:
        await ctx.connection.execute(
            "INSERT INTO effects VALUES (%s, %s, false)", (ctx.saga_id, ctx.step)
        )
        if not raced:
            raced.append(ctx.step)
            async with await psycopg.AsyncConnection.connect(
                postgres_dsn, autocommit=True
            ) as other:
                await other.execute("UPDATE saga_fsm_sagas SET version = version + 1")

    definition = SagaBuilder("tx_race").pivot("only", step, transactional=True).build()

    async def go() -> Any:
        store = await PostgresStore.open(postgres_dsn, max_size=4)
        try:
            return await Orchestrator(store, [definition]).run(definition, {}, saga_id="r")
        finally:
            await store.close()

    done = asyncio.run(go())
    assert done.state == "completed"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT saga_id, step FROM effects").fetchall() == [("r", "only")]


def test_a_remote_step_after_a_transactional_one_has_its_command_in_the_outbox(
    tmp_path: Path,
) -> None:
    """The transaction that commits a transactional step's outcome also writes the next
    step's command, as any save does: the saga waits for a reply only to a command
    that is on its way."""
    from saga_fsm import SagaExecutor, Step

    def record(ctx: StepContext) -> None:
        ctx.connection.execute(
            "INSERT INTO effects VALUES (?, ?, ?)", (ctx.saga_id, ctx.step, False)
        )

    definition = SagaDefinition(
        "tx_then_remote",
        (
            Step("record", record, read_only=True, transactional=True),
            Step("reserve", command="tx.inventory.reserve", timeout=30, read_only=True),
        ),
    )

    async def go() -> tuple[Any, list[Any], list[Any]]:
        async with sqlite_store(tmp_path) as (store, rows):
            saga = await SagaExecutor(store, [definition]).run(definition, {})
            return saga, await store.outbox(saga_id=saga.saga_id), rows()

    saga, outbox, effects = asyncio.run(go())
    assert saga.state == "running:reserve"
    assert [entry.message.channel for entry in outbox] == ["tx.inventory.reserve"]
    assert effects == [(saga.saga_id, "record", False)]

"""How saga_fsm scales with the size of the saga table and the number of sagas in flight.

    python bench/scale.py --store URL [--sizes 10000,100000,1000000] [--live 3000]
                          [--batch 16] [--claims 50] [--in-flight 1000,10000]

claim: for each size N, a fresh schema (PostgreSQL) or file (SQLite) is bulk-loaded
with SQL (not through the engine) with N saga rows: ``--live`` of them alive (a third
due and unleased, a third in flight under another worker's live lease, a third waiting
on a timer an hour away), the rest finished. Then ``claim_due`` takes ``--batch`` due
sagas, ``--claims`` times; each line gives the claim latency and, against the smallest
size, how much slower it got. ``idle_claim`` is a claim when nothing is due (what an
idle worker polls).

ls: SQLite only: a file bulk-loaded as above with ``--ls-rows`` rows, all but ten of
them finished; ``saga-fsm ls --limit 1`` and ``saga-fsm ls --stuck --older-than 0s
--limit 1`` each run ``--ls-runs`` times as subprocesses: median wall and CPU time, and
peak RSS of the command (what an operator waits for, and what it costs the machine).

memory: a Worker drives K sagas whose first step awaits an event that is set only once
all K are inside it; the resident-memory growth divided by K is what one in-flight
saga costs the worker process (``--store`` decides where the rows live; memory://
keeps them in the same process, so the PostgreSQL or SQLite figure is the worker's own).

Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from throughput import fresh_schema

from saga_fsm import (
    Event,
    Orchestrator,
    PostgresStore,
    SagaBuilder,
    SnapshotStore,
    SqliteStore,
    StepContext,
    Worker,
    decide,
    new_snapshot,
    open_store,
)
from saga_fsm._codec import snapshot_to_json

STEPS = ("reserve", "charge", "ship")
# What the claims take: the bulk-loaded rows' definition, as a worker claims it (name,
# version and its table's fingerprint; the rows have no pin, so each one is checked).
SERVED = [("bench_scale", 1, "0" * 64)]


async def _noop(ctx: StepContext) -> None:
    return None


DEFINITION = (
    SagaBuilder("bench_scale")
    .step("reserve", _noop, compensation=_noop)
    .step("charge", _noop, compensation=_noop)
    .step("ship", _noop, compensation=_noop)
    .build()
)


def templates(now: datetime) -> tuple[str, str]:
    """Encoded snapshots (by the codec) of a pending and of a completed saga: the rows
    are copies of these with their own ids and times, decodable like any other."""
    pending = new_snapshot(DEFINITION, "template", {"order": 1}, now)
    decision = decide(DEFINITION, pending, Event.start(now))
    snapshot = decision.snapshot
    for step in STEPS:
        snapshot = decide(
            DEFINITION, snapshot, Event("step_succeeded", now, step=step, attempt=1)
        ).snapshot
    return snapshot_to_json(pending), snapshot_to_json(snapshot)


# -- bulk loading ------------------------------------------------------------------------
# Row n: finished when n >= live; otherwise kind n % 3 is 0 due, 1 in flight (leased by
# another worker until an hour from now), 2 waiting on a timer an hour away.

_PG_LOAD = """
INSERT INTO saga_fsm_sagas (
    saga_id, definition, definition_version, state, version, snapshot, correlation_id,
    idempotency_key, wake_at, due_at, lease_owner, lease_expires_at, created_at, updated_at)
SELECT id, 'bench_scale', 1, st, 1,
       (CASE WHEN n < %(live)s THEN %(pending)s::jsonb ELSE %(done)s::jsonb END)
       || jsonb_build_object('saga_id', id, 'state', st),
       NULL, NULL, NULL,
       CASE WHEN n >= %(live)s THEN NULL
            WHEN n %% 3 = 2 THEN %(now)s::timestamptz + interval '1 hour'
            ELSE created END,
       owner, until, created, created
FROM (
    SELECT n, format('s%%s', lpad(n::text, 8, '0')) AS id,
           CASE WHEN n < %(live)s THEN 'pending' ELSE 'completed' END AS st,
           CASE WHEN n < %(live)s AND n %% 3 = 1 THEN 'other-worker' END AS owner,
           CASE WHEN n < %(live)s AND n %% 3 = 1
                THEN %(now)s::timestamptz + interval '1 hour' END AS until,
           %(now)s::timestamptz - interval '1 day' + n * interval '1 millisecond' AS created
    FROM generate_series(%(start)s, %(stop)s - 1) AS n
) AS g
"""


def load_postgres(conninfo: str, rows: int, live: int, now: datetime) -> float:
    pending, done = templates(now)
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for start in range(0, rows, 200_000):
            conn.execute(
                _PG_LOAD,
                {
                    "live": live,
                    "pending": pending,
                    "done": done,
                    "now": now,
                    "start": start,
                    "stop": min(rows, start + 200_000),
                },
            )
        conn.execute("VACUUM ANALYZE saga_fsm_sagas")
    return time.perf_counter() - started


def load_sqlite(path: str, rows: int, live: int, now: datetime) -> float:
    from saga_fsm.stores.sqlite import utc_text

    pending, done = templates(now)
    later, created0 = utc_text(now + timedelta(hours=1)), now - timedelta(days=1)
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")

    def row(n: int) -> tuple[Any, ...]:
        alive, kind, saga_id = n < live, n % 3, f"s{n:08d}"
        created = utc_text(created0 + timedelta(milliseconds=n))
        owner = "other-worker" if alive and kind == 1 else None
        until = later if owner else None
        due = None if not alive else (later if kind == 2 else created)
        state = "pending" if alive else "completed"
        text = (pending if alive else done).replace('"template"', f'"{saga_id}"', 1)
        return (saga_id, "bench_scale", 1, state, 1, text, due, owner, until, created, created)

    conn.executemany(
        "INSERT INTO saga_fsm_sagas (saga_id, definition, definition_version, state, version,"
        " snapshot, due_at, lease_owner, lease_expires_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (row(n) for n in range(rows)),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - started


@contextlib.contextmanager
def table_of(url: str, rows: int, live: int, now: datetime) -> Iterator[tuple[str, float]]:
    """A store URL/conninfo whose saga table holds ``rows`` rows, and the load time."""
    if _common.is_postgres(url):
        with fresh_schema(url) as conninfo:
            asyncio.run(_migrate(conninfo))
            yield conninfo, load_postgres(conninfo, rows, live, now)
        return
    with tempfile.TemporaryDirectory(prefix="saga_scale_") as tmp:
        path = str(Path(tmp) / "scale.db")
        asyncio.run(SqliteStore(path).close())  # creates and migrates the file
        yield f"sqlite:///{path}", load_sqlite(path, rows, live, now)


async def _migrate(conninfo: str) -> None:
    await (await PostgresStore.open(conninfo, min_size=1, max_size=1)).close()


@contextlib.asynccontextmanager
async def store_at(target: str) -> AsyncIterator[SnapshotStore]:
    if _common.is_postgres(target) or "=" in target:
        store = await PostgresStore.open(target, min_size=4, max_size=4)
        try:
            yield store
        finally:
            await store.close()
        return
    async with open_store(target) as store:
        yield store


async def measure_claims(target: str, now: datetime, batch: int, claims: int) -> dict[str, Any]:
    async with store_at(target) as store:
        await store.claim_due("warm-up", now=now, lease_seconds=30, limit=1, definitions=SERVED)
        times, claimed = [], 0
        for _ in range(claims):
            started = time.perf_counter()
            got = await store.claim_due(
                "bench", now=now, lease_seconds=30, limit=batch, definitions=SERVED
            )
            times.append(time.perf_counter() - started)
            claimed += len(got)
        idle = []
        later = now - timedelta(days=2)  # nothing is due yet then
        for _ in range(claims):
            started = time.perf_counter()
            await store.claim_due(
                "bench", now=later, lease_seconds=30, limit=batch, definitions=SERVED
            )
            idle.append(time.perf_counter() - started)
    return {
        "claim_p50_ms": _common.median_ms(times),
        "claim_p99_ms": _common.percentile_ms(times, 99),
        "claimed": claimed,
        "idle_claim_p50_ms": _common.median_ms(idle),
    }


def claim_benchmark(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base = None
    for rows in sizes:
        live = min(args.live, rows)
        now = datetime.now(UTC)
        with table_of(args.store, rows, live, now) as (target, load_s):
            figures = asyncio.run(measure_claims(target, now, args.batch, args.claims))
        base = base or figures["claim_p50_ms"]
        _common.emit(
            bench="claim",
            store=args.store.partition(":")[0].lower(),
            rows=rows,
            live=live,
            batch=args.batch,
            **figures,
            ratio_to_smallest=round(figures["claim_p50_ms"] / base, 2) if base else None,
            load_s=round(load_s, 1),
        )


# -- memory per saga in flight -----------------------------------------------------------


async def in_flight_rss(url: str, count: int, kind: str) -> dict[str, Any]:
    gate = asyncio.Event()
    entered = 0
    all_in = asyncio.Event()

    async def wait_for_gate(ctx: StepContext) -> None:
        nonlocal entered
        if ctx.data.get("warm_up"):
            return
        entered += 1
        if entered == count:
            all_in.set()
        await gate.wait()

    definition = (
        SagaBuilder("bench_in_flight")
        .step("hold", wait_for_gate, compensation=_noop)
        .step("finish", _noop, compensation=_noop)
        .build()
    )
    async with store_at(url) as store:
        orchestrator = Orchestrator(store, [definition], worker_id="bench-worker")
        # Warm up first (pool connections, prepared statements, caches): fixed costs are
        # not what one more saga in flight costs.
        for n in range(50):
            await orchestrator.start(definition, {"n": n, "warm_up": True})
        await drive_all(orchestrator, 50)
        for n in range(count):
            await orchestrator.start(definition, {"n": n})
        _common.settle_memory()
        before = _common.rss_bytes()
        _common.trim_heap()
        before_trimmed = _common.rss_bytes()
        worker = Worker(orchestrator, concurrency=count, poll_interval=0.05, max_hold=1.0)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.run(stop))
        started = time.perf_counter()
        await asyncio.wait_for(all_in.wait(), timeout=600)
        ramp = time.perf_counter() - started
        _common.settle_memory()
        during = _common.rss_bytes()
        _common.trim_heap()
        during_trimmed = _common.rss_bytes()
        gate.set()
        while worker.driven < count:
            await asyncio.sleep(0.05)
        stop.set()
        await serving
    return {
        "bench": "in_flight_memory",
        "store": kind,
        "in_flight": count,
        "rss_kb_per_saga": round((during - before) / 1024 / count, 2),
        "live_kb_per_saga": round((during_trimmed - before_trimmed) / 1024 / count, 2),
        "rss_mb_before": round(before / 2**20, 1),
        "rss_mb_in_flight": round(during / 2**20, 1),
        "ramp_s": round(ramp, 2),
        "correct": worker.driven == count,
    }


async def drive_all(orchestrator: Orchestrator, count: int) -> None:
    worker = Worker(orchestrator, concurrency=count, poll_interval=0.05)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.run(stop))
    while worker.driven < count:
        await asyncio.sleep(0.02)
    stop.set()
    await serving


def memory_benchmark(args: argparse.Namespace) -> None:
    for count in [int(s) for s in args.in_flight.split(",") if s]:
        with contextlib.ExitStack() as stack:
            url = args.store
            if _common.is_postgres(url):
                url = stack.enter_context(fresh_schema(url))
            elif url.startswith("sqlite"):
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="saga_rss_"))
                url = f"sqlite:///{tmp}/rss.db"
            kind = args.store.partition(":")[0].lower()
            _common.emit(**asyncio.run(in_flight_rss(url, count, kind)))


# -- ls on a table of finished sagas ----------------------------------------------------

LS_COMMANDS = {
    "ls_limit_1": ["ls", "--limit", "1"],
    "ls_stuck_limit_1": ["ls", "--stuck", "--older-than", "0s", "--limit", "1"],
}


def timed_command(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of
    ``python -m saga_fsm.cli *args``."""
    import os
    import subprocess

    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"saga-fsm {' '.join(args)} exited {proc.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def ls_benchmark(args: argparse.Namespace) -> None:
    if not args.store.startswith("sqlite"):
        _common.note("ls: SQLite only (the figure the CLI pays on the default store); skipped")
        return
    now = datetime.now(UTC)
    with table_of(args.store, args.ls_rows, 10, now) as (target, load_s):
        for name, command in LS_COMMANDS.items():
            runs = [timed_command([*command, "--store", target]) for _ in range(args.ls_runs)]
            times = sorted(t for t, _, _ in runs)
            cpu = sorted(c for _, c, _ in runs)
            _common.emit(
                bench=name,
                store="sqlite",
                rows=args.ls_rows,
                unfinished=10,
                wall_s_p50=round(times[len(times) // 2], 3),
                cpu_s_p50=round(cpu[len(cpu) // 2], 3),
                peak_rss_mb=round(max(kb for _, _, kb in runs) / 1024, 1),
                load_s=round(load_s, 1),
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="postgresql://... or sqlite:///x.db")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--live", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--claims", type=int, default=50)
    parser.add_argument("--in-flight", default="1000,10000")
    parser.add_argument("--ls-rows", type=int, default=30_000)
    parser.add_argument("--ls-runs", type=int, default=3)
    parser.add_argument("--only", choices=("claim", "memory", "ls"), default=None)
    args = parser.parse_args(argv)
    if args.only == "ls":
        ls_benchmark(args)
        return 0
    if args.only != "memory":
        if args.store.startswith("memory"):
            _common.note("claim: memory:// keeps no table to load; skipped")
        else:
            claim_benchmark(args)
    if args.only != "claim":
        memory_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

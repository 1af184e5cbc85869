"""Saga throughput against the durable-commit floor.

    python bench/throughput.py --store URL [--sagas N] [--concurrency C]
                               [--fail-rate F] [--seed S] [--app auto|postgres|in-process]
                               [--app-dsn DSN] [--fresh-schema] [--pgbench]
                               [--observe off|on|both] [--rounds R] [--trace-sample P]
                               [--transactional]

Runs N sagas of reserve -> charge -> ship (each step one INSERT into its own application
table, each compensation one UPDATE; a seeded share F of the sagas fails at a random
step and compensates) through saga_fsm on the store at URL, one at a time and C at a
time. On a PostgreSQL store the same run measures the floor: raw psycopg doing exactly
the application's writes (one INSERT or UPDATE, each its own commit, per step and per
compensation) with no saga state at all, sequentially and from C threads. Prints one
JSON object per line; see bench/README.md for what each field means.

``--observe on`` runs saga_fsm with tracing (the OpenTelemetry SDK, spans batched to an
exporter that drops them) and Prometheus metrics; ``both`` alternates off and on runs,
R rounds each, in the same process, and prints the client CPU overhead per saga.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import _workload
from _workload import STEPS, App, InProcessApp, PostgresApp

from saga_fsm import Observer, Orchestrator, PostgresStore, SnapshotStore, open_store
from saga_fsm.observability import NO_OBSERVER


@contextlib.contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """A conninfo whose search_path is a new schema, dropped afterwards."""
    schema = f"saga_bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_conninfo(dsn, options=f"-csearch_path={schema}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextlib.asynccontextmanager
async def saga_store(url: str, pg_conninfo: str | None, size: int) -> AsyncIterator[SnapshotStore]:
    """A store for one run; on PostgreSQL, on a pool as large as the sagas in flight so
    that no saga queues for a store connection."""
    if pg_conninfo is None:
        async with open_store(url) as store:
            yield store
        return
    await (await PostgresStore.open(pg_conninfo, min_size=1, max_size=1)).close()  # migrates
    async with AsyncConnectionPool(
        pg_conninfo, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
    ) as pool:
        await pool.wait()
        yield PostgresStore(pool)


class Run:
    """Times, CPU, peak RSS and commits around one run of N sagas."""

    def __init__(self, engine: str, mode: str, counter: _common.CommitCounter | None) -> None:
        self.engine, self.mode, self.counter = engine, mode, counter
        self.latencies: list[float] = []
        self.outcomes: list[tuple[str, str | None, str]] = []

    def begin(self) -> None:
        self.commits0 = self.counter.settled() if self.counter else None
        self.server0 = _common.server_cpu_seconds() if self.counter else None
        self.wal0 = self.counter.wal_bytes() if self.counter else None
        self.db_wal0 = self.counter.wal_start() if self.counter else None
        self.backends0 = self.counter.backend_cpu() if self.counter else {}
        _common.settle_memory()
        _common.reset_peak_rss()
        self.cpu0 = _common.cpu_seconds()
        self.t0 = time.perf_counter()

    def end(self) -> None:
        """Called while the run's connections are still open (their backends alive)."""
        self.elapsed = time.perf_counter() - self.t0
        self.cpu = _common.cpu_seconds() - self.cpu0
        self.peak = _common.peak_rss_mb()
        backends = self.counter.backend_cpu() if self.counter else {}
        self.db_cpu = sum(cpu - self.backends0.get(pid, 0.0) for pid, cpu in backends.items())

    def line(
        self, app: App, sagas: int, concurrency: int, *, store: str, app_kind: str
    ) -> dict[str, Any]:
        commits = server = wal = db_cpu = db_wal = None
        if self.counter is not None and self.commits0 is not None:
            commits = round((self.counter.settled() - self.commits0) / sagas, 3)
            db_cpu = round(self.db_cpu * 1000 / sagas, 3)
            written = self.counter.db_wal_bytes(self.db_wal0)
            db_wal = None if written is None else round(written / 1024 / sagas, 2)
            if self.wal0 is not None:
                wal = round((self.counter.wal_bytes() - self.wal0) / 1024 / sagas, 2)
            server_now = _common.server_cpu_seconds()
            if server_now is not None and self.server0 is not None:
                server = round((server_now - self.server0) * 1000 / sagas, 3)
        correct, problems = _workload.check(app, self.outcomes)
        fields: dict[str, Any] = {
            "engine": self.engine,
            "mode": self.mode,
            "sagas_per_s": round(sagas / self.elapsed, 1),
            "p50_ms": _common.percentile_ms(self.latencies, 50),
            "p99_ms": _common.percentile_ms(self.latencies, 99),
            "commits_per_saga": commits,
            "client_cpu_ms_per_saga": round(self.cpu * 1000 / sagas, 3),
            "peak_rss_mb": self.peak,
            "server_cpu_ms_per_saga": server,
            "wal_kb_per_saga": wal,
            "db_backend_cpu_ms_per_saga": db_cpu,
            "db_wal_kb_per_saga": db_wal,
            "store": store,
            "app": app_kind,
            "actions_per_s": round(app.calls / self.elapsed, 1),
            "sagas": sagas,
            "concurrency": concurrency,
            "correct": correct,
        }
        if problems:
            fields["problems"] = problems
        return fields


# -- saga_fsm ------------------------------------------------------------------------------


async def run_saga_fsm(
    url: str,
    pg_conninfo: str | None,
    app: App,
    plans: list[str | None],
    concurrency: int,
    run: Run,
    observer: Observer = NO_OBSERVER,
    transactional: bool = False,
) -> None:
    app.prepare()
    definition = _workload.definition(app, transactional=transactional)
    tag = secrets.token_hex(3)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(saga_store(url, pg_conninfo, concurrency))
        await app.open(concurrency)
        stack.push_async_callback(app.close)
        orchestrator = Orchestrator(store, [definition], observer=observer)
        work = iter(enumerate(plans))

        async def lane() -> None:
            for n, fail_at in work:
                saga_id = f"{run.mode}-{tag}-{n:07d}"
                started = time.perf_counter()
                final = await orchestrator.run(
                    definition, {"n": n, "fail_at": fail_at}, saga_id=saga_id
                )
                run.latencies.append(time.perf_counter() - started)
                run.outcomes.append((saga_id, fail_at, final.state))

        run.begin()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        run.end()


# -- the floor -----------------------------------------------------------------------------


def floor_saga(conn: psycopg.Connection[Any], saga_id: str, fail_at: str | None) -> str:
    """The application's writes and nothing else: one autocommit statement (one commit)
    per step and per compensation."""
    done: list[str] = []
    for step in STEPS:
        if step == fail_at:
            break
        conn.execute(_workload.INSERT[step], (_workload.forward_key(saga_id, step), saga_id))
        done.append(step)
    else:
        return "completed"
    for step in reversed(done):
        conn.execute(_workload.UNDO[step], (_workload.forward_key(saga_id, step),))
    return "compensated"


def run_floor(app: PostgresApp, plans: list[str | None], concurrency: int, run: Run) -> None:
    app.prepare()
    tag = secrets.token_hex(3)
    conns = [psycopg.connect(app.dsn, autocommit=True) for _ in range(concurrency)]
    work = iter(enumerate(plans))
    lock = threading.Lock()

    def lane(conn: psycopg.Connection[Any]) -> None:
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return
            n, fail_at = item
            saga_id = f"{run.mode}-{tag}-{n:07d}"
            started = time.perf_counter()
            state = floor_saga(conn, saga_id, fail_at)
            elapsed = time.perf_counter() - started
            with lock:
                app.calls += len(STEPS) if fail_at is None else 2 * STEPS.index(fail_at)
                run.latencies.append(elapsed)
                run.outcomes.append((saga_id, fail_at, state))

    try:
        run.begin()
        if concurrency == 1:
            lane(conns[0])
        else:
            threads = [threading.Thread(target=lane, args=(c,)) for c in conns]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        run.end()
    finally:
        for conn in conns:
            conn.close()


# -- pgbench -------------------------------------------------------------------------------


def pgbench_binary() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    return None


def run_pgbench(dsn: str, clients: int, seconds: int) -> dict[str, Any] | None:
    """pgbench's own single-row UPDATE, one per transaction: what this server commits
    per second with nothing of ours in the way."""
    binary = pgbench_binary()
    if binary is None:
        _common.note("pgbench: not installed, skipped")
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_pgbench (id integer PRIMARY KEY, n bigint NOT NULL)"
        )
        conn.execute(
            "INSERT INTO bench_pgbench SELECT g, 0 FROM generate_series(1, 1000) g"
            " ON CONFLICT DO NOTHING"
        )
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    for key, var in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("dbname", "PGDATABASE"),
        ("password", "PGPASSWORD"),
        ("options", "PGOPTIONS"),
    ):
        if params.get(key):
            env[var] = str(params[key])
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(
            "\\set id random(1, 1000)\nUPDATE bench_pgbench SET n = n + 1 WHERE id = :id;\n"
        )
    try:
        done = subprocess.run(
            [
                binary,
                "-n",
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(seconds),
                "-f",
                script.name,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if done.returncode != 0 or tps is None:
        _common.note(f"pgbench failed: {done.stderr.strip()[-500:]}")
        return None
    return {
        "engine": "pgbench",
        "mode": "sequential" if clients == 1 else "concurrent",
        "commits_per_s": float(tps.group(1)),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "concurrency": clients,
    }


# -- main ----------------------------------------------------------------------------------


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
    return uvloop.new_event_loop


def observing(sample: float = 1.0) -> Observer:
    """Tracing through the OpenTelemetry SDK (batched to an exporter that drops the
    spans: the cost of making them, not of shipping them; a share ``sample`` of the sagas
    traced) and metrics."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from prometheus_client import CollectorRegistry

    from saga_fsm.observability import Observers
    from saga_fsm.observability.metrics import SagaMetrics
    from saga_fsm.observability.tracing import SagaTracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sample)))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return Observers(SagaTracing(provider), SagaMetrics(CollectorRegistry()))


def choose_app(args: argparse.Namespace, pg_conninfo: str | None) -> App:
    """Application tables live with a PostgreSQL store; beside a memory or SQLite store
    they go to ``--app-dsn`` (or $SAGA_FSM_BENCH_DSN, or the local default) when it
    answers, and otherwise stay in process."""
    if args.app == "in-process":
        return InProcessApp()
    dsn = pg_conninfo or args.app_dsn or _common.env_dsn()
    if pg_conninfo is None and not _common.reachable(dsn):
        if args.app == "postgres":
            raise SystemExit(f"--app postgres: no PostgreSQL answers at {dsn}")
        _common.note(f"no PostgreSQL at {dsn}: the application tables stay in process")
        return InProcessApp()
    return PostgresApp(dsn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", required=True, help="memory://, sqlite:///x.db or postgresql://..."
    )
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fail-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--app", choices=("auto", "postgres", "in-process"), default="auto")
    parser.add_argument(
        "--app-dsn", help="where the application tables live beside a non-PostgreSQL store"
    )
    parser.add_argument("--modes", default="sequential,concurrent")
    parser.add_argument("--no-floor", action="store_true", help="skip the raw-psycopg floor")
    parser.add_argument(
        "--fresh-schema",
        action="store_true",
        help="PostgreSQL: run in a new schema, dropped at the end",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop saga_fsm runs on (uvloop: pip install uvloop; not a dependency)",
    )
    parser.add_argument(
        "--pgbench",
        type=int,
        metavar="SECONDS",
        default=0,
        help="also run pgbench single-row updates for SECONDS per mode",
    )
    parser.add_argument(
        "--transactional",
        action="store_true",
        help="PostgreSQL: the steps are transactional (their writes join the transition's)",
    )
    parser.add_argument(
        "--observe",
        choices=("off", "on", "both"),
        default="off",
        help="tracing and metrics on saga_fsm's runs; both: off and on alternately",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --observe both: off/on pairs per mode"
    )
    parser.add_argument(
        "--trace-sample",
        type=float,
        default=1.0,
        help="with --observe: the share of sagas traced (a parent-based ratio sampler)",
    )
    args = parser.parse_args(argv)
    settings = {"off": [False], "on": [True], "both": [False, True] * args.rounds}[args.observe]
    modes = [m for m in args.modes.split(",") if m]
    with contextlib.ExitStack() as stack:
        pg_conninfo = None
        if _common.is_postgres(args.store):
            pg_conninfo = args.store
            if args.fresh_schema:
                pg_conninfo = stack.enter_context(fresh_schema(args.store))
        app = choose_app(args, pg_conninfo)
        counter = None
        if isinstance(app, PostgresApp):
            counter = _common.CommitCounter(app.dsn)
            stack.callback(counter.close)
        plans = _workload.plan(args.sagas, args.fail_rate, args.seed)
        store_kind = args.store.partition(":")[0].lower()
        with_floor = pg_conninfo is not None and isinstance(app, PostgresApp) and not args.no_floor
        for mode in modes:
            concurrency = 1 if mode == "sequential" else args.concurrency
            floor_rate = None
            if with_floor:
                assert isinstance(app, PostgresApp)
                run = Run("floor", mode, counter)
                run_floor(app, plans, concurrency, run)
                line = run.line(app, args.sagas, concurrency, store="none", app_kind="postgres")
                floor_rate = line["sagas_per_s"]
                _common.emit(**line)
            cpu: dict[bool, list[float]] = {False: [], True: []}
            for observed in settings:
                run = Run("saga_fsm", mode, counter)
                observer = observing(args.trace_sample) if observed else NO_OBSERVER
                with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
                    runner.run(
                        run_saga_fsm(
                            args.store,
                            pg_conninfo,
                            app,
                            plans,
                            concurrency,
                            run,
                            observer,
                            args.transactional,
                        )
                    )
                line = run.line(app, args.sagas, concurrency, store=store_kind, app_kind=app.kind)
                cpu[observed].append(line["client_cpu_ms_per_saga"])
                if args.observe != "off":
                    line["observe"] = "on" if observed else "off"
                if args.loop != "asyncio":
                    line["loop"] = args.loop
                if args.transactional:
                    line["transactional"] = True
                if floor_rate:
                    line = {
                        **dict(itertools.islice(line.items(), 8)),
                        "ratio_to_floor": round(line["sagas_per_s"] / floor_rate, 3),
                        **dict(itertools.islice(line.items(), 8, None)),
                    }
                _common.emit(**line)
            if cpu[False] and cpu[True]:
                off, on = sum(cpu[False]) / len(cpu[False]), sum(cpu[True]) / len(cpu[True])
                _common.emit(
                    engine="observe_overhead",
                    mode=mode,
                    client_cpu_ms_per_saga_off=round(off, 3),
                    client_cpu_ms_per_saga_on=round(on, 3),
                    overhead_pct=round((on - off) * 100 / off, 1),
                    rounds=args.rounds,
                    trace_sample=args.trace_sample,
                    store=store_kind,
                )
            if args.pgbench and isinstance(app, PostgresApp):
                result = run_pgbench(app.dsn, concurrency, args.pgbench)
                if result:
                    _common.emit(**result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

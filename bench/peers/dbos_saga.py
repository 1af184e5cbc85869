"""The throughput workload on DBOS Transact, printing the same JSON fields as
bench/throughput.py.

    /tmp/peers/bin/python bench/peers/dbos_saga.py --dsn postgresql://.../postgres \
        [--sagas N] [--concurrency C] [--modes sequential,concurrent] [--fail-rate F]

A DBOS workflow per saga, one ``@DBOS.step`` per step (one INSERT into the step's own
application table, through the application's own pool) and the compensations (one UPDATE
each) in reverse order in an ``except`` block; steps are not retried (as in saga_fsm's
workload, a planned failure is permanent). The application tables are in a database of
their own (``<prefix>_app``), DBOS's system tables in another (``<prefix>_sys``); both
are created afresh. ``commits_per_saga`` counts the commits of both databases.
C sagas in flight are C threads, each running workflows one after the other.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common
import _workload
from _workload import INSERT, STEPS, UNDO, forward_key
from dbos import DBOS, DBOSConfig


class Declined(Exception):
    """The planned permanent failure of a step."""


class App:
    """The application tables through their own pool (what ``PostgresApp`` does, sync)."""

    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: ConnectionPool[Any] | None = None
        self.calls = 0
        self._lock = threading.Lock()

    def prepare(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(_workload.SCHEMA)
            conn.execute("TRUNCATE " + ", ".join(_workload.TABLES.values()))
        self.calls = 0

    def open(self, size: int) -> None:
        self.pool = ConnectionPool(
            self.dsn, min_size=size, max_size=size, kwargs={"autocommit": True}, open=True
        )
        self.pool.wait()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def count(self) -> None:
        with self._lock:
            self.calls += 1

    def effects(self) -> dict[str, dict[str, bool]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return {
                step: dict(conn.execute(f"SELECT idempotency_key, undone FROM {table}").fetchall())
                for step, table in _workload.TABLES.items()
            }


APP: App | None = None


@DBOS.step()
def forward(step: str, saga_id: str, fail: bool) -> None:
    assert APP is not None and APP.pool is not None
    APP.count()
    if fail:
        raise Declined(f"{step} declined")
    with APP.pool.connection() as conn:
        conn.execute(INSERT[step], (forward_key(saga_id, step), saga_id))


@DBOS.step()
def undo(step: str, saga_id: str) -> None:
    assert APP is not None and APP.pool is not None
    APP.count()
    with APP.pool.connection() as conn:
        conn.execute(UNDO[step], (forward_key(saga_id, step),))


@DBOS.workflow()
def saga(saga_id: str, fail_at: str | None) -> str:
    done: list[str] = []
    try:
        for step in STEPS:
            forward(step, saga_id, fail_at == step)
            done.append(step)
    except Declined:
        for step in reversed(done):
            undo(step, saga_id)
        return "compensated"
    return "completed"


def fresh_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_dsn, dbname=name)


def url(conninfo: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = params.get("user", "postgres")
    password = f":{params['password']}" if params.get("password") else ""
    host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
    return f"postgresql://{user}{password}@{host}:{port}/{params['dbname']}"


def run(
    app: App, plans: list[str | None], concurrency: int, mode: str, counters: list[Any]
) -> dict[str, Any]:
    app.prepare()
    app.open(concurrency)
    tag = secrets.token_hex(3)
    work = iter(enumerate(plans))
    lock = threading.Lock()
    latencies: list[float] = []
    outcomes: list[tuple[str, str | None, str]] = []

    def lane() -> None:
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return
            n, fail_at = item
            saga_id = f"{mode}-{tag}-{n:07d}"
            started = time.perf_counter()
            state = saga(saga_id, fail_at)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                outcomes.append((saga_id, fail_at, state))

    commits0 = sum(c.settled() for c in counters)
    wal0 = counters[0].wal_bytes()
    server0 = _common.server_cpu_seconds()
    _common.settle_memory()
    _common.reset_peak_rss()
    cpu0 = _common.cpu_seconds()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lane) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    cpu = _common.cpu_seconds() - cpu0
    peak = _common.peak_rss_mb()
    app.close()
    sagas = len(plans)
    commits = sum(c.settled() for c in counters) - commits0
    server_now = _common.server_cpu_seconds()
    correct, problems = _workload.check(app, outcomes)  # type: ignore[arg-type]
    line: dict[str, Any] = {
        "engine": "dbos",
        "mode": mode,
        "sagas_per_s": round(sagas / elapsed, 1),
        "p50_ms": _common.percentile_ms(latencies, 50),
        "p99_ms": _common.percentile_ms(latencies, 99),
        "commits_per_saga": round(commits / sagas, 3),
        "client_cpu_ms_per_saga": round(cpu * 1000 / sagas, 3),
        "peak_rss_mb": peak,
        "server_cpu_ms_per_saga": (
            round((server_now - server0) * 1000 / sagas, 3)
            if server_now is not None and server0 is not None
            else None
        ),
        "wal_kb_per_saga": round((counters[0].wal_bytes() - wal0) / 1024 / sagas, 2),
        "store": "dbos",
        "app": "postgres",
        "actions_per_s": round(app.calls / elapsed, 1),
        "sagas": sagas,
        "concurrency": concurrency,
        "correct": correct,
    }
    if problems:
        line["problems"] = problems
    return line


def main() -> int:
    global APP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--prefix", default="bench_dbos")
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fail-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="sequential,concurrent")
    args = parser.parse_args()
    app_dsn = fresh_database(args.dsn, f"{args.prefix}_app")
    sys_dsn = fresh_database(args.dsn, f"{args.prefix}_sys")
    config: DBOSConfig = {
        "name": "saga_bench",
        "system_database_url": url(sys_dsn),
        "sys_db_pool_size": args.concurrency + 4,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    APP = App(app_dsn)
    counters = [_common.CommitCounter(app_dsn), _common.CommitCounter(sys_dsn)]
    try:
        plans = _workload.plan(args.sagas, args.fail_rate, args.seed)
        for mode in [m for m in args.modes.split(",") if m]:
            concurrency = 1 if mode == "sequential" else args.concurrency
            _common.emit(**run(APP, plans, concurrency, mode, counters))
    finally:
        for counter in counters:
            counter.close()
        DBOS.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

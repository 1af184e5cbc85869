"""Worker subprocesses against a real PostgreSQL schema, and what the tests read back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from saga_fsm import Orchestrator, PostgresStore
from tests.durability import participants

ROOT = Path(__file__).resolve().parents[2]


def store_url(conninfo: str) -> str:
    """A ``postgresql://`` URL for the CLI from a key=value conninfo."""
    params = conninfo_to_dict(conninfo)
    user = params.pop("user", "postgres")
    host = params.pop("host", "127.0.0.1")
    port = params.pop("port", "5432")
    dbname = params.pop("dbname", "postgres")
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    return f"postgresql://{user}@{host}:{port}/{dbname}" + (f"?{query}" if query else "")


def prepare(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(participants.SCHEMA)


async def start_sagas(
    conninfo: str, rows: list[dict[str, Any]], *, slow_retry: bool = False
) -> list[str]:
    definition, ref = (
        (participants.slow_retry, participants.SLOW_REF)
        if slow_retry
        else (participants.definition, participants.REF)
    )
    store = await PostgresStore.open(conninfo)
    try:
        orchestrator = Orchestrator(store, [definition])
        ids = []
        for n, data in enumerate(rows):
            started = await orchestrator.start(
                definition, data, correlation_id=f"c{n}", definition_ref=ref
            )
            ids.append(started.saga_id)
        return ids
    finally:
        await store.close()


class Workers:
    """Worker subprocesses (``saga-fsm worker``) that can be killed and replaced."""

    def __init__(self, conninfo: str, *, lease_seconds: float = 1.5, concurrency: int = 8) -> None:
        self.url = store_url(conninfo)
        self.env = {**os.environ, "SAGA_FSM_FAULT_DSN": conninfo, "PYTHONPATH": str(ROOT)}
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._n = 0

    def spawn(self, log_dir: Path) -> str:
        self._n += 1
        name = f"w{self._n}"
        log = log_dir / f"{name}.log"
        self.logs[name] = log
        self.procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "saga_fsm.cli",
                "worker",
                participants.REF,
                participants.SLOW_REF,
                "--store",
                self.url,
                "--id",
                name,
                "--lease-seconds",
                str(self.lease_seconds),
                "--poll-interval",
                "0.05",
                "--concurrency",
                str(self.concurrency),
                "--grace",
                "10",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        return name

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)  # reap it, so its pid is no longer "alive"

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = -9
        self.procs.clear()
        return codes

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]


def query(conninfo: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def states(conninfo: str) -> dict[str, int]:
    return dict(query(conninfo, "SELECT state, count(*) FROM saga_fsm_sagas GROUP BY state"))  # type: ignore[arg-type]


def wait_until_finished(conninfo: str, total: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = states(conninfo)
        finished = sum(v for k, v in counts.items() if k in ("completed", "compensated", "failed"))
        if finished >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


@contextmanager
def workers(conninfo: str, log_dir: Path, count: int, **options: Any) -> Iterator[Workers]:
    pool = Workers(conninfo, **options)
    for _ in range(count):
        pool.spawn(log_dir)
    try:
        yield pool
    finally:
        pool.stop_all()


def check_effects(conninfo: str) -> dict[str, int]:
    """The world the participants left: every check the fault tests share."""
    sagas = query(conninfo, "SELECT saga_id, state FROM saga_fsm_sagas")
    effects = {(s, step) for s, step in query(conninfo, "SELECT saga_id, step FROM effects")}
    undone = query(conninfo, "SELECT saga_id, step, forward_found FROM compensations")
    assert all(found for _, _, found in undone), "a compensation ran without its forward step"
    undone_set = {(s, step) for s, step, _ in undone}
    for saga_id, state in sagas:
        assert state in ("completed", "compensated"), (saga_id, state)
        if state == "completed":
            assert {step for s, step in effects if s == saga_id} == {
                "reserve",
                "charge",
                "ship",
                "notify",
            }
            assert not {step for s, step in undone_set if s == saga_id}
        else:
            done = {step for s, step in effects if s == saga_id and step in ("reserve", "charge")}
            assert {step for s, step in undone_set if s == saga_id} == done, saga_id
    attempts = query(conninfo, "SELECT count(*), count(DISTINCT idempotency_key) FROM attempts")[0]
    overlapping_runs = query(conninfo, "SELECT count(*) FROM overlapping_runs")[0][0]
    return {
        "sagas": len(sagas),
        "effects": len(effects),
        "compensations": len(undone_set),
        "attempts": attempts[0],
        "keys_attempted": attempts[1],
        "overlapping_runs": overlapping_runs,
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)

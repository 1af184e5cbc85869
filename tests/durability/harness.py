"""Worker subprocesses against a real PostgreSQL schema, and what the tests read back."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from saga_fsm import Orchestrator, PostgresStore
from tests import _pg
from tests.durability import participants

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "compensated", "failed")


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


def worker_command(url: str, name: str, lease_seconds: float, concurrency: int) -> list[str]:
    """The command line of one worker process (the one place it is built)."""
    return [
        sys.executable,
        "-m",
        "saga_fsm.cli",
        "worker",
        participants.REF,
        participants.SLOW_REF,
        "--store",
        url,
        "--id",
        name,
        "--lease-seconds",
        str(lease_seconds),
        "--poll-interval",
        "0.05",
        "--concurrency",
        str(concurrency),
        "--grace",
        "10",
    ]


class Workers:
    """Worker subprocesses (``saga-fsm worker``) that can be killed, stalled and replaced."""

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
            worker_command(self.url, name, self.lease_seconds, self.concurrency),
            cwd=ROOT,
            env={**self.env, "SAGA_FSM_FAULT_WORKER": name},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        return name

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)  # reap it, so its pid is no longer "alive"

    def pause(self, name: str) -> None:
        """Stall the worker (SIGSTOP): it keeps its connections and its leases run out."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)  # a stalled one must hear the SIGTERM
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

    def held_by(self, conninfo: str, name: str) -> set[str]:
        """The unfinished sagas whose lease ``name`` holds."""
        return {
            saga_id
            for (saga_id,) in query(
                conninfo,
                "SELECT saga_id FROM saga_fsm_sagas WHERE lease_owner = %s AND state <> ALL(%s)",
                (name, list(TERMINAL)),
            )
        }


def query(conninfo: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement; waits out a server restart (another test's, on a shared server)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


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


# Each figure is one query over what the participants recorded (see participants.py).
_FIGURES = {
    "sagas": "SELECT count(*) FROM saga_fsm_sagas",
    "effects": "SELECT count(*) FROM effects",
    "attempts": "SELECT count(*) FROM attempts",
    # Calls of an attempt that had been called before: a worker died or stalled mid-call.
    "reruns": "SELECT count(*) - count(DISTINCT (idempotency_key, compensating, attempt))"
    " FROM attempts",
    # A repeated effect a key-honouring participant refused (its unique key absorbed it).
    "duplicates_absorbed_by_key": "SELECT count(*) FROM effect_log WHERE absorbed",
    # Repeated effects as a participant that ignores the key would have applied them.
    "duplicates_reaching_non_dedup": "SELECT count(*) - count(DISTINCT idempotency_key)"
    " FROM effect_log",
    "duplicate_compensations": "SELECT count(*) - count(DISTINCT idempotency_key)"
    " FROM compensations",
    "compensations_without_forward": "SELECT count(DISTINCT idempotency_key) FROM compensations"
    " WHERE NOT forward_found",
    "order_violations": "SELECT count(*) FROM violations WHERE kind = 'order'",
    "calls_without_lease": "SELECT count(*) FROM violations WHERE kind = 'unleased'",
}


def measure(conninfo: str, stalled: Collection[str] = ()) -> dict[str, Any]:
    """Every figure in ``_FIGURES``, overlapping calls (apart from those of a worker that
    was ever ``stalled``, which finishes the call it was in after a takeover), and the
    per-saga checks of ``saga_problems``."""
    figures: dict[str, Any] = {name: query(conninfo, sql)[0][0] for name, sql in _FIGURES.items()}
    overlaps = query(conninfo, "SELECT worker, holder FROM overlapping_runs")
    stalled_ones = [pair for pair in overlaps if set(pair) & set(stalled)]
    figures["overlapping_attempts"] = len(overlaps) - len(stalled_ones)
    figures["overlaps_with_a_stalled_worker"] = len(stalled_ones)
    figures["states"] = states(conninfo)
    figures["lost"] = figures["sagas"] - sum(
        n for state, n in figures["states"].items() if state in ("completed", "compensated")
    )
    problems = saga_problems(conninfo)
    figures["wrong_sagas"] = len(problems)
    figures["examples"] = problems[:5]
    return figures


def saga_problems(conninfo: str) -> list[str]:
    """Each saga's effects against its final state: a completed saga has every forward
    effect and no compensation; a compensated one has no effect past the pivot, and
    exactly its done compensable steps undone, the later step first."""
    effects: dict[str, set[str]] = {}
    for saga_id, step in query(conninfo, "SELECT saga_id, step FROM effects"):
        effects.setdefault(saga_id, set()).add(step)
    undone: dict[str, list[str]] = {}  # saga -> steps in the order first compensated
    for saga_id, step in query(
        conninfo,
        "SELECT saga_id, step FROM compensations GROUP BY saga_id, step ORDER BY min(seq)",
    ):
        undone.setdefault(saga_id, []).append(step)
    problems = []
    for saga_id, state in query(conninfo, "SELECT saga_id, state FROM saga_fsm_sagas"):
        done, comps = effects.get(saga_id, set()), undone.get(saga_id, [])
        if state == "completed":
            ok = done == set(participants.FORWARD) and not comps
        elif state == "compensated":
            expected = [step for step in ("charge", "reserve") if step in done]
            ok = not done & {"ship", "notify"} and comps == expected
        else:
            ok = False
        if not ok:
            problems.append(f"{saga_id} {state}: effects {sorted(done)}, undone {comps}")
    return problems


def check_effects(conninfo: str, stalled: Collection[str] = ()) -> dict[str, Any]:
    """The world the participants left, with every check the fault tests share."""
    world = measure(conninfo, stalled)
    assert world["lost"] == 0, world["states"]
    assert world["wrong_sagas"] == 0, world["examples"]
    assert world["compensations_without_forward"] == 0, world
    assert world["order_violations"] == 0, query(conninfo, "SELECT * FROM violations LIMIT 5")
    assert world["overlapping_attempts"] == 0, world
    # The two ways of counting repeats agree: each one the key absorbed reached the log.
    assert world["duplicates_absorbed_by_key"] == world["duplicates_reaching_non_dedup"], world
    return world


def server_started_at(conninfo: str) -> datetime:
    return query(conninfo, "SELECT pg_postmaster_start_time()")[0][0]  # type: ignore[no-any-return]


def restart_command(conninfo: str) -> list[str] | None:
    """How to restart the very server ``conninfo`` points at (found by its data
    directory), or None when it is not a server this machine can restart."""
    ((data_dir,),) = query(conninfo, "SHOW data_directory")
    if shutil.which("pg_lsclusters"):
        listed = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
        )
        for line in listed.stdout.splitlines():
            version, cluster, _port, _status, _owner, directory, *_ = line.split()
            if directory == data_dir:
                return [
                    *("pg_ctlcluster", "--skip-systemctl-redirect", version, cluster),
                    *("restart", "-m", "fast"),
                ]
    bindir = _pg.find_bindir()
    if bindir is None or not Path(data_dir).is_dir():
        return None
    as_postgres = ["runuser", "-u", _pg.OS_USER, "--"] if os.geteuid() == 0 else []
    return [*as_postgres, str(bindir / "pg_ctl"), "-D", data_dir, "restart", "-m", "fast", "-w"]


def restart_server(conninfo: str, log: Path) -> None:
    """Restart the server (fast shutdown: the outage lasts about a second). Fails, never
    skips, under CI=true when the server cannot be restarted from here."""
    command = restart_command(conninfo)
    if command is None:
        why = "the PostgreSQL server of the DSN is not a local cluster this test can restart"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    with log.open("wb") as out:  # a restarted server may keep the output open: not a pipe
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, log.read_text(errors="replace")


def run(coro: Any) -> Any:
    return asyncio.run(coro)

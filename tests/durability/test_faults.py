"""Fault tests with real worker processes and a real PostgreSQL.

The figures (kills survived, takeover times, throughput) are printed; run with ``-s``
to see them. Speed is never asserted here: the machine is shared and noisy.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.durability import participants
from tests.durability.harness import (
    ROOT,
    check_effects,
    prepare,
    query,
    run,
    start_sagas,
    states,
    store_url,
    wait_until_finished,
    workers,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
TERMINAL = ("completed", "compensated", "failed")


def report(name: str, **figures: object) -> None:
    print(f"\nFIGURES {name}: {json.dumps(figures, sort_keys=True)}")


class TakeoverWatch(threading.Thread):
    """After each kill, time how long until each saga the dead worker held is leased
    by another worker (or finished)."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.pending: list[tuple[float, str, set[str]]] = []
        self.seconds: list[float] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def watch(self, killed_at: float, victim: str, saga_ids: set[str]) -> None:
        with self.lock:
            self.pending.append((killed_at, victim, set(saga_ids)))

    def run(self) -> None:
        while not self.done.is_set():
            with self.lock:
                entries = list(self.pending)
            for killed_at, victim, ids in entries:
                if not ids:
                    continue
                rows = query(
                    self.conninfo,
                    "SELECT saga_id, lease_owner, state FROM saga_fsm_sagas WHERE saga_id = ANY(%s)",
                    (list(ids),),
                )
                now = time.monotonic()
                for saga_id, owner, state in rows:
                    if owner != victim or state in TERMINAL:
                        self.seconds.append(now - killed_at)
                        ids.discard(saga_id)
            time.sleep(0.02)


def test_kill_9_workers_at_random_loses_nothing(postgres_dsn: str, tmp_path: Path) -> None:
    prepare(postgres_dsn)
    rng = random.Random(20261121)
    total = 400
    rows = [
        {"n": n, "delay": 0.15, "fail_at": rng.choice([None] * 6 + ["reserve", "charge", "ship"])}
        for n in range(total)
    ]
    run(start_sagas(postgres_dsn, rows))
    watch = TakeoverWatch(postgres_dsn)
    watch.start()
    kills = 0
    with workers(postgres_dsn, tmp_path, 3, lease_seconds=1.5, concurrency=4) as pool:
        while kills < 20:
            time.sleep(rng.uniform(0.1, 0.5))
            victim = rng.choice(pool.alive())
            held = {
                saga_id
                for (saga_id,) in query(
                    postgres_dsn,
                    "SELECT saga_id FROM saga_fsm_sagas WHERE lease_owner = %s AND state <> ALL(%s)",
                    (victim, list(TERMINAL)),
                )
            }
            killed_at = time.monotonic()
            pool.kill9(victim)
            watch.watch(killed_at, victim, held)
            pool.spawn(tmp_path)
            kills += 1
        unfinished_at_last_kill = total - sum(
            v for k, v in states(postgres_dsn).items() if k in TERMINAL
        )
        counts = wait_until_finished(postgres_dsn, total, timeout=180)
        exit_codes = pool.stop_all()
    watch.done.set()
    watch.join()
    assert unfinished_at_last_kill > 0, (
        "every saga finished before the last kill: make the run longer"
    )
    assert sum(counts.values()) == total and set(counts) <= {"completed", "compensated"}, counts
    assert all(code == 0 for code in exit_codes.values()), exit_codes
    world = check_effects(postgres_dsn)
    assert world["sagas"] == total
    assert world["overlapping_runs"] == 0
    reruns = world["attempts"] - world["keys_attempted"]
    report(
        "kill -9",
        kills=kills,
        sagas=total,
        states=counts,
        lost=total - sum(counts.values()),
        duplicate_effects=0,
        step_reruns_after_kills=reruns,
        takeovers=len(watch.seconds),
        takeover_median_s=round(statistics.median(watch.seconds), 3) if watch.seconds else None,
        takeover_max_s=round(max(watch.seconds), 3) if watch.seconds else None,
        unfinished_at_last_kill=unfinished_at_last_kill,
    )
    assert watch.seconds, "no kill caught a worker holding sagas"


def _throughput(
    conninfo: str, tmp_path: Path, worker_count: int, total: int
) -> tuple[float, dict[str, int]]:
    run(start_sagas(conninfo, [{"n": n, "delay": 0.01} for n in range(total)]))
    began = time.monotonic()
    with workers(conninfo, tmp_path, worker_count, lease_seconds=10, concurrency=8) as pool:
        counts = wait_until_finished(conninfo, total, timeout=300)
        elapsed = time.monotonic() - began
        codes = pool.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    return total / elapsed, counts


def test_four_workers_never_run_one_attempt_twice_at_once(
    postgres_server_dsn: str, tmp_path: Path
) -> None:
    from tests import _pg

    figures = {}
    for worker_count in (1, 4):
        with _pg.fresh_schema(postgres_server_dsn) as conninfo:
            prepare(conninfo)
            rate, counts = _throughput(conninfo, tmp_path, worker_count, 1000)
            assert counts == {"completed": 1000}, counts
            world = check_effects(conninfo)
            assert world["overlapping_runs"] == 0 and world["effects"] == 4000
            figures[f"{worker_count}_workers_sagas_per_s"] = round(rate, 1)
    figures["speedup"] = round(
        figures["4_workers_sagas_per_s"] / figures["1_workers_sagas_per_s"], 2
    )
    report("four workers, 1000 sagas", **figures)


def test_postgres_restart_mid_run(postgres_dsn: str, tmp_path: Path) -> None:
    if not Path("/etc/postgresql").is_dir():
        pytest.skip("no local Debian PostgreSQL cluster to restart")
    cluster = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    prepare(postgres_dsn)
    total = 300
    run(start_sagas(postgres_dsn, [{"n": n, "delay": 0.05} for n in range(total)]))
    with workers(postgres_dsn, tmp_path, 2, lease_seconds=2, concurrency=8) as pool:
        deadline = time.monotonic() + 60
        while states(postgres_dsn).get("completed", 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = states(postgres_dsn)
        restarted = subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                cluster,
                "main",
                "restart",
                "-m",
                "fast",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert restarted.returncode == 0, restarted.stderr
        counts = wait_until_finished(postgres_dsn, total, timeout=180)
        alive = pool.alive()
        codes = pool.stop_all()
    assert before.get("completed", 0) < total, "finished before the restart: make the run longer"
    assert sorted(alive) == ["w1", "w2"], "a worker crashed instead of reconnecting"
    assert counts == {"completed": total}, counts
    assert all(code == 0 for code in codes.values()), codes
    check_effects(postgres_dsn)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("w*.log"))
    report(
        "postgres restart",
        sagas=total,
        completed=counts.get("completed"),
        outage_warnings=logs.count("store unavailable"),
    )


def test_a_step_that_never_returns_times_out_even_across_a_worker_death(
    postgres_dsn: str, tmp_path: Path
) -> None:
    prepare(postgres_dsn)
    (hanging,) = run(start_sagas(postgres_dsn, [{"hang_at": "charge"}]))
    with workers(postgres_dsn, tmp_path, 1, lease_seconds=1.0) as pool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ((state,),) = query(
                postgres_dsn, "SELECT state FROM saga_fsm_sagas WHERE saga_id = %s", (hanging,)
            )
            if state == "running:charge":
                break
            time.sleep(0.05)
        pool.kill9("w1")  # dies while the step hangs; its deadline is in the store
        pool.spawn(tmp_path)
        counts = wait_until_finished(postgres_dsn, 1, timeout=60)
    assert counts == {"compensated": 1}, counts
    ((snapshot,),) = query(
        postgres_dsn, "SELECT snapshot FROM saga_fsm_sagas WHERE saga_id = %s", (hanging,)
    )
    charge = next(s for s in snapshot["steps"] if s["name"] == "charge")
    # It timed out, so it may have acted: its own compensation runs too (empty here).
    assert charge["status"] == "compensated"
    assert sorted(query(postgres_dsn, "SELECT step, forward_found FROM compensations")) == [
        ("charge", False),
        ("reserve", True),
    ]


def test_duplicate_start_from_eight_processes_gives_one_instance(postgres_dsn: str) -> None:
    url = store_url(postgres_dsn)
    # Create the schema first so the eight processes race on the start, not on migrations.
    run(start_sagas(postgres_dsn, []))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "saga_fsm.cli",
                "start",
                participants.REF,
                "--data",
                '{"n": 1}',
                "--idempotency-key",
                "order-42",
                "--store",
                url,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    ids = {out.strip() for out, _ in outputs}
    assert len(ids) == 1
    assert query(postgres_dsn, "SELECT count(*) FROM saga_fsm_sagas")[0][0] == 1


def test_timers_survive_every_worker_restarting(postgres_dsn: str, tmp_path: Path) -> None:
    """A retry back-off longer than a worker holds on to is stored in the database; it
    fires after every worker was replaced, and not before."""
    prepare(postgres_dsn)
    (saga_id,) = run(
        start_sagas(postgres_dsn, [{"flaky_until": time.time() + 1.0}], slow_retry=True)
    )
    with workers(postgres_dsn, tmp_path, 1, lease_seconds=1.0) as pool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ((snapshot,),) = query(
                postgres_dsn, "SELECT snapshot FROM saga_fsm_sagas WHERE saga_id = %s", (saga_id,)
            )
            if snapshot["wake_at"] is not None and snapshot["steps"][0]["status"] == "failed":
                break
            time.sleep(0.05)
        assert snapshot["wake_at"] is not None, "the back-off was never stored"
        # The lease is a column, released as the worker hands the saga back.
        owner, deadline = "?", time.monotonic() + 10
        while owner is not None and time.monotonic() < deadline:
            ((owner,),) = query(
                postgres_dsn,
                "SELECT lease_owner FROM saga_fsm_sagas WHERE saga_id = %s",
                (saga_id,),
            )
            time.sleep(0.05)
        assert owner is None, "a long back-off must release the lease"
        pool.kill9("w1")
    ((wake_at,),) = query(
        postgres_dsn, "SELECT wake_at FROM saga_fsm_sagas WHERE saga_id = %s", (saga_id,)
    )
    assert wake_at is not None
    time.sleep(0.5)
    assert states(postgres_dsn) == {"running:reserve": 1}  # nobody runs it while no worker lives
    with workers(postgres_dsn, tmp_path, 1, lease_seconds=1.0):
        counts = wait_until_finished(postgres_dsn, 1, timeout=30)
    assert counts == {"completed": 1}
    ((attempts,),) = query(
        postgres_dsn, "SELECT count(*) FROM attempts WHERE idempotency_key LIKE %s", ("%:reserve",)
    )
    assert attempts == 1  # the first attempt failed before logging; the timer's retry ran it

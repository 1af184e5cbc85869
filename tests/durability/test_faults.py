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
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.durability import participants
from tests.durability.harness import (
    ROOT,
    TERMINAL,
    Workers,
    check_effects,
    prepare,
    query,
    restart_server,
    run,
    server_started_at,
    start_sagas,
    states,
    store_url,
    wait_until_finished,
    workers,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


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


def holding_victim(pool: Workers, dsn: str, rng: random.Random) -> tuple[str, set[str]]:
    """A random worker, preferably one holding sagas: on a loaded machine a replacement
    can take a while to claim anything, and killing it then tests nothing."""
    for _ in range(40):
        victim = rng.choice(pool.alive())
        held = pool.held_by(dsn, victim)
        if held:
            break
        time.sleep(0.05)
    return victim, held


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
    kills = in_flight_at_kills = 0
    with workers(postgres_dsn, tmp_path, 3, lease_seconds=1.5, concurrency=4) as pool:
        while kills < 20:
            time.sleep(rng.uniform(0.1, 0.5))
            victim, held = holding_victim(pool, postgres_dsn, rng)
            killed_at = time.monotonic()
            pool.kill9(victim)
            watch.watch(killed_at, victim, held)
            in_flight_at_kills += len(held)
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
    # A call is repeated only when a worker died inside it: at most one per saga in flight.
    assert world["reruns"] <= in_flight_at_kills, (world, in_flight_at_kills)
    report(
        "kill -9",
        kills=kills,
        sagas_in_flight_at_kills=in_flight_at_kills,
        takeovers=len(watch.seconds),
        takeover_median_s=round(statistics.median(watch.seconds), 3) if watch.seconds else None,
        takeover_max_s=round(max(watch.seconds), 3) if watch.seconds else None,
        unfinished_at_last_kill=unfinished_at_last_kill,
        **{k: v for k, v in world.items() if k != "examples"},
    )
    assert watch.seconds, "no kill caught a worker holding sagas"


def test_a_stalled_worker_is_fenced_off_after_a_takeover(postgres_dsn: str, tmp_path: Path) -> None:
    """Zombies: a worker stalled (SIGSTOP) past its lease while it holds sagas; another
    worker takes them over; then it wakes up (SIGCONT) with its old leases in mind. Its
    late writes are refused, it starts nothing new on the sagas it lost, and the world
    ends as if it had never stalled."""
    prepare(postgres_dsn)
    rng = random.Random(20261130)

    def batch(count: int) -> list[dict[str, object]]:
        return [
            {"delay": 0.3, "fail_at": rng.choice([None] * 5 + ["charge", "ship"])}
            for _ in range(count)
        ]

    total = len(run(start_sagas(postgres_dsn, batch(60))))
    rounds = in_flight_at_stalls = 0
    stalled = set()
    with workers(postgres_dsn, tmp_path, 3, lease_seconds=1.0, concurrency=3) as pool:
        deadline = time.monotonic() + 45
        while rounds < 20 and time.monotonic() < deadline:
            if total - sum(v for k, v in states(postgres_dsn).items() if k in TERMINAL) < 20:
                total += len(run(start_sagas(postgres_dsn, batch(30))))  # keep them busy
            victim = rng.choice(pool.alive())
            held = pool.held_by(postgres_dsn, victim)
            if not held:
                time.sleep(0.02)
                continue
            pool.pause(victim)
            while pool.held_by(postgres_dsn, victim) and time.monotonic() < deadline:
                time.sleep(0.05)  # its leases run out; the others take its sagas
            pool.resume(victim)
            stalled.add(victim)
            rounds += 1
            in_flight_at_stalls += len(held)
        counts = wait_until_finished(postgres_dsn, total, timeout=120)
        codes = pool.stop_all()
    assert rounds == 20, f"only {rounds} stalls in the time given"
    assert all(code == 0 for code in codes.values()), codes
    assert sum(counts.values()) == total, counts
    world = check_effects(postgres_dsn, stalled)
    logs = "".join(log.read_text(errors="replace") for log in pool.logs.values())
    refused = logs.count("lease lost to")
    # Each stalled worker woke inside a call at most once per saga it held; it called
    # nothing after learning it lost the lease (a write refused), and ran no call twice.
    assert refused > 0, "no stalled worker ever had a write refused"
    assert world["calls_without_lease"] <= in_flight_at_stalls, (world, in_flight_at_stalls)
    assert world["reruns"] <= in_flight_at_stalls, (world, in_flight_at_stalls)
    assert world["overlaps_with_a_stalled_worker"] <= in_flight_at_stalls, world
    report(
        "stalled workers",
        stalls=rounds,
        sagas_in_flight_at_stalls=in_flight_at_stalls,
        late_writes_refused=refused,
        **{k: v for k, v in world.items() if k != "examples"},
    )


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
            assert world["effects"] == 4000 and world["duplicates_reaching_non_dedup"] == 0
            figures[f"{worker_count}_workers_sagas_per_s"] = round(rate, 1)
    figures["speedup"] = round(
        figures["4_workers_sagas_per_s"] / figures["1_workers_sagas_per_s"], 2
    )
    report("four workers, 1000 sagas", **figures)


# What a worker logs when its connections die under it or the server refuses it.
OUTAGE_SIGNS = ("store unavailable", "discarding closed connection")


@pytest.mark.restarts_server
def test_postgres_restart_mid_run(postgres_dsn: str, tmp_path: Path) -> None:
    prepare(postgres_dsn)
    total = 300
    run(start_sagas(postgres_dsn, [{"n": n, "delay": 0.05} for n in range(total)]))
    started_at = server_started_at(postgres_dsn)
    # The lease outlasts the outage (a fast restart takes a second or two): no lease can
    # keep a worker that cannot reach the store from being replaced, so a shorter one
    # would let the other worker take over sagas whose steps are still in flight.
    with workers(postgres_dsn, tmp_path, 2, lease_seconds=6, concurrency=8) as pool:
        deadline = time.monotonic() + 60
        while states(postgres_dsn).get("completed", 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = states(postgres_dsn)
        restart_server(postgres_dsn, tmp_path / "restart.log")
        counts = wait_until_finished(postgres_dsn, total, timeout=180)
        alive = pool.alive()
        codes = pool.stop_all()
    assert server_started_at(postgres_dsn) > started_at, "the server was not restarted"
    assert before.get("completed", 0) < total, "finished before the restart: make the run longer"
    assert sorted(alive) == ["w1", "w2"], "a worker crashed instead of reconnecting"
    assert counts == {"completed": total}, counts
    assert all(code == 0 for code in codes.values()), codes
    world = check_effects(postgres_dsn)
    saw = {name: log.read_text(errors="replace") for name, log in pool.logs.items()}
    outage = {name: sum(text.count(sign) for sign in OUTAGE_SIGNS) for name, text in saw.items()}
    assert all(outage.values()), ("a worker did not notice the outage", saw)
    report("postgres restart", sagas=total, outage_warnings=outage, reruns=world["reruns"])


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
    (saga_id,) = run(start_sagas(postgres_dsn, [{"unavailable_for": 1}], slow_retry=True))
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
    # A fresh worker starts well before the timer is due: it must wait for it.
    assert (wake_at - datetime.now(UTC)).total_seconds() > 2, "too late to test the wait"
    with workers(postgres_dsn, tmp_path, 1, lease_seconds=1.0):
        counts = wait_until_finished(postgres_dsn, 1, timeout=30)
    assert counts == {"completed": 1}
    ((attempts, first_call),) = query(
        postgres_dsn,
        "SELECT count(*), min(started_at) FROM attempts WHERE idempotency_key LIKE %s",
        ("%:reserve",),
    )
    assert attempts == 1  # the first attempt failed before logging; the timer's retry ran it
    assert first_call >= wake_at, "the retry ran before its timer was due"

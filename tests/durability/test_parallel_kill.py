"""kill -9 of worker processes running parallel sagas on a real PostgreSQL: every saga
ends completed or compensated, every effect of a compensated saga is undone once, each
branch in its own reverse order, no group undone before its last forward effect, the
step before the group undone after every branch. Figures are printed (run with -s)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from saga_fsm import Orchestrator, PostgresStore
from tests.durability import parallel_participants as par
from tests.durability.harness import ROOT, TERMINAL, query, run, store_url

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def _start(conninfo: str, rows: list[dict[str, Any]]) -> list[str]:
    store = await PostgresStore.open(conninfo)
    try:
        orchestrator = Orchestrator(store, [par.definition])
        return [
            (
                await orchestrator.start(
                    par.definition, data, correlation_id=f"p{n}", definition_ref=par.REF
                )
            ).saga_id
            for n, data in enumerate(rows)
        ]
    finally:
        await store.close()


class Pool:
    def __init__(self, conninfo: str, logs: Path) -> None:
        self.url = store_url(conninfo)
        self.env = {**os.environ, "SAGA_FSM_FAULT_DSN": conninfo, "PYTHONPATH": str(ROOT)}
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.n = 0

    def spawn(self) -> str:
        self.n += 1
        name = f"pw{self.n}"
        command = [
            *(sys.executable, "-m", "saga_fsm.cli", "worker", par.REF, "--store", self.url),
            *("--id", name, "--lease-seconds", "1.5", "--poll-interval", "0.05"),
            *("--concurrency", "4", "--grace", "10"),
        ]
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return name

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(timeout=60) for name, proc in self.procs.items()}
        self.procs.clear()
        return codes


def _in_group(snapshot: dict[str, Any]) -> bool:
    return str(snapshot["state"]).endswith((":reserve", ":pack"))


def test_kill_9_mid_fan_out_and_mid_compensation_loses_nothing(
    postgres_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(par.SCHEMA)
    rng = random.Random(20261130)
    total = 60
    fail_at = [None, None, "reserve/east/confirm", "reserve/north/reserve", "pack/1/pack"]
    rows = [
        {"n": n, "delay": 0.12, "parcels": ["a", "b", "c"], "fail_at": rng.choice(fail_at)}
        for n in range(total)
    ]
    ids = run(_start(postgres_dsn, rows))
    pool = Pool(postgres_dsn, tmp_path)
    for _ in range(3):
        pool.spawn()
    kills = kills_in_group = 0
    began = time.monotonic()
    try:
        while kills < 12:
            time.sleep(rng.uniform(0.2, 0.6))
            victim = rng.choice(list(pool.procs))
            held = query(
                postgres_dsn,
                "SELECT snapshot FROM saga_fsm_sagas WHERE lease_owner = %s",
                (victim,),
            )
            kills_in_group += sum(1 for (snapshot,) in held if _in_group(snapshot))
            pool.kill9(victim)
            pool.spawn()
            kills += 1
        unfinished = query(
            postgres_dsn,
            "SELECT count(*) FROM saga_fsm_sagas WHERE state <> ALL(%s)",
            (list(TERMINAL),),
        )[0][0]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            left = query(
                postgres_dsn,
                "SELECT count(*) FROM saga_fsm_sagas WHERE state <> ALL(%s)",
                (list(TERMINAL),),
            )[0][0]
            if not left:
                break
            time.sleep(0.3)
        took = time.monotonic() - began
    finally:
        codes = pool.stop()
    assert unfinished > 0, "every saga finished before the last kill: make the run longer"
    assert all(code == 0 for code in codes.values()), codes
    final = dict(query(postgres_dsn, "SELECT saga_id, state FROM saga_fsm_sagas"))
    assert set(final) == set(ids)
    assert set(final.values()) <= {"completed", "compensated"}, final

    log = query(
        postgres_dsn,
        "SELECT seq, saga_id, step, idempotency_key, compensating, absorbed FROM par_log"
        " ORDER BY seq",
    )
    by_saga: dict[str, list[tuple[Any, ...]]] = {}
    for row in log:
        by_saga.setdefault(row[1], []).append(row)
    problems = []
    for saga_id, state in final.items():
        rows_of = by_saga.get(saga_id, [])
        done = {r[3] for r in rows_of if not r[4]}
        undone = [r for r in rows_of if r[4] and not r[5]]  # first application of each undo
        undone_keys = [r[3] for r in undone]
        if len(set(undone_keys)) != len(undone_keys):
            problems.append(f"{saga_id}: an undo applied twice")
        if state == "completed":
            expected = {f"{saga_id}:{s}" for s in par.BRANCH_STEPS} | {
                f"{saga_id}:open",
                f"{saga_id}:charge",
                *(f"{saga_id}:pack/{i}/pack" for i in range(3)),
            }
            if done != expected or undone:
                problems.append(f"{saga_id} completed: effects {sorted(done)}, undone {undone}")
            continue
        # Compensated: exactly what acted is undone (a refused step did nothing).
        if set(undone_keys) != done or any(k.endswith(":charge") for k in done):
            problems.append(f"{saga_id} compensated: did {sorted(done)}, undid {undone_keys}")
            continue
        seq = {r[3]: r[0] for r in undone}
        first_undo = {r[3]: r[0] for r in undone}
        for branch in ("north", "south", "east"):
            first, second = (
                f"{saga_id}:reserve/{branch}/reserve",
                f"{saga_id}:reserve/{branch}/confirm",
            )
            if first in seq and second in seq and seq[second] > seq[first]:
                problems.append(f"{saga_id}: branch {branch} undone out of order")
        group_effects = [r[0] for r in rows_of if not r[4] and "/" in r[2]]
        group_undos = [s for k, s in first_undo.items() if "/" in k]
        if group_effects and group_undos and min(group_undos) < max(group_effects):
            problems.append(f"{saga_id}: a branch undone before the group's last effect landed")
        if f"{saga_id}:open" in seq and group_undos and seq[f"{saga_id}:open"] < max(group_undos):
            problems.append(f"{saga_id}: open undone before a branch")
    assert not problems, problems[:5]
    figures = {
        "sagas": total,
        "kills": kills,
        "sagas_in_a_group_at_kills": kills_in_group,
        "unfinished_at_last_kill": unfinished,
        "states": {s: list(final.values()).count(s) for s in set(final.values())},
        "effects": sum(1 for r in log if not r[4] and not r[5]),
        "repeated_effects_absorbed": sum(1 for r in log if not r[4] and r[5]),
        "repeated_undos_absorbed": sum(1 for r in log if r[4] and r[5]),
        "seconds": round(took, 1),
    }
    print(f"\nFIGURES parallel kill -9: {json.dumps(figures, sort_keys=True)}")
    assert kills_in_group > 0, "no kill caught a worker inside a parallel group"

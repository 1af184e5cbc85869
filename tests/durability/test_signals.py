"""Signals delivered to sagas whose worker died (kill -9), on PostgreSQL, with real
worker processes: every signal is taken once, and a new worker carries each saga on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from saga_fsm import Orchestrator, PostgresStore, SagaClient
from tests.durability import approvals
from tests.durability.harness import ROOT, Workers, query, store_url

SAGAS = 20


def spawn(workers: Workers, name: str, log_dir: Path) -> subprocess.Popen[bytes]:
    log = log_dir / f"{name}.log"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saga_fsm.cli",
            "worker",
            approvals.REF,
            "--store",
            workers.url,
            "--id",
            name,
            "--lease-seconds",
            "2",
            "--poll-interval",
            "0.05",
        ],
        cwd=ROOT,
        env=workers.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def states(conninfo: str) -> dict[str, str]:
    return dict(query(conninfo, "SELECT saga_id, state FROM saga_fsm_sagas"))  # type: ignore[arg-type]


def wait_for(conninfo: str, wanted: set[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        now = states(conninfo)
        if set(now.values()) <= wanted or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_signals_reach_sagas_whose_worker_was_killed(postgres_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(approvals.SCHEMA)

    async def start() -> list[str]:
        store = await PostgresStore.open(postgres_dsn, max_size=2)
        try:
            orchestrator = Orchestrator(store, [approvals.definition])
            return [
                (
                    await orchestrator.start(
                        approvals.definition, {"n": n}, definition_ref=approvals.REF
                    )
                ).saga_id
                for n in range(SAGAS)
            ]
        finally:
            await store.close()

    async def signal(ids: list[str]) -> None:
        store = await PostgresStore.open(postgres_dsn, max_size=2)
        try:
            client = SagaClient(store, [approvals.definition])
            for saga_id in ids:
                verdict = "approved" if ids_order[saga_id] % 2 == 0 else "rejected"
                await client.signal(saga_id, verdict, {"by": "manager"})
        finally:
            await store.close()

    ids = asyncio.run(start())
    ids_order = {saga_id: n for n, saga_id in enumerate(ids)}
    workers = Workers(postgres_dsn)
    assert workers.url == store_url(postgres_dsn)
    first = spawn(workers, "a", tmp_path)
    second = None
    try:
        waiting = wait_for(postgres_dsn, {"running:approval"})
        assert set(waiting.values()) == {"running:approval"}, waiting
        # Half the signals while worker a is alive (it picks the sagas up at once), then
        # kill -9 while it drives them; the other half while no worker is alive at all.
        asyncio.run(signal(ids[: SAGAS // 2]))
        first.kill()
        first.wait(timeout=30)
        asyncio.run(signal(ids[SAGAS // 2 :]))
        second = spawn(workers, "b", tmp_path)
        final = wait_for(postgres_dsn, {"completed", "compensated"}, timeout=90)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    approved = {i for i in ids if ids_order[i] % 2 == 0}
    assert {i for i, s in final.items() if s == "completed"} == approved, final
    assert {i for i, s in final.items() if s == "compensated"} == set(ids) - approved
    paid = {row[0] for row in query(postgres_dsn, "SELECT saga_id FROM payments")}
    assert paid == approved  # paid once each (a unique key), and only when approved
    closed = {
        row[0] for row in query(postgres_dsn, "SELECT saga_id FROM cases WHERE status = 'closed'")
    }
    assert closed == set(ids) - approved
    signals = query(
        postgres_dsn,
        "SELECT saga_id, count(*) FROM saga_fsm_history WHERE trigger = 'signal' GROUP BY saga_id",
    )
    assert sorted(n for _, n in signals) == [1] * SAGAS
    # The same signals again, once every saga is finished: taken once, nothing changes.
    asyncio.run(signal(ids))
    assert states(postgres_dsn) == final

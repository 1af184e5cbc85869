"""Child sagas across kill -9: worker processes on PostgreSQL are killed at random while
parents start children, children finish, parents learn of it and compensate completed
children. Nothing is lost, no child is started twice, and what acted is undone."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from saga_fsm import Orchestrator, PostgresStore
from tests.durability import child_participants
from tests.durability.harness import ROOT, Workers, query, store_url

TERMINAL = ("completed", "compensated", "failed")


async def _start(conninfo: str, rows: list[dict[str, object]]) -> list[str]:
    store = await PostgresStore.open(conninfo)
    try:
        orchestrator = Orchestrator(store, [child_participants.order])
        ids = []
        for n, data in enumerate(rows):
            started = await orchestrator.start(
                child_participants.order,
                data,
                saga_id=f"order-{n}",
                definition_ref=child_participants.REF,
            )
            ids.append(started.saga_id)
        return ids
    finally:
        await store.close()


def _command(url: str, name: str) -> list[str]:
    return [
        sys.executable, "-m", "saga_fsm.cli", "worker", child_participants.REF,
        "--store", url, "--id", name, "--lease-seconds", "1.5",
        "--poll-interval", "0.05", "--concurrency", "4", "--grace", "10",
    ]  # fmt: skip


def _unfinished(conninfo: str) -> int:
    ((count,),) = query(
        conninfo, "SELECT count(*) FROM saga_fsm_sagas WHERE state <> ALL(%s)", (list(TERMINAL),)
    )
    return int(count)


def test_kill_9_while_parents_wait_for_children(postgres_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(child_participants.SCHEMA)
    rng = random.Random(20261130)
    total = 60
    rows: list[dict[str, object]] = [
        {"n": n, "delay": 0.15, "fail_at": rng.choice([None, None, "label", "charge"])}
        for n in range(total)
    ]
    asyncio.run(_start(postgres_dsn, rows))
    pool = Workers(postgres_dsn)
    url = store_url(postgres_dsn)
    names = 0

    def spawn() -> None:
        nonlocal names
        names += 1
        name = f"w{names}"
        log = tmp_path / f"{name}.log"
        pool.logs[name] = log
        pool.procs[name] = subprocess.Popen(
            _command(url, name),
            cwd=ROOT,
            env={**pool.env, "SAGA_FSM_FAULT_WORKER": name},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    for _ in range(3):
        spawn()
    kills = holding = 0
    started = time.monotonic()
    try:
        # The killing starts once children are under way.
        children_started = "SELECT 1 FROM saga_fsm_sagas WHERE snapshot ? 'parent_id'"
        while not query(postgres_dsn, children_started):
            time.sleep(0.05)
        while kills < 10:
            time.sleep(rng.uniform(0.3, 0.8))
            alive = pool.alive()
            holders = [name for name in alive if pool.held_by(postgres_dsn, name)]
            holding += bool(holders)
            pool.kill9(rng.choice(holders or alive))
            kills += 1
            spawn()
        unfinished_at_last_kill = _unfinished(postgres_dsn)
        deadline = time.monotonic() + 180
        while _unfinished(postgres_dsn) and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        codes = pool.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    assert unfinished_at_last_kill > 0, "everything finished before the last kill"
    assert holding >= 5, f"only {holding} kills caught a worker holding sagas"

    sagas = {
        saga_id: (state, parent)
        for saga_id, state, parent in query(
            postgres_dsn,
            "SELECT saga_id, state, snapshot->>'parent_id' FROM saga_fsm_sagas",
        )
    }
    parents = {k: v[0] for k, v in sagas.items() if v[1] is None}
    children = {k: v for k, v in sagas.items() if v[1] is not None}
    assert len(parents) == total
    assert set(parents.values()) <= {"completed", "compensated"}, parents
    # One child per parent (its id derived from the parent's), whatever was re-run.
    by_parent: dict[str, list[str]] = {}
    for child_id, (_state, parent) in children.items():
        by_parent.setdefault(parent, []).append(child_id)
    for n, data in enumerate(rows):
        parent_id = f"order-{n}"
        state = parents[parent_id]
        reached_child = data["fail_at"] != "reserve"
        kids = by_parent.get(parent_id, [])
        assert kids == ([f"{parent_id}:ship:1"] if reached_child else []), (parent_id, kids)
        child_state = sagas[kids[0]][0]
        if data["fail_at"] is None:
            assert (state, child_state) == ("completed", "completed"), parent_id
        else:  # the child refused, or the parent's pivot did: everything undone
            assert (state, child_state) == ("compensated", "compensated"), parent_id

    effects = query(postgres_dsn, "SELECT saga_id, step, compensating FROM child_effects")
    done = {(s, step) for s, step, undone in effects if not undone}
    undone = {(s, step) for s, step, undone in effects if undone}
    for saga_id, (state, _parent) in sagas.items():
        forward = {step for s, step in done if s == saga_id}
        compensated = {step for s, step in undone if s == saga_id}
        if state == "completed":
            assert not compensated, (saga_id, compensated)
        else:
            # What acted was undone; an undo of a call that never acted is a no-op.
            assert forward <= compensated, (saga_id, forward, compensated)
    calls = query(
        postgres_dsn,
        "SELECT count(*), count(DISTINCT (idempotency_key, compensating)) FROM child_calls",
    )
    ((all_calls, distinct_calls),) = calls
    # How long each parent took to learn how its child ended: at once when the worker
    # that finished the child lived on; after a kill, by its next look (check_every=1s).
    delays = sorted(
        float(delay)
        for (delay,) in query(
            postgres_dsn,
            "SELECT extract(epoch FROM min(p.at) - min(c.at)) FROM saga_fsm_history p"
            " JOIN saga_fsm_history c ON c.saga_id = p.saga_id || ':ship:1'"
            " WHERE p.from_state = 'running:ship' AND p.trigger <> 'child_pending'"
            " AND p.trigger <> 'cancel' AND c.to_state IN ('completed', 'compensated')"
            " GROUP BY p.saga_id",
        )
    )
    assert len(delays) == total and delays[-1] < 20, delays
    print(
        f"\nchild sagas under kill -9: {total} parents, {len(children)} children, {kills} kills"
        f" ({holding} of a worker holding sagas),"
        f" {unfinished_at_last_kill} unfinished at the last kill, all finished in"
        f" {elapsed:.1f}s; {all_calls - distinct_calls} calls re-run after a kill; parent"
        f" learned its child's end after {delays[len(delays) // 2] * 1000:.0f} ms (median),"
        f" {delays[-1] * 1000:.0f} ms (max)"
    )

"""saga_fsm.testing knows transactional steps: their effect and outcome are one commit,
so no fault leaves one without the other, and each effect is there exactly once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saga_fsm import InvalidArgument, SagaBuilder, SagaDefinition, SqliteStore, StepContext
from saga_fsm.testing import Fault, StoreFactory, check, saga_invariant

AFTER_EFFECT = {Fault.TRANSIENT, Fault.TIMEOUT, Fault.CRASH_AFTER}


def write(undo: bool):  # type: ignore[no-untyped-def]
    def action(ctx: StepContext) -> None:
        # A plain INSERT, no idempotency key: a second run would show as a second row.
        ctx.connection.execute(
            "INSERT INTO effects VALUES (?, ?, ?)", (ctx.saga_id, ctx.step, undo)
        )

    return action


def definition() -> SagaDefinition:
    builder = SagaBuilder("tx_checked")
    for step in ("reserve", "charge"):
        builder.step(step, write(False), compensation=write(True), transactional=True, timeout=5)
    return builder.pivot("ship", write(False), transactional=True).build()


@saga_invariant
def each_effect_once(ctx) -> None:  # type: ignore[no-untyped-def]
    with sqlite3.connect(ctx.world) as conn:
        rows = conn.execute(
            "SELECT step, undo, count(*) FROM effects WHERE saga_id = ? GROUP BY 1, 2",
            (ctx.saga_id,),
        ).fetchall()
    assert all(n == 1 for *_, n in rows), f"an effect twice: {rows}"
    done = {step for step, undo, _ in rows if not undo}
    undone = {step for step, undo, _ in rows if undo}
    for record in ctx.snapshot.steps:
        status = record.status.value
        # A step cancelled while it ran committed nothing, yet is compensated (harmlessly).
        may_have = ("succeeded", "compensating", "compensated", "compensation_failed")
        if status == "succeeded":
            assert record.name in done, f"{record.name} succeeded without its row: {rows}"
        if record.name in done:
            assert status in may_have, f"{record.name} is {status}, yet has its row"
        assert (record.name in undone) <= (status == "compensated"), rows
        # Compensated whether or not it acted: a failed attempt may be undone, harmlessly.


def test_check_drives_transactional_steps_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "checked.db"
    store = SqliteStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE effects (saga_id text, step text, undo boolean)")
    report = check(
        definition(),
        store=StoreFactory.of(store),
        setup=lambda: str(path),
        invariants=[each_effect_once],
        max_examples=25,
        seed=5,
    )
    report.raise_for_failure()
    assert report.ok


def test_a_transactional_definition_needs_a_sql_store() -> None:
    with pytest.raises(InvalidArgument, match="transactional steps"):
        check(definition(), max_examples=1, seed=1).raise_for_failure()

"""A refund with a manager's approval whose effects land in PostgreSQL tables, so that
what worker processes did survives them (``$SAGA_FSM_FAULT_DSN`` names the database).

``cases``: a case per saga, closed by the compensation; ``payments``: the refund paid,
once per idempotency key; ``payment_calls``: every call of the payment, whatever came
of it."""

from __future__ import annotations

import os
from typing import Any

import psycopg

from saga_fsm import RetryPolicy, SagaDefinition, Step, StepContext, WaitFor

REF = "tests.durability.approvals:definition"
SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (saga_id text PRIMARY KEY, status text NOT NULL);
CREATE TABLE IF NOT EXISTS payments (idempotency_key text PRIMARY KEY, saga_id text NOT NULL);
CREATE TABLE IF NOT EXISTS payment_calls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, saga_id text NOT NULL);
"""
FAST = RetryPolicy(max_attempts=5, initial_interval=0.05, max_interval=0.2)


def _execute(sql: str, params: tuple[Any, ...]) -> None:
    with psycopg.connect(os.environ["SAGA_FSM_FAULT_DSN"], autocommit=True) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def open_case(ctx: StepContext) -> dict[str, Any]:
    _execute("INSERT INTO cases VALUES (%s, 'open') ON CONFLICT DO NOTHING", (ctx.saga_id,))
    return {"case": ctx.saga_id[:8]}


def close_case(ctx: StepContext) -> None:
    _execute("UPDATE cases SET status = 'closed' WHERE saga_id = %s", (ctx.saga_id,))


def pay(ctx: StepContext) -> dict[str, Any]:
    _execute("INSERT INTO payment_calls (saga_id) VALUES (%s)", (ctx.saga_id,))
    _execute(
        "INSERT INTO payments VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (ctx.idempotency_key, ctx.saga_id),
    )
    return {"paid": True}


definition = SagaDefinition(
    "approved_refund",
    [
        Step("open_case", open_case, close_case, retry=FAST, compensation_retry=FAST, timeout=10),
        WaitFor("approval", events={"approved": "continue", "rejected": "fail"}, timeout=600),
        Step("pay", pay, kind="pivot", retry=FAST, timeout=10),
    ],
)

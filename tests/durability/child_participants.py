"""An order saga that ships through a child saga, its participants recording their
effects in PostgreSQL (``$SAGA_FSM_FAULT_DSN``), for the kill -9 test of child sagas.

``child_effects`` keeps each effect once per idempotency key (a participant honouring
the key); ``child_calls`` every call, as it happened. ``data["fail_at"]`` names a step
that refuses for good: ``label`` makes the child compensate itself, ``charge`` makes the
parent compensate its completed child.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from saga_fsm import ChildSaga, SagaDefinition, Step, StepContext, StepFailed, StepKind

SCHEMA = """
CREATE TABLE IF NOT EXISTS child_effects (
    idempotency_key text PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    compensating boolean NOT NULL);
CREATE TABLE IF NOT EXISTS child_calls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL,
    saga_id text NOT NULL,
    step text NOT NULL,
    compensating boolean NOT NULL,
    worker text NOT NULL);
"""


async def _record(ctx: StepContext) -> None:
    async with await psycopg.AsyncConnection.connect(
        os.environ["SAGA_FSM_FAULT_DSN"], autocommit=True
    ) as conn:
        row = (ctx.idempotency_key, ctx.saga_id, ctx.step, ctx.compensating)
        await conn.execute(
            "INSERT INTO child_calls (idempotency_key, saga_id, step, compensating, worker)"
            " VALUES (%s, %s, %s, %s, %s)",
            (*row, os.environ.get("SAGA_FSM_FAULT_WORKER", "?")),
        )
        await asyncio.sleep(float(ctx.data.get("delay", 0.05)))
        await conn.execute(
            "INSERT INTO child_effects (idempotency_key, saga_id, step, compensating)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            row,
        )


async def act(ctx: StepContext) -> dict[str, Any]:
    if ctx.data.get("fail_at") == ctx.step:
        raise StepFailed(f"{ctx.step} refused", retryable=False)
    await _record(ctx)
    return {f"{ctx.step}_done": True}


async def undo(ctx: StepContext) -> None:
    await _record(ctx)


shipment = SagaDefinition(
    "kill_shipment",
    [Step("book", act, undo), Step("label", act, undo)],
    reversible=True,
)
order = SagaDefinition(
    "kill_order",
    [
        Step("reserve", act, undo),
        ChildSaga(
            "ship",
            definition=shipment,
            input=["fail_at", "delay"],
            output=["label_done"],
            check_every=1.0,
        ),
        Step("charge", act, kind=StepKind.PIVOT),
    ],
)
REF = "tests.durability.child_participants:order"

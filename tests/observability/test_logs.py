"""Every saga_fsm log record says which saga, definition, step, attempt, correlation id
and trace it is about, in JSON lines or in a user's own format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from saga_fsm import MemoryStore, Orchestrator
from saga_fsm.observability import LOG_FIELDS, JsonFormatter
from saga_fsm.observability.tracing import SagaTracing
from tests.observability._tracing import in_memory_provider
from tests.observability.sagas import order


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("saga_fsm")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_json_records_carry_definition_attempt_and_trace_id(lines: io.StringIO) -> None:
    provider, exporter = in_memory_provider()
    orchestrator = Orchestrator(MemoryStore(), [order], observer=SagaTracing(provider))
    final = asyncio.run(orchestrator.run(order, {"pay": "flaky"}, correlation_id="o-9"))
    assert final.state == "completed"
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert set(LOG_FIELDS) == {
        "saga_id",
        "definition",
        "step",
        "attempt",
        "correlation_id",
        "trace_id",
    }
    trace_id = f"{exporter.get_finished_spans()[0].context.trace_id:032x}"
    charges = [r for r in records if r["message"].startswith("step charge: attempt")]
    assert [r["attempt"] for r in charges] == [1, 2]
    for record in charges:
        assert {k: record[k] for k in LOG_FIELDS} == {
            "saga_id": final.saga_id,
            "definition": "order",
            "step": "charge",
            "attempt": record["attempt"],
            "correlation_id": "o-9",
            "trace_id": trace_id,
        }


def test_a_users_own_format_names_the_fields(lines: io.StringIO) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter(
            "%(levelname)s %(message)s saga=%(saga_id)s %(definition)s/%(step)s#%(attempt)s"
        )
    )
    logging.getLogger("saga_fsm").addHandler(handler)
    try:
        final = asyncio.run(Orchestrator(MemoryStore(), [order]).run(order, {"pay": "ok"}))
    finally:
        logging.getLogger("saga_fsm").removeHandler(handler)
    assert f"DEBUG step ship: attempt 1 saga={final.saga_id} order/ship#1" in stream.getvalue()

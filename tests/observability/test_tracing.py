"""Spans through the real OpenTelemetry SDK's in-memory exporter: one saga, crossing a
participant over a transport, is one connected trace."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from saga_fsm import MemoryStore, Orchestrator, SagaBuilder, StepContext, StepFailed, decide
from saga_fsm._core import Event, new_snapshot
from saga_fsm.messaging import (
    Headers,
    Message,
    MessageKind,
    Transport,
    connect_transport,
    reply_from_payload,
)
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.observability.tracing import SagaTracing, publish
from saga_fsm.participant import Command, MemoryInbox, Participant
from tests.observability._tracing import by_name, in_memory_provider, roots
from tests.observability.sagas import order

ROOT = Path(__file__).resolve().parents[2]


def _ask_inventory(transport: Transport, provider: Any) -> Any:
    async def reserve(ctx: StepContext) -> dict[str, Any]:
        replies = await transport.subscribe("orders.replies")
        command = Message(
            "inventory.reserve",
            MessageKind.COMMAND,
            {"sku": "a"},
            Headers(
                saga_id=ctx.saga_id,
                step=ctx.step,
                attempt=ctx.attempt,
                idempotency_key=ctx.idempotency_key,
                reply_channel="orders.replies",
                correlation_id=ctx.correlation_id,
            ),
        )
        await publish(transport, command, tracer_provider=provider)
        delivery = await replies.receive(timeout=10)
        assert delivery is not None
        await delivery.ack()
        await replies.close()
        body = reply_from_payload(delivery.message.payload)
        return dict(body.data or {})

    return reserve


def _decline(ctx: StepContext) -> None:
    raise StepFailed("card declined", retryable=False)


def _release(ctx: StepContext) -> None:
    return None


def test_one_saga_across_a_participant_is_one_connected_trace() -> None:
    provider, exporter = in_memory_provider()
    tracing = SagaTracing(provider)
    transport = MemoryTransport()
    inventory = Participant("inventory", observer=tracing)

    @inventory.handles("inventory.reserve")
    def handle(command: Command) -> Mapping[str, Any]:
        return {"reservation": command.idempotency_key}

    definition = (
        SagaBuilder("order")
        .step("reserve", _ask_inventory(transport, provider), compensation=_release)
        .pivot("charge", _decline)
        .build()
    )

    async def go() -> str:
        stop = asyncio.Event()
        serving = asyncio.create_task(inventory.serve(transport, MemoryInbox(), stop=stop))
        orchestrator = Orchestrator(MemoryStore(), [definition], observer=tracing)
        final = await orchestrator.run(definition, {}, correlation_id="order-7")
        stop.set()
        await serving
        return final.state

    assert asyncio.run(go()) == "compensated"
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    assert set(named) == {
        "saga.start order",
        "saga.step reserve",
        "inventory.reserve publish",
        "inventory.reserve process",
        "saga.step charge",
        "saga.compensate reserve",
    }
    # One trace, one root: the start; every other span descends from it.
    assert len({s.context.trace_id for s in spans}) == 1
    assert roots(spans) == named["saga.start order"]
    start = named["saga.start order"][0]
    step_reserve = named["saga.step reserve"][0]
    producer = named["inventory.reserve publish"][0]
    consumer = named["inventory.reserve process"][0]
    assert step_reserve.parent is not None and step_reserve.parent.span_id == start.context.span_id
    assert producer.kind is SpanKind.PRODUCER and producer.parent is not None
    assert producer.parent.span_id == step_reserve.context.span_id
    assert consumer.kind is SpanKind.CONSUMER and consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    # Attributes and status.
    charge = named["saga.step charge"][0]
    assert charge.attributes is not None
    assert {
        k: charge.attributes[k]
        for k in (
            "saga.name",
            "saga.step",
            "saga.step.attempt",
            "saga.phase",
            "saga.outcome",
            "saga.correlation_id",
            "saga.definition.version",
        )
    } == {
        "saga.name": "order",
        "saga.step": "charge",
        "saga.step.attempt": 1,
        "saga.phase": "forward",
        "saga.outcome": "failed",
        "saga.correlation_id": "order-7",
        "saga.definition.version": 1,
    }
    assert charge.status.status_code is StatusCode.ERROR
    assert "card declined" in (charge.status.description or "")
    compensate = named["saga.compensate reserve"][0]
    assert compensate.attributes is not None and compensate.attributes["saga.phase"] == "compensate"
    assert step_reserve.status.status_code is StatusCode.UNSET
    # Transitions are span events: from, to, trigger.
    transitions = [
        dict(e.attributes or {})
        for s in sorted(spans, key=lambda s: s.start_time or 0)
        for e in s.events
        if e.name == "transition"
    ]
    assert {"from": "pending", "to": "running:reserve", "trigger": "start"} in transitions
    assert {
        "from": "running:charge",
        "to": "compensating:reserve",
        "trigger": "step_failed",
    } in transitions
    assert transitions[-1] == {
        "from": "compensating:reserve",
        "to": "compensated",
        "trigger": "compensation_succeeded",
    }


def test_the_trace_context_is_stored_and_continued_by_another_process() -> None:
    """A saga started here and driven by a 'worker' that shares nothing but the store
    (a new orchestrator and tracer): its spans are children of the stored start."""
    provider, exporter = in_memory_provider()
    definition = (
        SagaBuilder("two").step("a", _release, compensation=_release).pivot("b", _release).build()
    )
    store = MemoryStore()

    async def go() -> Any:
        client = Orchestrator(store, [definition], observer=SagaTracing(provider))
        started = await client.start(definition, {})
        worker = Orchestrator(store, [definition], observer=SagaTracing(provider))
        return started, await worker.resume(started.saga_id)

    started, final = asyncio.run(go())
    assert started.traceparent is not None and final.traceparent == started.traceparent
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    assert [s.name for s in roots(spans)] == ["saga.start two"]
    assert f"{spans[0].context.trace_id:032x}" in started.traceparent


def test_operator_cancel_and_retry_are_spans_of_the_saga() -> None:
    provider, exporter = in_memory_provider()
    tracing = SagaTracing(provider)
    definition = (
        SagaBuilder("c").step("a", _release, compensation=_release).pivot("b", _release).build()
    )

    async def go() -> None:
        orchestrator = Orchestrator(MemoryStore(), [definition], observer=tracing)
        started = await orchestrator.start(definition, {})
        await orchestrator.cancel(started.saga_id)

    asyncio.run(go())
    spans = by_name(exporter.get_finished_spans())
    cancel = spans["saga.cancel c"][0]
    assert (
        cancel.parent is not None
        and cancel.parent.span_id == spans["saga.start c"][0].context.span_id
    )
    assert cancel.events[0].attributes == {
        "from": "pending",
        "to": "compensated",
        "trigger": "cancel",
    }


@pytest.mark.parametrize("module", ["opentelemetry", "prometheus_client"])
def test_without_an_observer_nothing_is_imported(module: str) -> None:
    import subprocess
    import sys

    code = (
        "import asyncio, sys\n"
        "from saga_fsm import MemoryStore, Orchestrator\n"
        "from tests.helpers import three_step\n"
        "d = three_step()\n"
        "final = asyncio.run(Orchestrator(MemoryStore(), [d]).run(d, {}))\n"
        "assert final.state == 'completed'\n"
        f"print({module!r} in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_operator_retry_is_a_child_of_the_saga_linked_to_the_operators_trace() -> None:
    provider, exporter = in_memory_provider()
    tracing = SagaTracing(provider)
    orchestrator = Orchestrator(MemoryStore(), [order], observer=tracing)
    operator = provider.get_tracer("console")

    async def go() -> None:
        parked = await orchestrator.run(order, {"pay": "decline", "warehouse": "down"})
        assert parked.state == "failed"
        with operator.start_as_current_span("POST /sagas/retry"):
            await orchestrator.retry(parked.saga_id)

    asyncio.run(go())
    spans = by_name(exporter.get_finished_spans())
    retry, request = spans["saga.retry order"][0], spans["POST /sagas/retry"][0]
    assert (
        retry.parent is not None
        and retry.parent.span_id == spans["saga.start order"][0].context.span_id
    )
    assert [link.context.span_id for link in retry.links] == [request.context.span_id]
    assert retry.context.trace_id != request.context.trace_id


def test_a_worker_taking_over_an_attempt_in_flight_is_a_resume_span() -> None:
    provider, exporter = in_memory_provider()
    store = MemoryStore()

    async def go() -> None:
        crashed = Orchestrator(store, [order], worker_id="dead", lease_seconds=0.01)
        snapshot = await crashed.start(order, {"pay": "ok"})
        # The dead worker had persisted "running:reserve" (attempt 1) and then died.
        decision = decide(
            order, await store.load(snapshot.saga_id), Event.start(crashed.clock.now())
        )
        await store.save(decision.snapshot, decision.history, expected_version=snapshot.version)
        await Orchestrator(store, [order], observer=SagaTracing(provider)).resume(snapshot.saga_id)

    asyncio.run(go())
    spans = by_name(exporter.get_finished_spans())
    resume = spans["saga.resume order"][0]
    assert resume.attributes is not None and resume.attributes["saga.state"] == "running:reserve"


def test_a_participant_in_another_process_continues_the_trace(tmp_path: Path) -> None:
    """The command crosses a real process boundary (the SQLite transport): the
    participant's CONSUMER span, exported there, is a child of the PRODUCER span here."""
    url = f"sqlite:///{tmp_path}/broker.db"
    spans_file = tmp_path / "participant-spans.jsonl"
    participant = subprocess.Popen(
        [sys.executable, "-m", "tests.observability._participant_process", url, str(spans_file)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert participant.stdout is not None and participant.stdout.readline().strip() == "ready"
        provider, exporter = in_memory_provider()

        async def go() -> Any:
            transport = await connect_transport(url, ack_wait=1.0)
            try:
                definition = (
                    SagaBuilder("order")
                    .step("reserve", _ask_inventory(transport, provider), compensation=_release)
                    .build()
                )
                orchestrator = Orchestrator(
                    MemoryStore(), [definition], observer=SagaTracing(provider)
                )
                return await orchestrator.run(definition, {})
            finally:
                await transport.close()

        final = asyncio.run(go())
        assert (
            final.state == "completed" and final.data["reservation"] == f"{final.saga_id}:reserve"
        )
    finally:
        participant.send_signal(signal.SIGTERM)
        _out, err = participant.communicate(timeout=60)
        assert participant.returncode == 0, err
    here = by_name(exporter.get_finished_spans())
    there = [json.loads(line) for line in spans_file.read_text().splitlines()]
    consumers = [s for s in there if s["kind"] == "SpanKind.CONSUMER"]
    assert len(consumers) == 1, there
    producer = here["inventory.reserve publish"][0]
    assert consumers[0]["context"]["trace_id"] == f"0x{producer.context.trace_id:032x}"
    assert consumers[0]["parent_id"] == f"0x{producer.context.span_id:016x}"
    assert consumers[0]["name"] == "inventory.reserve process"


def test_a_saga_handed_back_to_the_store_leaves_nothing_behind() -> None:
    """Transitions waiting for the saga's next span are dropped once the saga is handed
    back to the store (another worker may carry on): a long-running worker does not grow."""
    tracing = SagaTracing(in_memory_provider()[0])
    pending = new_snapshot(order, "s-1", {}, datetime.now(UTC))
    decision = decide(order, pending, Event.start(pending.created_at))
    held = decision.snapshot  # running its first step, driven here
    tracing.transitioned(pending, held, decision.history)
    assert list(tracing._pending) == [held.saga_id]  # kept for the first attempt's span
    # Waiting for a timer: possibly handed back to whichever worker wakes it.
    released = attrs.evolve(decision.snapshot, wake_at=datetime.now(UTC))
    tracing.transitioned(pending, released, decision.history)
    assert tracing._pending == {}


def test_a_remote_step_is_published_by_the_relay_in_a_producer_span_of_the_saga() -> None:
    """A remote step as workers run it: the command goes through the outbox, and the
    relay's publish is a PRODUCER span of the saga's trace whose context the command
    carries; the participant's CONSUMER span continues it; the reply completes the saga."""
    from saga_fsm import SagaDefinition, SagaExecutor, Step, Worker

    provider, exporter = in_memory_provider()
    tracing = SagaTracing(provider)
    transport = MemoryTransport()
    inventory = Participant("inventory", observer=tracing)

    @inventory.handles("inventory.reserve")
    def handle(command: Command) -> Mapping[str, Any]:
        return {"reservation": command.idempotency_key}

    definition = SagaDefinition(
        "remote_order", (Step("reserve", command="inventory.reserve", timeout=30, read_only=True),)
    )

    async def go() -> Any:
        store = MemoryStore()
        executor = SagaExecutor(store, [definition], observer=tracing, lease_seconds=5)
        worker = Worker(executor, poll_interval=0.02, transport=transport)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(worker.run(stop, grace=1.0)),
            asyncio.create_task(inventory.serve(transport, MemoryInbox(), stop=stop)),
        ]
        try:
            saga = await executor.run(definition, {})
            for _ in range(400):
                saga = await store.load(saga.saga_id)
                if saga.is_terminal:
                    return saga
                await asyncio.sleep(0.025)
            raise AssertionError(f"not finished: {saga.state}")
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    final = asyncio.run(go())
    assert final.state == "completed" and final.data["reservation"] == f"{final.saga_id}:reserve"
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    start = named["saga.start remote_order"][0]
    (producer,) = named["inventory.reserve publish"]
    (consumer,) = named["inventory.reserve process"]
    assert len({s.context.trace_id for s in spans}) == 1
    assert roots(spans) == [start]
    assert producer.kind is SpanKind.PRODUCER and producer.parent is not None
    assert producer.parent.span_id == start.context.span_id
    assert producer.attributes is not None and producer.attributes["saga.id"] == final.saga_id
    assert consumer.kind is SpanKind.CONSUMER and consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id

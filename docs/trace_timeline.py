"""Draw docs/trace.png: the spans of one saga that crosses a participant, as exported
by the OpenTelemetry SDK, on a timeline (needs matplotlib, which saga_fsm does not).

    .venv/bin/python docs/trace_timeline.py [docs/trace.png]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saga_fsm import MemoryStore, Orchestrator, RetryPolicy, SagaBuilder, StepContext, StepFailed
from saga_fsm.messaging import Headers, Message, MessageKind, reply_from_payload
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.observability.tracing import SagaTracing, publish
from saga_fsm.participant import Command, MemoryInbox, Participant
from tests.observability._tracing import in_memory_provider


def build(transport: MemoryTransport, provider: Any) -> Any:
    async def reserve(ctx: StepContext) -> dict[str, Any]:
        replies = await transport.subscribe("orders.replies")
        headers = Headers(
            saga_id=ctx.saga_id,
            step=ctx.step,
            attempt=ctx.attempt,
            idempotency_key=ctx.idempotency_key,
            reply_channel="orders.replies",
        )
        command = Message("inventory.reserve", MessageKind.COMMAND, {"sku": "a"}, headers)
        await publish(transport, command, tracer_provider=provider)
        delivery = await replies.receive(timeout=10)
        assert delivery is not None
        await delivery.ack()
        await replies.close()
        return dict(reply_from_payload(delivery.message.payload).data or {})

    async def charge(ctx: StepContext) -> None:
        await asyncio.sleep(0.02)
        if ctx.attempt == 1:
            raise StepFailed("gateway timeout", retryable=True)
        raise StepFailed("card declined", retryable=False)

    async def release(ctx: StepContext) -> None:
        await asyncio.sleep(0.01)

    return (
        SagaBuilder("order")
        .step("reserve", reserve, compensation=release)
        .pivot("charge", charge, retry=RetryPolicy(max_attempts=3, initial_interval=0.03))
        .build()
    )


def spans() -> list[ReadableSpan]:
    provider, exporter = in_memory_provider()
    tracing = SagaTracing(provider)
    transport = MemoryTransport()
    inventory = Participant("inventory", observer=tracing)

    @inventory.handles("inventory.reserve")
    async def handle(command: Command) -> dict[str, str]:
        await asyncio.sleep(0.015)
        return {"reservation": command.idempotency_key}

    async def go() -> None:
        definition = build(transport, provider)
        stop = asyncio.Event()
        serving = asyncio.create_task(inventory.serve(transport, MemoryInbox(), stop=stop))
        orchestrator = Orchestrator(MemoryStore(), [definition], observer=tracing)
        await orchestrator.run(definition, {}, correlation_id="order-42")
        stop.set()
        await serving

    asyncio.run(go())
    return sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)


def draw(found: list[ReadableSpan], out: Path) -> None:
    t0 = min(s.start_time or 0 for s in found)
    depth: dict[int, int] = {}
    for span in found:  # parents start before their children
        parent = span.parent.span_id if span.parent else None
        depth[span.context.span_id] = depth[parent] + 1 if parent in depth else 0
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(found) + 1.4), dpi=110)
    for row, span in enumerate(found):
        start = ((span.start_time or 0) - t0) / 1e6
        width = max(((span.end_time or 0) - (span.start_time or 0)) / 1e6, 0.4)
        failed = span.status.status_code is StatusCode.ERROR
        kind = span.kind.name
        color = (
            "#d9534f"
            if failed
            else {"PRODUCER": "#f0ad4e", "CONSUMER": "#5cb85c"}.get(kind, "#337ab7")
        )
        ax.barh(row, width, left=start, color=color, height=0.6)
        label = "└─ " * min(depth[span.context.span_id], 1) + span.name
        label = "   " * max(depth[span.context.span_id] - 1, 0) + label
        attempt = (span.attributes or {}).get("saga.step.attempt")
        if attempt is not None:
            label += f" #{attempt}"
        if failed:
            label += f"  ({span.status.description})"
        ax.text(-0.82, row, label, ha="left", va="center", fontsize=9, family="monospace",
                transform=ax.get_yaxis_transform())  # fmt: skip
        for event in span.events:
            if event.name == "transition":
                x = (event.timestamp - t0) / 1e6
                ax.plot([x], [row], marker="|", color="black", markersize=12)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the saga started    (| = a transition, red = failed attempt)")
    trace_id = f"{found[0].context.trace_id:032x}"
    ax.set_title(f"one saga, one trace {trace_id[:16]}…: orchestrator and participant", fontsize=10)
    ax.spines[["top", "right", "left"]].set_visible(False)
    fig.subplots_adjust(left=0.45, right=0.98)
    fig.savefig(out)


if __name__ == "__main__":
    draw(spans(), Path(sys.argv[1] if len(sys.argv) > 1 else "docs/trace.png"))

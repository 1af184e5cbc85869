"""An inventory participant as a process of its own, tracing to a file.

    python -m tests.observability._participant_process TRANSPORT_URL SPANS_FILE

Serves ``inventory.reserve`` until SIGTERM; every span it ends is one JSON line of
SPANS_FILE (the OpenTelemetry SDK's own span JSON)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from saga_fsm.messaging import connect_transport
from saga_fsm.observability.tracing import SagaTracing
from saga_fsm.participant import Command, MemoryInbox, Participant


async def main(url: str, spans_file: str) -> None:
    out = open(spans_file, "w")  # noqa: SIM115 (open for the process's life)
    provider = TracerProvider()
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inventory = Participant("inventory", observer=SagaTracing(provider), retry_delay=0.1)

    @inventory.handles("inventory.reserve")
    def reserve(command: Command) -> dict[str, Any]:
        return {"reservation": command.idempotency_key}

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    transport = await connect_transport(url, ack_wait=1.0)
    print("ready", flush=True)
    try:
        await inventory.serve(transport, MemoryInbox(), stop=stop)
    finally:
        await transport.close()
        out.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

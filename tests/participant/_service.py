"""An inventory participant as a real process, for crash tests.

    python -m tests.participant._service TRANSPORT_URL INBOX_DSN PREFIX [MARKER]

Reserves stock in a ``reservations`` table through the inbox transaction's connection.
With MARKER, it writes the file once its reservation row is written (uncommitted) and
then hangs, so that a test can kill it -9 in the middle of handling a command.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from saga_fsm.messaging import connect_transport
from saga_fsm.participant import Command, Participant, PostgresInbox


async def main(url: str, dsn: str, prefix: str, marker: str | None) -> None:
    inventory = Participant("inventory", retry_delay=0.2)

    @inventory.handles(f"{prefix}.reserve")
    async def reserve(command: Command) -> dict[str, str]:
        await command.connection.execute(
            "INSERT INTO reservations (idempotency_key, sku) VALUES (%s, %s)",
            (command.idempotency_key, command.payload["sku"]),
        )
        if marker is not None:
            Path(marker).write_text("handling")
            await asyncio.sleep(600)
        return {"reservation": command.idempotency_key}

    transport = await connect_transport(url, ack_wait=1.0)
    inbox = await PostgresInbox.open(dsn)
    print("ready", flush=True)
    try:
        await inventory.serve(transport, inbox, concurrency=4)
    finally:
        await inbox.close()
        await transport.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], args[2], args[3] if len(args) > 3 else None))

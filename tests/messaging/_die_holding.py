"""A consumer that dies holding a message: receives one from CHANNEL at URL, prints its
id, and exits at once (os._exit: no ack, no close, no goodbye to the broker)."""

from __future__ import annotations

import asyncio
import os
import sys

from saga_fsm.messaging import connect_transport


async def main(url: str, channel: str) -> None:
    transport = await connect_transport(url, ack_wait=1.0)
    subscription = await transport.subscribe(channel, prefetch=1)
    delivery = await subscription.receive(timeout=20)
    print(delivery.message.message_id if delivery else "none", flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

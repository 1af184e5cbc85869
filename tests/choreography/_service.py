"""One service of the order choreography as a process, for the crash tests:
``python -m tests.choreography._service SERVICE TRANSPORT_URL INBOX_URL NAME``
(NAME: the choreography's name, the test's channel prefix). Prints ``ready`` once
consuming."""

from __future__ import annotations

import asyncio
import sys

import attrs

from saga_fsm.choreography._process import MAX_DELIVERIES, open_inbox
from saga_fsm.examples.order_choreography import choreography, participants
from saga_fsm.messaging import connect_transport


async def main(service: str, transport_url: str, inbox_url: str, name: str) -> None:
    table = attrs.evolve(choreography, name=name)
    participant = participants(fail_rate=0.3, seed=5, table=table)[service]
    transport = await connect_transport(transport_url, max_deliveries=MAX_DELIVERIES, ack_wait=2.0)
    inbox = await open_inbox(inbox_url)
    print("ready", flush=True)
    await participant.serve(transport, inbox)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

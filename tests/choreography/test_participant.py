"""One service module holds both kinds of handler: the choreography's event handlers
(``EventParticipant``) and saga_fsm.participant's command handlers (``Participant``),
served on one transport with one inbox, each deduplicated by it."""

from __future__ import annotations

import asyncio

from saga_fsm.choreography import EventContext, EventParticipant, channel, publish_event
from saga_fsm.examples.order_choreography import choreography
from saga_fsm.messaging import Headers, Message, MessageKind, reply_from_payload
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.participant import Command, MemoryInbox, Participant

# -- the payment service: one module, events and commands --------------------------------
charged: list[str] = []
refunded: list[str] = []
events = EventParticipant(choreography, "payment")
commands = Participant("payment")


@events.on("InventoryReserved")
def charge(event: EventContext) -> None:
    order_id = event.payload["order_id"]
    charged.append(order_id)
    event.publish("PaymentProcessed", {"order_id": order_id, "payment_id": f"p-{order_id}"})


@commands.handles("payment.refund")
def refund(command: Command) -> dict[str, str]:
    refunded.append(command.payload["payment_id"])
    return {"refund": command.payload["payment_id"]}


def test_event_and_command_handlers_share_a_transport_and_an_inbox() -> None:
    async def scenario() -> None:
        transport, inbox, stop = MemoryTransport(), MemoryInbox(), asyncio.Event()
        tracker_copies = await transport.subscribe(channel(choreography, "tracker"))
        replies = await transport.subscribe("payment.replies")
        served = [
            asyncio.create_task(events.serve(transport, inbox, stop=stop)),
            asyncio.create_task(commands.serve(transport, inbox, stop=stop)),
        ]
        for _ in range(2):  # the same event twice
            await publish_event(
                transport, choreography, "InventoryReserved", {"order_id": "o1"}, event_id="e1"
            )
        for _ in range(2):  # the command sent twice (new message ids): handled once
            refund_command = Message(
                "payment.refund",
                MessageKind.COMMAND,
                {"payment_id": "p-o1"},
                Headers(
                    saga_id="s1",
                    step="refund",
                    attempt=1,
                    idempotency_key="s1:refund",
                    reply_channel="payment.replies",
                ),
            )
            await transport.publish(refund_command)
        answers = []
        for _ in range(2):
            delivery = await replies.receive(timeout=10)
            assert delivery is not None
            await delivery.ack()
            answers.append(reply_from_payload(delivery.message.payload).data)
        names = []
        while (delivery := await tracker_copies.receive(timeout=1)) is not None:
            await delivery.ack()
            names.append(delivery.message.headers.step)
        stop.set()
        await asyncio.gather(*served)
        assert charged == ["o1"] and refunded == ["p-o1"]
        assert answers == [{"refund": "p-o1"}, {"refund": "p-o1"}]
        assert "PaymentProcessed" in names  # published (again, same id, on the duplicate)

    asyncio.run(scenario())

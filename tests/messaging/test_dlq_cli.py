"""``saga-fsm dlq ls|show|replay|drop`` on every transport that outlives a process."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from saga_fsm.cli import main
from saga_fsm.messaging import Headers, Message, MessageKind
from tests.messaging._brokers import Broker

OUT_OF_PROCESS = ["sqlite", "postgresql", "amqp", "nats"]


async def park(broker: Broker, reason: str) -> Message:
    """A command on the broker's channel, dead-lettered by its consumer with ``reason``."""
    sent = Message(broker.channel(), MessageKind.COMMAND, {"sku": "A-1"}, Headers(saga_id="s-1"))
    transport = await broker.connect()
    try:
        subscription = await transport.subscribe(sent.channel)
        await transport.publish(sent)
        delivery = await subscription.receive(timeout=10)
        assert delivery is not None
        await delivery.dead_letter(reason)
    finally:
        await transport.close()
    return sent


async def take(broker: Broker, channel: str) -> Message:
    transport = await broker.connect()
    try:
        delivery = await (await transport.subscribe(channel)).receive(timeout=10)
        assert delivery is not None
        await delivery.ack()
        return delivery.message
    finally:
        await transport.close()


def dlq(broker: Broker, *args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, ["dlq", *args, "--broker", broker.url])
    return done.exit_code, done.output


@pytest.mark.parametrize("broker", OUT_OF_PROCESS, indirect=True)
def test_an_operator_lists_shows_replays_and_drops_dead_letters(broker: Broker) -> None:
    parked = asyncio.run(park(broker, "no such sku"))
    channel = parked.channel

    code, out = dlq(broker, "ls", channel)
    assert code == 0, out
    [line] = out.splitlines()
    assert line.startswith(f"{parked.message_id}\t1\t") and line.endswith("\tno such sku")

    code, out = dlq(broker, "show", channel, parked.message_id)
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["reason"], shown["message"]["payload"]) == ("no such sku", {"sku": "A-1"})

    assert dlq(broker, "replay", channel, parked.message_id)[0] == 0
    assert dlq(broker, "ls", channel, "--json") == (0, "[]\n")
    assert asyncio.run(take(broker, channel)) == parked  # back on its channel
    again = asyncio.run(park(broker, "still no such sku"))

    code, out = dlq(broker, "drop", channel, again.message_id)
    assert (code, out) == (0, f"dropped {again.message_id} from {channel}\n")
    code, out = dlq(broker, "show", channel, again.message_id)
    assert code == 2
    assert out == f"saga-fsm: error: no dead letter {again.message_id!r} on channel {channel!r}\n"


def test_a_bad_broker_url_is_one_line_and_exit_2() -> None:
    done = CliRunner().invoke(main, ["dlq", "ls", "a.b", "--broker", "kafka://u:pw@h/"])
    assert done.exit_code == 2
    assert done.output.startswith("saga-fsm: error: invalid transport URL 'kafka://u:***@h/'")
    assert "pw" not in done.output.replace("kafka://u:***", "")


def test_a_bad_channel_is_one_line_and_exit_2(tmp_path: object) -> None:
    done = CliRunner().invoke(main, ["dlq", "ls", "a b", "--broker", "memory://"])
    assert (done.exit_code, done.output.count("\n")) == (2, 1)
    assert "invalid channel 'a b'" in done.output

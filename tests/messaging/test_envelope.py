"""The message envelope: a frozen value, JSON through the project's converter, and
clear refusals of what it cannot carry or read."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from saga_fsm.messaging import (
    ENVELOPE_SCHEMA_VERSION,
    Headers,
    InvalidChannel,
    InvalidTransportURL,
    Message,
    MessageDecodeError,
    MessageKind,
    connect_transport,
    message_from_json,
    message_to_json,
    open_transport,
)

COMMAND = Message(
    "inventory.reserve",
    MessageKind.COMMAND,
    {"sku": "A-1", "qty": 2},
    Headers(
        saga_id="s-1",
        definition="order",
        step="reserve_inventory",
        attempt=2,
        idempotency_key="s-1:reserve_inventory",
        request_id="s-1:reserve_inventory:2",
        reply_channel="orders.replies",
        correlation_id="order-9",
    ),
    message_id="m-1",
)


def test_a_message_survives_json_unchanged_with_its_schema_version() -> None:
    text = message_to_json(COMMAND)
    assert json.loads(text)["schema_version"] == ENVELOPE_SCHEMA_VERSION
    assert message_from_json(text) == COMMAND
    assert message_from_json(text.encode()) == COMMAND


def test_the_message_id_is_chosen_once() -> None:
    message = Message("a.b", "event")
    assert message.message_id and message_from_json(message_to_json(message)) == message
    assert Message("a.b", "event").message_id != message.message_id


def test_a_reply_goes_to_the_reply_channel_with_the_commands_headers() -> None:
    reply = COMMAND.reply({"outcome": "succeeded"})
    assert (reply.channel, reply.kind, reply.headers) == (
        "orders.replies",
        MessageKind.REPLY,
        COMMAND.headers,
    )
    with pytest.raises(InvalidChannel, match="names no reply channel"):
        Message("a.b", "command").reply({})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"schema_version": 2}', "unknown schema_version 2"),
        ('{"schema_version": 1, "message_id": "m-3"}', "m-3"),
    ],
)
def test_what_is_not_an_envelope_is_refused_with_why(text: str, why: str) -> None:
    with pytest.raises(MessageDecodeError, match=why):
        message_from_json(text)


def test_a_body_with_an_unknown_kind_or_extra_field_is_refused() -> None:
    good = json.loads(message_to_json(COMMAND))
    for bad in ({**good, "kind": "shout"}, {**good, "extra": 1}, {**good, "channel": "a b"}):
        with pytest.raises(MessageDecodeError) as caught:
            message_from_json(json.dumps(bad))
        assert caught.value.message_id == "m-1"


@pytest.mark.parametrize("channel", ["", "a b", "a..b", "a.*", "a.>", ".a", "a.", "x" * 201])
def test_channels_a_broker_could_not_hold_unchanged_are_refused(channel: str) -> None:
    with pytest.raises(InvalidChannel):
        Message(channel, "command")


def test_a_payload_is_a_json_object() -> None:
    with pytest.raises(TypeError, match="JSON object"):
        Message("a.b", "command", [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Message("a.b", "command", {"x": float("nan")})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("kafka://host", "unknown scheme"),
        ("inventory", "unknown scheme"),
        ("sqlite://relative.db", "sqlite:///relative.db or"),
    ],
)
def test_an_unknown_transport_url_is_refused(url: str, why: str) -> None:
    with pytest.raises(InvalidTransportURL, match=why):
        asyncio.run(connect_transport(url))


def test_a_refused_url_never_shows_its_password() -> None:
    with pytest.raises(InvalidTransportURL) as caught:
        asyncio.run(connect_transport("mqtt://user:s3cret@host/"))
    assert "s3cret" not in str(caught.value) and "user:***@host" in str(caught.value)


def test_memory_transports_of_one_name_share_a_broker() -> None:
    async def body() -> None:
        async with (
            open_transport("memory://shared-test") as one,
            open_transport("memory://shared-test") as two,
            open_transport("memory://") as private,
        ):
            await one.publish(COMMAND)
            assert (await (await two.subscribe(COMMAND.channel)).receive(timeout=1)) is not None
            assert (await (await private.subscribe(COMMAND.channel)).receive(timeout=0.1)) is None

    asyncio.run(body())


def test_importing_messaging_loads_no_broker_client() -> None:
    code = (
        "import sys, saga_fsm, saga_fsm.messaging, saga_fsm.participant, saga_fsm.cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aio_pika', 'nats')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

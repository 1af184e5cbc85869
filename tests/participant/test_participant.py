"""The participant SDK on every transport: an idempotent inbox, the suspension guard,
refusals, faults that end in the dead letters, and one transaction on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest

from saga_fsm import StepFailed
from saga_fsm.messaging import (
    Headers,
    Message,
    MessageKind,
    Outcome,
    ReplyBody,
    Subscription,
    Transport,
    TransportError,
    reply_from_payload,
)
from saga_fsm.participant import (
    Command,
    Inbox,
    MemoryInbox,
    Participant,
    PostgresInbox,
    SqliteInbox,
)
from tests.messaging._brokers import Broker

WAIT = 10.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def command(broker: Broker, channel: str, key: str, **payload: Any) -> Message:
    return Message(
        broker.channel(channel),
        MessageKind.COMMAND,
        payload or {"sku": "A-1"},
        Headers(
            saga_id=key.split(":")[0],
            step="reserve",
            attempt=1,
            idempotency_key=key,
            reply_channel=broker.channel("replies"),
            correlation_id="order-1",
        ),
    )


async def replies(subscription: Subscription, count: int) -> list[tuple[Message, ReplyBody]]:
    got = []
    for _ in range(count):
        delivery = await subscription.receive(timeout=WAIT)
        assert delivery is not None, f"{len(got)} replies of {count} within {WAIT}s"
        await delivery.ack()
        got.append((delivery.message, reply_from_payload(delivery.message.payload)))
    assert await subscription.receive(timeout=0.5) is None, "more replies than expected"
    return got


async def open_inbox(broker: Broker) -> Inbox:
    """Every inbox meets every test: PostgreSQL and SQLite in the transport's own database
    (reply in the handling transaction), SQLite in a file of its own beside RabbitMQ
    (reply published after the commit), memory elsewhere."""
    if broker.kind == "postgresql":
        return await PostgresInbox.open(broker.url)
    if broker.kind == "sqlite":
        return SqliteInbox.open(broker.url)
    if broker.kind == "amqp":
        return SqliteInbox.open(str(Path(tempfile.mkdtemp()) / "inbox.db"))
    return MemoryInbox()


@contextlib.asynccontextmanager
async def serving(
    broker: Broker, participant: Participant, **options: Any
) -> AsyncIterator[tuple[Transport, Subscription]]:
    """``participant`` served on the broker with its inbox (see ``open_inbox``); yields
    the transport and a subscription to the reply channel."""
    transport = await broker.connect(**options)
    inbox = await open_inbox(broker)
    stop = asyncio.Event()
    task = asyncio.create_task(participant.serve(transport, inbox, stop=stop, concurrency=4))
    try:
        yield transport, await transport.subscribe(broker.channel("replies"))
    finally:
        stop.set()
        await task
        await inbox.close()
        await transport.close()


def counting(calls: list[str], answer: Callable[[Command], Any] = lambda c: None) -> Any:
    def handler(command: Command) -> Any:
        calls.append(command.idempotency_key)
        return answer(command)

    return handler


def test_a_command_delivered_twice_is_handled_once_and_answered_alike(broker: Broker) -> None:
    calls: list[str] = []
    inventory = Participant("inventory")
    inventory.handles(broker.channel("reserve"))(
        counting(calls, lambda c: {"reservation": f"R-{c.payload['sku']}"})
    )

    async def body() -> None:
        async with serving(broker, inventory) as (transport, reply_sub):
            first = command(broker, "reserve", "saga-1:reserve")
            await transport.publish(first)
            [(reply, answer)] = await replies(reply_sub, 1)
            # The orchestrator retries the step (a new message, the same idempotency key).
            retry = command(broker, "reserve", "saga-1:reserve")
            retry = attrs.evolve(retry, headers=attrs.evolve(retry.headers, request_id="r-2"))
            await transport.publish(retry)
            [(again, same)] = await replies(reply_sub, 1)
        assert calls == ["saga-1:reserve"]
        assert answer == same == ReplyBody(Outcome.SUCCEEDED, data={"reservation": "R-A-1"})
        assert (reply.headers, again.headers) == (first.headers, retry.headers)
        assert (reply.message_id, again.message_id) == (
            first.reply({}).message_id,
            retry.reply({}).message_id,
        )

    run(body())


def test_a_definite_refusal_is_remembered_a_retryable_one_is_not(broker: Broker) -> None:
    calls: list[str] = []
    answers = iter([StepFailed("stock system busy"), {"ok": 1}])
    payment = Participant("payment")

    def charge(command: Command) -> Any:
        calls.append(command.idempotency_key)
        if command.payload.get("card") == "stolen":
            raise StepFailed("card refused", retryable=False)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    payment.handles(broker.channel("charge"))(charge)

    async def body() -> None:
        async with serving(broker, payment) as (transport, reply_sub):
            for _ in range(2):
                await transport.publish(command(broker, "charge", "s1:charge", card="stolen"))
                await transport.publish(command(broker, "charge", "s2:charge", card="ok"))
                await asyncio.sleep(0.3)
            got = [answer for _, answer in await replies(reply_sub, 4)]
        refusals = [a for a in got if a.error is not None and not a.error.retryable]
        assert len(refusals) == 2 and refusals[0] == refusals[1]
        assert refusals[0].error is not None and refusals[0].error.message == "card refused"
        retryable = [a for a in got if a.error is not None and a.error.retryable]
        assert [a.error.message for a in retryable if a.error] == ["stock system busy"]
        assert ReplyBody(Outcome.SUCCEEDED, data={"ok": 1}) in got
        assert sorted(calls) == ["s1:charge", "s2:charge", "s2:charge"]

    run(body())


def test_the_suspension_guard(broker: Broker) -> None:
    done: list[str] = []
    undone: list[str] = []
    inventory = Participant("inventory")
    reserve, release = broker.channel("reserve"), broker.channel("release")
    inventory.handles(reserve)(counting(done))
    inventory.handles(release, compensates=reserve)(counting(undone))

    async def body() -> None:
        async with serving(broker, inventory) as (transport, reply_sub):
            # The compensation overtakes a forward command that was never seen here ...
            await transport.publish(command(broker, "release", "s1:reserve"))
            [(_, compensated)] = await replies(reply_sub, 1)
            # ... which, arriving late, is refused rather than applied after its undo.
            await transport.publish(command(broker, "reserve", "s1:reserve"))
            [(_, late)] = await replies(reply_sub, 1)
            # A step done, then compensated (twice: a redelivery).
            await transport.publish(command(broker, "reserve", "s2:reserve"))
            await replies(reply_sub, 1)
            await transport.publish(command(broker, "release", "s2:reserve"))
            await transport.publish(command(broker, "release", "s2:reserve"))
            [(_, undo), (_, undo_again)] = await replies(reply_sub, 2)
        assert compensated == ReplyBody(Outcome.COMPENSATED, nothing_to_undo=True)
        assert late.outcome is Outcome.FAILED and late.error is not None
        assert not late.error.retryable
        assert "compensated before" in late.error.message
        assert undo == undo_again == ReplyBody(Outcome.COMPENSATED)
        assert done == ["s2:reserve"] and undone == ["s2:reserve"]

    run(body())


def test_a_handler_that_keeps_crashing_ends_in_the_dead_letters(broker: Broker) -> None:
    calls: list[str] = []
    inventory = Participant("inventory", retry_delay=0.1)

    def broken(command: Command) -> None:
        calls.append(command.idempotency_key)
        raise KeyError("warehouse")

    inventory.handles(broker.channel("reserve"))(broken)

    async def body() -> None:
        async with serving(broker, inventory, max_deliveries=3) as (transport, reply_sub):
            sent = command(broker, "reserve", "s1:reserve")
            await transport.publish(sent)
            for _ in range(100):
                if await transport.dead_letters.list(sent.channel):
                    break
                await asyncio.sleep(0.1)
            [letter] = await transport.dead_letters.list(sent.channel)
            assert letter.message == sent and "over the limit of 3" in letter.reason
            assert await reply_sub.receive(timeout=0.5) is None
        assert calls == ["s1:reserve"] * 3

    run(body())


@pytest.mark.postgres
def test_business_writes_inbox_and_reply_commit_together(postgres_dsn: str) -> None:
    from tests.messaging._brokers import postgres_url

    broker = Broker("postgresql", postgres_url(postgres_dsn))
    attempts: list[int] = []
    inventory = Participant("inventory", retry_delay=0.1)

    async def reserve(command: Command) -> dict[str, int]:
        await command.connection.execute(
            "INSERT INTO reservations (idempotency_key) VALUES (%s)", (command.idempotency_key,)
        )
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("crash after the write, before the answer")
        return {"attempts": len(attempts)}

    inventory.handles(broker.channel("reserve"))(reserve)

    async def body() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE reservations (idempotency_key text NOT NULL)")
            async with serving(broker, inventory) as (transport, reply_sub):
                await transport.publish(command(broker, "reserve", "s1:reserve"))
                [(_, answer)] = await replies(reply_sub, 1)
                await transport.publish(command(broker, "reserve", "s1:reserve"))
                await replies(reply_sub, 1)
            cur = await conn.execute("SELECT count(*) FROM reservations")
            assert await cur.fetchone() == (1,)
            cur = await conn.execute(
                "SELECT count(*) FROM saga_fsm_messages WHERE channel = %s",
                (broker.channel("replies"),),
            )
            # Each command got its reply, enqueued in the handling transaction.
            assert await cur.fetchone() == (2,)
        assert answer == ReplyBody(Outcome.SUCCEEDED, data={"attempts": 2})

    run(body())


def test_sqlite_business_writes_inbox_and_reply_commit_together(tmp_path: Path) -> None:
    """The SQLite inbox on the SQLite transport's file: the handler's writes, the inbox
    row and the reply are one transaction, undone together when the handler raises."""
    db = tmp_path / "inventory.db"
    broker = Broker("sqlite", f"sqlite:///{db}")
    attempts: list[int] = []
    inventory = Participant("inventory", retry_delay=0.1)

    def reserve(command: Command) -> dict[str, int]:
        command.connection.execute(
            "INSERT INTO reservations (idempotency_key) VALUES (?)", (command.idempotency_key,)
        )
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("crash after the write, before the answer")
        return {"attempts": len(attempts)}

    inventory.handles(broker.channel("reserve"))(reserve)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE reservations (idempotency_key TEXT NOT NULL)")
    conn.close()

    async def body() -> None:
        async with serving(broker, inventory) as (transport, reply_sub):
            await transport.publish(command(broker, "reserve", "s1:reserve"))
            [(_, answer)] = await replies(reply_sub, 1)
            await transport.publish(command(broker, "reserve", "s1:reserve"))
            await replies(reply_sub, 1)
        assert answer == ReplyBody(Outcome.SUCCEEDED, data={"attempts": 2})

    run(body())
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM reservations").fetchone() == (1,)
        assert conn.execute(
            "SELECT count(*) FROM saga_fsm_messages WHERE channel = ?",
            (broker.channel("replies"),),
        ).fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM saga_fsm_inbox").fetchone() == (1,)


@pytest.mark.postgres
def test_a_participant_outlives_its_database_connections_being_cut(postgres_dsn: str) -> None:
    """The server drops every connection of the participant (transport, listener and
    inbox): it backs off, reconnects, and answers commands sent after."""
    from tests.messaging._brokers import postgres_url

    name = f"participant_{uuid.uuid4().hex[:8]}"
    broker = Broker("postgresql", postgres_url(postgres_dsn) + f"&application_name={name}")
    calls: list[str] = []
    inventory = Participant("inventory")
    inventory.handles(broker.channel("reserve"))(counting(calls))

    async def body() -> None:
        async with serving(broker, inventory) as (transport, reply_sub):
            await transport.publish(command(broker, "reserve", "s1:reserve"))
            await replies(reply_sub, 1)
            async with await psycopg.AsyncConnection.connect(
                postgres_dsn, autocommit=True
            ) as admin:
                cur = await admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                )
                row = await cur.fetchone()
                assert row is not None and row[0] >= 2
            for _ in range(50):  # the test's own publishes meet the cut too
                try:
                    await transport.publish(command(broker, "reserve", "s2:reserve"))
                    break
                except TransportError:
                    await asyncio.sleep(0.2)
            deadline = asyncio.get_running_loop().time() + 30
            while len(calls) < 2 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            assert calls == ["s1:reserve", "s2:reserve"]

    run(body())


def test_under_a_prefix_every_channel_and_what_it_compensates_moves() -> None:
    from saga_fsm.examples.order_services_db import participant, services
    from saga_fsm.participant._service import under

    moved = under(participant, "p1")
    expected = services("p1")["order_services"]
    assert moved.name == participant.name
    assert moved.routes == expected.routes
    assert set(participant.routes) == set(services()["order_services"].routes)  # left alone

"""Command/reply round trips over each transport, against the raw client's floor.

    .venv/bin/python bench/messaging.py --broker amqp://guest:guest@127.0.0.1:5672/ \\
        [--round-trips 2000] [--concurrency 16]

One JSON line per engine: ``floor`` (the broker's own client library, no saga_fsm: an
aio-pika request/reply over durable quorum queues with publisher confirms and manual
acks; nats-py over JetStream work-queue streams with pull consumers; a bare PostgreSQL
table queue woken by NOTIFY) and ``transport`` (the same round trips through
``saga_fsm.messaging``: envelope, dead-letter checks, settlement). A round trip is: the
client publishes a command, a responder in the same process receives it, publishes the
reply and acks, the client receives the reply and acks. ``--concurrency`` round trips
are in flight at once.

Then ``saga`` (unless ``--sagas 0``): whole sagas of 3 remote steps, ``--concurrency`` in
flight, through the executor, the outbox (written with each transition), the relay,
the participant SDK (inbox included) and the reply consumer; the saga store is the
transport's own database on PostgreSQL and SQLite, memory otherwise. Its
``ratio_to_floor`` compares sagas/s with a third of the floor's round trips/s (a
saga is three round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from saga_fsm.messaging import Delivery, Headers, Message, MessageKind, Transport, connect_transport

RoundTrip = Callable[[], Awaitable[None]]


async def measure(
    engine: str, broker: str, one: RoundTrip, total: int, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    remaining = iter(range(total))

    async def lane() -> None:
        for _ in remaining:
            began = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - began)

    cpu, began = _common.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - began, _common.cpu_seconds() - cpu
    return {
        "engine": engine,
        "broker": broker,
        "round_trips": total,
        "concurrency": concurrency,
        "round_trips_per_s": round(total / wall, 1),
        "p50_ms": _common.percentile_ms(latencies, 50),
        "p99_ms": _common.percentile_ms(latencies, 99),
        "cpu_ms_per_round_trip": round(cpu * 1000 / total, 3),
    }


# -- through saga_fsm.messaging -----------------------------------------------------------


async def transport_run(url: str, prefix: str, total: int, concurrency: int) -> dict[str, Any]:
    transport = await connect_transport(url)
    requests, replies = f"{prefix}.requests", f"{prefix}.replies"
    waiting: dict[str, asyncio.Future[None]] = {}

    async def respond(transport: Transport) -> None:
        # Like the floor's callbacks, each request is answered in a task of its own.
        subscription = await transport.subscribe(requests, prefetch=concurrency)
        slots = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()

        async def answer(delivery: Delivery) -> None:
            async with slots:
                await transport.publish(delivery.message.reply({"ok": True}))
                await delivery.ack()

        async for delivery in subscription:
            task = asyncio.create_task(answer(delivery))
            running.add(task)
            task.add_done_callback(running.discard)

    async def collect(transport: Transport) -> None:
        subscription = await transport.subscribe(replies, prefetch=concurrency)
        acks: set[asyncio.Task[None]] = set()
        async for delivery in subscription:
            future = waiting.pop(str(delivery.message.headers.request_id), None)
            if future is not None:
                future.set_result(None)
            task = asyncio.create_task(delivery.ack())  # acks overlap, as answers do
            acks.add(task)
            task.add_done_callback(acks.discard)

    async def one() -> None:
        request_id = uuid.uuid4().hex
        waiting[request_id] = future = asyncio.get_running_loop().create_future()
        headers = Headers(saga_id="bench", request_id=request_id, reply_channel=replies)
        await transport.publish(Message(requests, MessageKind.COMMAND, {"sku": "A-1"}, headers))
        await future

    tasks = [asyncio.create_task(respond(transport)), asyncio.create_task(collect(transport))]
    try:
        return await measure("transport", transport.name, one, total, concurrency)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await transport.close()


# -- whole sagas: 3 remote steps ----------------------------------------------------------


async def saga_run(url: str, prefix: str, sagas: int, concurrency: int) -> dict[str, Any]:
    from saga_fsm import SagaDefinition, SagaExecutor, Step, Worker
    from saga_fsm.observability._observer import Observer
    from saga_fsm.participant import MemoryInbox, Participant
    from saga_fsm.stores import MemoryStore, open_store

    definition = SagaDefinition(
        "bench_remote",
        [
            Step(
                f"step{n}",
                command=f"{prefix}.do{n}",
                compensation_command=f"{prefix}.undo{n}",
                timeout=60,
            )
            for n in range(3)
        ],
    )
    participant = Participant("bench")
    for n in range(3):
        participant.handles(f"{prefix}.do{n}")(lambda command: {"done": True})
        participant.handles(f"{prefix}.undo{n}", compensates=f"{prefix}.do{n}")(lambda c: None)
    done: dict[str, asyncio.Future[None]] = {}

    class Finished(Observer):
        def transitioned(self, before: Any, after: Any, history: Any) -> None:
            future = done.pop(after.saga_id, None) if after.is_terminal else None
            if future is not None:
                future.set_result(None)

    scheme = url.partition(":")[0].lower()
    embedded = scheme in ("sqlite", "postgresql", "postgres")
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(url)) if embedded else MemoryStore()
        transport = await connect_transport(url)
        stack.push_async_callback(transport.close)
        executor = SagaExecutor(
            store, [definition], observer=Finished(), reply_channel=f"{prefix}.replies"
        )
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                Worker(executor, transport=transport, concurrency=concurrency).run(stop)
            ),
            asyncio.create_task(
                participant.serve(transport, MemoryInbox(), stop=stop, concurrency=concurrency)
            ),
        ]

        async def one() -> None:
            saga_id = uuid.uuid4().hex
            done[saga_id] = future = asyncio.get_running_loop().create_future()
            await executor.run(definition, {"sku": "A-1"}, saga_id=saga_id)
            await future

        try:
            line = await measure("saga", transport.name, one, sagas, concurrency)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    await _forget(url, [f"{prefix}.{c}{n}" for c in ("do", "undo") for n in range(3)], prefix)
    line["sagas"] = line.pop("round_trips")
    line["sagas_per_s"] = line.pop("round_trips_per_s")
    line["cpu_ms_per_saga"] = line.pop("cpu_ms_per_round_trip")
    return line


async def _forget(url: str, channels: list[str], prefix: str) -> None:
    """Delete what the saga run left on a shared broker (its queues, its stream)."""
    scheme = url.partition(":")[0].lower()
    if scheme == "amqp":
        import aio_pika

        from saga_fsm.messaging.rabbitmq import dead_queue

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for name in [*channels, f"{prefix}.replies.bench_remote"]:
                for queue in (name, dead_queue(name)):
                    await channel.queue_delete(queue)
    elif scheme == "nats":
        import nats

        from saga_fsm.messaging.jetstream import stream_name

        client = await nats.connect(url)
        try:
            await client.jetstream().delete_stream(stream_name(prefix))
        finally:
            await client.close()


# -- floors: the raw client libraries ------------------------------------------------------


async def amqp_floor(url: str, prefix: str, total: int, concurrency: int) -> dict[str, Any]:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=concurrency)
    quorum = {"x-queue-type": "quorum"}
    requests = await channel.declare_queue(f"{prefix}.requests", durable=True, arguments=quorum)
    replies = await channel.declare_queue(f"{prefix}.replies", durable=True, arguments=quorum)
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_request(message: Any) -> None:
        await channel.default_exchange.publish(
            aio_pika.Message(
                b'{"ok": true}',
                correlation_id=message.correlation_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.reply_to,
        )
        await message.ack()

    async def on_reply(message: Any) -> None:
        await message.ack()
        future = waiting.pop(message.correlation_id, None)
        if future is not None:
            future.set_result(None)

    await requests.consume(on_request)
    await replies.consume(on_reply)

    async def one() -> None:
        correlation_id = uuid.uuid4().hex
        waiting[correlation_id] = future = asyncio.get_running_loop().create_future()
        await channel.default_exchange.publish(
            aio_pika.Message(
                b'{"sku": "A-1"}',
                correlation_id=correlation_id,
                reply_to=replies.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=requests.name,
        )
        await future

    try:
        return await measure("floor", "amqp", one, total, concurrency)
    finally:
        await requests.delete(if_unused=False, if_empty=False)
        await replies.delete(if_unused=False, if_empty=False)
        await connection.close()


async def nats_floor(url: str, prefix: str, total: int, concurrency: int) -> dict[str, Any]:
    import nats
    from nats.js.api import RetentionPolicy

    client = await nats.connect(url)
    js = client.jetstream()
    stream = f"BENCH_{prefix}"
    await js.add_stream(name=stream, subjects=[f"{prefix}.>"], retention=RetentionPolicy.WORK_QUEUE)
    requests = await js.pull_subscribe(f"{prefix}.requests", durable="requests", stream=stream)
    replies = await js.pull_subscribe(f"{prefix}.replies", durable="replies", stream=stream)
    waiting: dict[str, asyncio.Future[None]] = {}

    async def pull(subscription: Any, handle: Callable[[Any], Awaitable[None]]) -> None:
        while True:
            try:
                batch = await subscription.fetch(concurrency, timeout=1)
                await asyncio.gather(*(handle(message) for message in batch))
            except TimeoutError:
                continue

    async def respond(message: Any) -> None:
        headers = {"Request-Id": message.headers["Request-Id"]}
        await js.publish(f"{prefix}.replies", b'{"ok": true}', headers=headers)
        await message.ack()

    async def collect(message: Any) -> None:
        await message.ack()
        future = waiting.pop(message.headers["Request-Id"], None)
        if future is not None:
            future.set_result(None)

    async def one() -> None:
        request_id = uuid.uuid4().hex
        waiting[request_id] = future = asyncio.get_running_loop().create_future()
        headers = {"Request-Id": request_id, "Nats-Msg-Id": request_id}
        await js.publish(f"{prefix}.requests", b'{"sku": "A-1"}', headers=headers)
        await future

    tasks = [
        asyncio.create_task(pull(requests, respond)),
        asyncio.create_task(pull(replies, collect)),
    ]
    try:
        return await measure("floor", "nats", one, total, concurrency)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await js.delete_stream(stream)
        await client.close()


async def table_floor(conninfo: str, prefix: str, total: int, concurrency: int) -> dict[str, Any]:
    """A bare table queue: INSERT + NOTIFY to send, DELETE ... SKIP LOCKED RETURNING to
    receive, a LISTEN connection to wake the two sides."""
    from psycopg_pool import AsyncConnectionPool

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo, min_size=4, max_size=8, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    async with pool.connection() as conn:
        for table in ("requests", "replies"):
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigserial PRIMARY KEY, request_id text, body text)"
                ).format(sql.Identifier(f"bench_{table}"))
            )
    wakes = {"requests": asyncio.Event(), "replies": asyncio.Event()}
    waiting: dict[str, asyncio.Future[None]] = {}

    async def listen() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {prefix}")
            async for notify in conn.notifies():
                wakes[notify.payload].set()

    async def send(table: str, request_id: str, body: str) -> None:
        async with pool.connection() as conn:
            await conn.execute(
                sql.SQL("INSERT INTO {} (request_id, body) VALUES (%s, %s)").format(
                    sql.Identifier(f"bench_{table}")
                ),
                (request_id, body),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (prefix, table))

    async def drain(table: str, handle: Callable[[str], Awaitable[None]]) -> None:
        query = sql.SQL(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} ORDER BY id LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING request_id"
        ).format(t=sql.Identifier(f"bench_{table}"))
        while True:
            wakes[table].clear()
            async with pool.connection() as conn:
                rows = await (await conn.execute(query, (concurrency,))).fetchall()
            await asyncio.gather(*(handle(request_id) for (request_id,) in rows))
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakes[table].wait(), 0.5)

    async def respond(request_id: str) -> None:
        await send("replies", request_id, '{"ok": true}')

    async def collect(request_id: str) -> None:
        future = waiting.pop(request_id, None)
        if future is not None:
            future.set_result(None)

    async def one() -> None:
        request_id = uuid.uuid4().hex
        waiting[request_id] = future = asyncio.get_running_loop().create_future()
        await send("requests", request_id, '{"sku": "A-1"}')
        await future

    tasks = [
        asyncio.create_task(listen()),
        asyncio.create_task(drain("requests", respond)),
        asyncio.create_task(drain("replies", collect)),
    ]
    await asyncio.sleep(0.2)  # LISTEN in place before the first NOTIFY
    try:
        return await measure("floor", "postgresql", one, total, concurrency)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()


# -- main -------------------------------------------------------------------------------


def schema_url(dsn: str, schema: str) -> str:
    """``dsn`` (a URL) with ``search_path`` set to ``schema``."""
    glue = "&" if "?" in dsn else "?"
    return f"{dsn}{glue}options={quote(f'-csearch_path={schema}')}"


async def bench(url: str, total: int, concurrency: int, sagas: int) -> None:
    scheme = url.partition(":")[0].lower()
    prefix = f"bench{secrets.token_hex(4)}"
    floor: dict[str, Any] | None = None
    if scheme == "amqp":
        floor = await amqp_floor(url, prefix, total, concurrency)
    elif scheme == "nats":
        floor = await nats_floor(url, prefix, total, concurrency)
    elif scheme in ("postgresql", "postgres"):
        floor = await table_floor(url, prefix, total, concurrency)
    if floor is not None:
        _common.emit(**floor)
    line = await transport_run(url, f"{prefix}t", total, concurrency)
    if floor is not None:
        line["ratio_to_floor"] = round(line["round_trips_per_s"] / floor["round_trips_per_s"], 3)
    _common.emit(**line)
    if sagas:
        whole = await saga_run(url, f"{prefix}s", sagas, concurrency)
        if floor is not None:
            whole["ratio_to_floor"] = round(
                whole["sagas_per_s"] / (floor["round_trips_per_s"] / 3), 3
            )
        _common.emit(**whole)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, metavar="URL")
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sagas", type=int, default=500, help="0: no saga workload")
    args = parser.parse_args()
    url = args.broker
    if url.partition(":")[0].lower() in ("postgresql", "postgres"):
        # Tables of its own: a schema made for the run, dropped after it.
        schema = f"saga_bench_{secrets.token_hex(4)}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            asyncio.run(
                bench(schema_url(url, schema), args.round_trips, args.concurrency, args.sagas)
            )
        finally:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    else:
        asyncio.run(bench(url, args.round_trips, args.concurrency, args.sagas))


if __name__ == "__main__":
    main()

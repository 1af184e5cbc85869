"""The order services (saga_fsm.examples.order_services_db) as real ``saga-fsm participant``
processes, and a driver that plays the orchestrator by sending commands straight onto
the transport and reading the replies.

Each test gets its own channels (a module in the test's temp dir builds the services
under the broker's prefix) and its own PostgreSQL schema for the inboxes and the
services' tables, where every effect is a row: a command handled twice shows as two.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import psycopg

from saga_fsm.examples.order_services_db import PAYMENT_LIMIT, TABLES
from saga_fsm.messaging import (
    Headers,
    Message,
    MessageKind,
    Outcome,
    ReplyBody,
    Transport,
    TransportError,
    reply_from_payload,
)
from saga_fsm.stores.url import sqlite_path
from tests.messaging._brokers import Broker

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("inventory", "payment", "shipping")
REPLY_WAIT = 45.0  # seconds a command may take to be answered, kills and restarts included


def services_module(directory: Path, prefix: str) -> str:
    """A module in ``directory`` holding the three services on channels under ``prefix``."""
    name = f"order_services_{prefix}"
    (directory / f"{name}.py").write_text(
        "from saga_fsm.examples.order_services_db import services\n\n"
        f"_services = services({prefix!r})\n"
        "inventory = _services['inventory']\n"
        "payment = _services['payment']\n"
        "shipping = _services['shipping']\n"
    )
    return name


@attrs.define
class Fleet:
    """Participant processes, one or more per service, started and killed -9."""

    broker_url: str
    inbox_url: str
    module: str
    directory: Path
    processes: dict[str, list[subprocess.Popen[bytes]]] = attrs.field(factory=dict)
    logs: dict[int, Path] = attrs.field(factory=dict)
    kills: int = 0
    started: int = 0

    def start(self, service: str, *, wait: bool = False) -> subprocess.Popen[bytes]:
        self.started += 1
        log = self.directory / f"{service}-{self.started}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "saga_fsm.cli",
                    "participant",
                    f"{self.module}:{service}",
                    "--broker",
                    self.broker_url,
                    "--inbox",
                    self.inbox_url,
                    "--ack-wait",
                    "2",
                    "--max-deliveries",
                    "1000",
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": f"{self.directory}{os.pathsep}{ROOT}"},
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.processes.setdefault(service, []).append(process)
        self.logs[process.pid] = log
        if wait:
            deadline = time.monotonic() + 60
            while b"consuming" not in log.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{service} did not start: {log.read_text()[-3000:]}")
                time.sleep(0.05)
        return process

    def start_all(self, replicas: int = 1) -> None:
        for service in SERVICES:
            for _ in range(replicas):
                self.start(service, wait=True)

    def kill_one(self, rng: random.Random) -> None:
        """kill -9 a random live process and start its replacement."""
        service = rng.choice(SERVICES)
        live = [p for p in self.processes[service] if p.poll() is None]
        victim = rng.choice(live)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        self.kills += 1
        self.start(service)

    def died(self) -> list[tuple[str, int]]:
        """Processes that exited by themselves (never expected), with their exit codes."""
        return [
            (service, code)
            for service, processes in self.processes.items()
            for code in (p.poll() for p in processes)
            if code not in (None, -signal.SIGKILL)
        ]

    def stop(self) -> list[int]:
        """SIGTERM every live process; their exit codes."""
        live = [p for ps in self.processes.values() for p in ps if p.poll() is None]
        for process in live:
            # A replacement started a moment ago may not handle SIGTERM yet (it is still
            # importing): stopping it then is the default action, not a clean exit.
            deadline = time.monotonic() + 60
            while b"consuming" not in self.logs[process.pid].read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=30) for process in live]


@attrs.define
class Driver:
    """Sends commands as an orchestrator would (each twice, as a relay re-publishing
    after a crash, some retried under a new request id) and routes replies by request id."""

    broker: Broker
    transport: Transport
    waiting: dict[str, asyncio.Future[ReplyBody]] = attrs.field(factory=dict)
    replies: dict[tuple[str, str], list[ReplyBody]] = attrs.field(factory=dict)
    sent: int = 0

    async def publish(self, message: Message) -> None:
        """Publish, waiting out an outage of the broker (as a relay does)."""
        deadline = time.monotonic() + REPLY_WAIT
        while True:
            try:
                await self.transport.publish(message)
                return
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def consume_replies(self, stop: asyncio.Event) -> None:
        subscription = None
        while not stop.is_set():
            try:
                if subscription is None:
                    subscription = await self.transport.subscribe(self.broker.channel("replies"))
                delivery = await subscription.receive(timeout=0.5)
                if delivery is None:
                    continue
                headers = delivery.message.headers
                body = reply_from_payload(delivery.message.payload)
                direction = "undo" if headers.step and headers.step.endswith("_undo") else "do"
                key = (str(headers.idempotency_key), direction)
                self.replies.setdefault(key, []).append(body)
                future = self.waiting.get(str(headers.request_id))
                if future is not None and not future.done():
                    future.set_result(body)
                await delivery.ack()
            except TransportError:
                await asyncio.sleep(0.2)
        if subscription is not None:
            with contextlib.suppress(TransportError):
                await subscription.close()

    async def call(
        self, channel: str, saga_id: str, step: str, key: str, payload: dict[str, Any]
    ) -> ReplyBody:
        self.sent += 1
        request = f"{step}-{self.sent}"
        command = Message(
            self.broker.channel(channel),
            MessageKind.COMMAND,
            payload,
            Headers(
                saga_id=saga_id,
                step=step,
                attempt=1,
                idempotency_key=key,
                request_id=request,
                reply_channel=self.broker.channel("replies"),
                correlation_id=saga_id,
            ),
        )
        future = self.waiting[request] = asyncio.get_running_loop().create_future()
        await self.publish(command)
        await self.publish(command)  # the relay again, after a crash before marking it sent
        if self.sent % 3 == 0:  # the step retried: a new request, the same key
            retry = attrs.evolve(command, headers=attrs.evolve(command.headers, request_id="r"))
            retry = attrs.evolve(retry, message_id=f"{command.message_id}-retry")
            await self.publish(retry)
        try:
            return await asyncio.wait_for(future, REPLY_WAIT)
        except TimeoutError:
            raise AssertionError(f"{channel} {key} unanswered after {REPLY_WAIT}s") from None

    async def order(self, n: int) -> str:
        """One order, as the order-fulfilment saga runs it; its expected end."""
        saga = f"{self.broker.prefix}-order-{n}"
        amount = PAYMENT_LIMIT * 5 if n % 4 == 0 else 10 + n
        order = {"order_id": saga, "amount": amount, "sku": "SKU-1", "quantity": 1}
        reserved = await self.call("inventory.reserve", saga, "reserve", f"{saga}:reserve", order)
        assert reserved.outcome is Outcome.SUCCEEDED, reserved
        charged = await self.call("payment.charge", saga, "charge", f"{saga}:charge", order)
        if n % 4 == 0:
            assert charged.outcome is Outcome.FAILED and charged.error is not None
            assert not charged.error.retryable and "over the limit" in charged.error.message
            undone = await self.call(
                "inventory.release", saga, "reserve_undo", f"{saga}:reserve", order
            )
            assert undone == ReplyBody(Outcome.COMPENSATED), undone
            end = "compensated"
        else:
            assert charged.outcome is Outcome.SUCCEEDED, charged
            shipped = await self.call("shipping.ship", saga, "ship", f"{saga}:ship", order)
            assert shipped.outcome is Outcome.SUCCEEDED, shipped
            end = "completed"
        if n % 5 == 1:
            # A charge that timed out was compensated before its command got there: the
            # refund finds nothing to undo, and the late charge is refused, never applied.
            late = f"{saga}:late"
            refund = await self.call("payment.refund", saga, "late_undo", late, order)
            assert refund == ReplyBody(Outcome.COMPENSATED, nothing_to_undo=True), refund
            charge = await self.call("payment.charge", saga, "late", late, order)
            assert charge.outcome is Outcome.FAILED and charge.error is not None
            assert not charge.error.retryable
        return end

    def inconsistent(self) -> list[tuple[str, str]]:
        """Steps answered differently by different deliveries (must be none)."""
        return [key for key, bodies in self.replies.items() if len(set(map(repr, bodies))) > 1]


def expected_effects(prefix: str, orders: int) -> Counter[tuple[str, str, str]]:
    """(table, idempotency key, kind) -> how many rows the orders leave, exactly."""
    expected: Counter[tuple[str, str, str]] = Counter()
    for n in range(orders):
        saga = f"{prefix}-order-{n}"
        expected["inventory_moves", f"{saga}:reserve", "reserve"] += 1
        if n % 4 == 0:
            expected["inventory_moves", f"{saga}:reserve", "release"] += 1
        else:
            expected["payment_moves", f"{saga}:charge", "charge"] += 1
            expected["shipping_moves", f"{saga}:ship", "ship"] += 1
    return expected


def _rows(inbox_url: str, table: str) -> list[tuple[str, str, int]]:
    query = f"SELECT idempotency_key, kind, seq FROM {table} ORDER BY seq"
    if inbox_url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(sqlite_path(inbox_url))) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                return conn.execute(query).fetchall()
            return []
    with psycopg.connect(inbox_url) as pg:
        exists = pg.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            return []
        return pg.execute(query).fetchall()


def effects(inbox_url: str) -> tuple[Counter[tuple[str, str, str]], list[str]]:
    """Rows per (table, key, kind) in the services' tables, and every key whose forward
    effect landed after its undo."""
    found: Counter[tuple[str, str, str]] = Counter()
    undone_first: list[str] = []
    for table in TABLES:
        undone: set[str] = set()
        for key, kind, _ in _rows(inbox_url, table):
            found[table, key, kind] += 1
            if kind in ("release", "refund"):
                undone.add(key)
            elif key in undone:
                undone_first.append(key)
    return found, undone_first


async def run_orders(broker: Broker, orders: int, spread: float, during: Any) -> list[str]:
    """Run ``orders`` orders started ``spread`` seconds apart while ``during()`` (a
    coroutine: kills, a broker restart) runs; their ends, checked as they go."""
    transport = await broker.connect()
    driver = Driver(broker, transport)
    stop = asyncio.Event()
    consumer = asyncio.create_task(driver.consume_replies(stop))
    try:

        async def staggered(n: int) -> str:
            await asyncio.sleep(n * spread)
            return await driver.order(n)

        ends, _ = await asyncio.gather(
            asyncio.gather(*(staggered(n) for n in range(orders))), during()
        )
        assert driver.inconsistent() == []
        return list(ends)
    finally:
        stop.set()
        await consumer
        await transport.close()

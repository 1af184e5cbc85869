"""``demo --remote``: the order saga with inventory, payment and shipping as three
``saga-fsm participant`` processes, its commands and replies through a broker.

With no broker the saga store's own database carries the messages (SQLite or
PostgreSQL); ``--broker amqp://...`` or ``nats://...`` uses a real one. Each service
keeps its inbox and its table in a SQLite file of its own in a temporary directory.
This process runs a worker (reply consumer and outbox relay included) until every saga
finished, stops the services with SIGTERM and reads their tables to check each effect
landed once, and was undone where the saga compensated.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
from rich.table import Table

from saga_fsm._client import SagaClient
from saga_fsm._errors import SagaError
from saga_fsm._executor import SagaExecutor
from saga_fsm._remote import DEFAULT_REPLY_CHANNEL
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm._worker import Worker
from saga_fsm.cli._app import UsageProblem
from saga_fsm.cli._render import console, state_text
from saga_fsm.examples import order_remote
from saga_fsm.examples.order_services_db import PAYMENT_LIMIT
from saga_fsm.messaging import check_channel, open_transport
from saga_fsm.messaging._url import check_transport_url
from saga_fsm.observability._observer import Observer
from saga_fsm.stores import open_store
from saga_fsm.stores.url import redact_url, url_scheme

SERVICES = ("inventory", "payment", "shipping")
STARTUP_SECONDS = 60.0
STOP_SECONDS = 30.0

# What each service's table holds for one saga: (service, kind) -> rows.
COMPLETED = {
    ("inventory", "reserve"): 1,
    ("payment", "charge"): 1,
    ("shipping", "ship"): 1,
}
REFUSED = {("inventory", "reserve"): 1, ("inventory", "release"): 1}


class DemoFailed(SagaError):
    """A participant process of the demo exited or never started."""


class _Finished(Observer):
    """Notes each saga's final state as the executor writes it: no polling the store."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.changed = asyncio.Event()

    def transitioned(
        self, before: Snapshot, after: Snapshot, history: Sequence[HistoryEntry]
    ) -> None:
        if after.is_terminal:
            self.states[after.saga_id] = after.state
            self.changed.set()


def order(seed: int, n: int) -> dict[str, Any]:
    """Every 4th order costs more than payment accepts, so its saga compensates."""
    over = n % 4 == 3
    return {
        "order_id": f"order-{seed}-{n}",
        "sku": f"SKU-{1 + (seed + n) % 5}",
        "quantity": 1 + n % 3,
        "amount": PAYMENT_LIMIT + 1 + n if over else 10 + n % 90,
    }


def embedded_broker(store_url: str) -> str:
    """The transport of the saga store's own database: participant processes reach it
    there, which they cannot an in-memory store."""
    if url_scheme(store_url) == "memory":
        raise UsageProblem(
            "the participant processes cannot reach a memory:// store: use a SQLite or"
            " PostgreSQL store, or --broker URL"
        )
    return store_url


class Services:
    """The three participant processes, each with its inbox and table in ``directory``."""

    def __init__(self, directory: Path, broker: str, prefix: str | None) -> None:
        self.directory = directory
        self.broker = broker
        self.prefix = prefix
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def inbox(self, service: str) -> Path:
        return self.directory / f"{service}.db"

    def log(self, service: str) -> Path:
        return self.directory / f"{service}.log"

    def start(self) -> None:
        for service in SERVICES:
            command = [
                sys.executable,
                "-m",
                "saga_fsm.cli",
                "participant",
                f"saga_fsm.examples.order_services_db:{service}",
                "--broker",
                self.broker,
                "--inbox",
                f"sqlite:///{self.inbox(service)}",
                *(["--prefix", self.prefix] if self.prefix else []),
            ]
            with self.log(service).open("wb") as err:
                self.processes[service] = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
                )

    async def consuming(self) -> None:
        """Back once every service subscribed: a RabbitMQ queue exists only from then."""
        deadline = time.monotonic() + STARTUP_SECONDS
        waiting = set(SERVICES)
        while waiting:
            self.check()
            waiting = {s for s in waiting if b"consuming" not in self.log(s).read_bytes()}
            if waiting and time.monotonic() > deadline:
                raise DemoFailed(
                    f"participant {min(waiting)} did not start: {self.tail(min(waiting))}"
                )
            await asyncio.sleep(0.05)

    def check(self) -> None:
        """``DemoFailed`` naming the first service whose process exited."""
        for service, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise DemoFailed(f"participant {service} exited ({code}): {self.tail(service)}")

    def tail(self, service: str) -> str:
        lines = self.log(service).read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self) -> dict[str, int]:
        """SIGTERM every live process and wait for it (kill -9 past ``STOP_SECONDS``)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for service, process in self.processes.items():
            try:
                codes[service] = process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[service] = process.wait()
        return codes

    def effects(self) -> dict[str, Counter[tuple[str, str]]]:
        """Per saga, the rows of each (service, kind) in the services' tables."""
        found: dict[str, Counter[tuple[str, str]]] = {}
        for service in SERVICES:
            path = self.inbox(service)
            if not path.exists():
                continue
            with contextlib.closing(sqlite3.connect(path)) as conn:
                table = f"{service}_moves"
                exists = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
                if not exists:
                    continue
                for saga_id, kind in conn.execute(f"SELECT saga_id, kind FROM {table}"):
                    found.setdefault(saga_id, Counter())[(service, kind)] += 1
        return found


@contextlib.contextmanager
def running(broker: str, prefix: str | None) -> Iterator[Services]:
    """The services started in a temporary directory; stopped and deleted on the way out,
    however it is left."""
    with tempfile.TemporaryDirectory(prefix="saga-fsm-demo-") as directory:
        services = Services(Path(directory), broker, prefix)
        # SIGTERM ends the demo as Ctrl-C does, through the finally below: the services
        # are stopped rather than left running on their own.
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            services.start()
            yield services
        finally:
            # A second SIGTERM must not cut the stopping short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            services.stop()
            signal.signal(signal.SIGTERM, previous)


_START_BATCH = 200


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@attrs.frozen
class Outcome:
    states: dict[str, str]  # saga id -> final state
    replies: Counter[str]  # applied, stale, duplicate
    codes: dict[str, int]  # service -> exit code
    effects: dict[str, Counter[tuple[str, str]]]  # saga id -> (service, kind) -> rows


async def run_sagas(
    store_url: str, broker: str, prefix: str | None, sagas: int, seed: int, concurrency: int
) -> Outcome:
    """Start the services, run the sagas to the end, stop the services, read their tables."""
    definition = order_remote.remote_definition(prefix or "")
    reply_channel = f"{prefix}.{DEFAULT_REPLY_CHANNEL}" if prefix else DEFAULT_REPLY_CHANNEL
    stop = asyncio.Event()
    # Store and broker first: one that cannot be reached is an error before any process.
    async with open_store(store_url) as store, open_transport(broker) as transport:
        with running(broker, prefix) as services:
            console.print(
                "participants: "
                + ", ".join(f"{s} (pid {p.pid})" for s, p in services.processes.items())
            )
            await services.consuming()
            finished = _Finished()
            executor = SagaExecutor(
                store, [definition], observer=finished, reply_channel=reply_channel
            )
            worker = Worker(
                executor, concurrency=concurrency, poll_interval=0.05, transport=transport
            )
            serving = asyncio.create_task(worker.run(stop, grace=5.0))
            try:
                client = SagaClient(store, executor.definitions, reply_channel=reply_channel)
                waiting: set[str] = set()
                # In batches: a SIGTERM or Ctrl-C while many are being started ends the
                # demo at the next batch, not after the last.
                for first in range(0, sagas, _START_BATCH):
                    started = await client.start_many(
                        definition,
                        [order(seed, n) for n in range(first, min(first + _START_BATCH, sagas))],
                        definition_ref=None
                        if prefix
                        else "saga_fsm.examples.order_remote:definition",
                    )
                    waiting.update(s.saga_id for s in started)
                while not waiting <= finished.states.keys():
                    finished.changed.clear()
                    services.check()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(finished.changed.wait(), timeout=0.5)
            finally:
                stop.set()
                await serving
            codes = services.stop()
            return Outcome(
                {saga_id: finished.states[saga_id] for saga_id in waiting},
                executor.reply_counts,
                codes,
                services.effects(),
            )


def check_effects(
    states: dict[str, str], effects: dict[str, Counter[tuple[str, str]]]
) -> list[str]:
    """One line per saga whose effects are not what its final state says they must be,
    or per row of a saga this run did not start."""
    wrong = []
    for saga_id, state in sorted(states.items()):
        expected = COMPLETED if state == "completed" else REFUSED
        found = dict(effects.get(saga_id, Counter()))
        if found != expected:
            wrong.append(f"saga {saga_id} ({state}): {found} where {expected} belongs")
    wrong.extend(f"rows of an unknown saga {s!r}" for s in sorted(effects.keys() - states.keys()))
    return wrong


def remote_demo(
    store_url: str,
    broker: str | None,
    prefix: str | None,
    sagas: int,
    seed: int,
    concurrency: int,
) -> int:
    """Print what happened; the number of sagas that did not end completed or compensated
    plus those whose effects are wrong."""
    transport_url = broker or embedded_broker(store_url)
    check_transport_url(transport_url)
    if prefix is not None:
        check_channel(prefix)
    console.print(f"store: {redact_url(store_url)}")
    console.print(f"broker: {redact_url(broker) if broker else 'the store (embedded)'}")
    started = time.perf_counter()
    outcome = asyncio.run(run_sagas(store_url, transport_url, prefix, sagas, seed, concurrency))
    elapsed = time.perf_counter() - started
    states, replies, codes, effects = (
        outcome.states,
        outcome.replies,
        outcome.codes,
        outcome.effects,
    )
    console.print(
        "participants stopped: "
        + ", ".join(f"{service} exit {code}" for service, code in codes.items())
    )
    counts = Counter(states.values())
    table = Table("final state", "sagas", title="remote order saga")
    for state in sorted(counts):
        table.add_row(state_text(state), str(counts[state]))
    console.print(table)
    console.print(
        f"replies: {replies['applied']} applied, {replies['stale']} stale,"
        f" {replies['duplicate']} duplicate"
    )
    totals: Counter[tuple[str, str]] = sum(effects.values(), Counter())
    console.print(
        "effects: "
        + "; ".join(
            f"{service} "
            + ", ".join(f"{kind} {n}" for (s, kind), n in sorted(totals.items()) if s == service)
            for service in SERVICES
        )
    )
    wrong = check_effects(states, effects)
    for line in wrong:
        console.print(f"[red]effects check failed:[/] {line}", soft_wrap=True)
    if not wrong:
        compensated = counts["compensated"]
        console.print(f"effects check: each once, {compensated} reservations released")
    console.print(f"{sagas} sagas in {elapsed:.2f}s ({sagas / elapsed:.0f} sagas/s)")
    if url_scheme(store_url) != "memory" and not prefix:
        # Plain text, never wrapped: these lines are meant to be pasted.
        ref = "saga_fsm.examples.order_remote:definition"
        click.echo(
            "Try next:\n"
            "  saga-fsm ls --definition order_fulfillment_remote\n"
            f"  saga-fsm diagram {ref} -o remote.png\n"
            f"  saga-fsm check {ref} --participant saga_fsm.examples.order_services:participant"
        )
    bad = sum(n for state, n in counts.items() if state not in ("completed", "compensated"))
    return bad + len(wrong) + sum(1 for code in codes.values() if code != 0)

"""``start``, ``worker``, ``cancel``, ``retry``, ``resume``, ``signal``: running sagas
durably."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from saga_fsm._codec import data_problem
from saga_fsm._errors import (
    InvalidStoreURL,
    SagaLeased,
    StoreError,
    TransitionNotAllowed,
)
from saga_fsm._loading import load_definition
from saga_fsm._logging import configure as configure_logging
from saga_fsm._logging import get_logger
from saga_fsm._operator import Operated, OperatorCommand, deliver_signal, operate
from saga_fsm._orchestrator import DEFAULT_LEASE_SECONDS, Orchestrator
from saga_fsm._remote import DEFAULT_REPLY_CHANNEL
from saga_fsm._snapshot import SagaStatus, Snapshot
from saga_fsm._worker import Worker
from saga_fsm.cli._app import (
    UsageProblem,
    definition_ref,
    echo_json,
    exit_with,
    main,
    parse_json_object,
    resolve_store_url,
    run_async,
    store_option,
)
from saga_fsm.cli._dlq import broker_url
from saga_fsm.cli._ids import resolve_id
from saga_fsm.cli._params import (
    MAX_CONCURRENCY,
    MAX_INTERVAL_SECONDS,
    MAX_LEASE_SECONDS,
    FiniteFloat,
    broker_option,
    count,
    log_format_option,
    metrics_port_option,
)
from saga_fsm.cli._render import console, state_text
from saga_fsm.messaging import (
    InvalidChannel,
    InvalidTransportURL,
    Transport,
    TransportError,
    check_channel,
    open_transport,
)
from saga_fsm.messaging._protocol import DEFAULT_ACK_WAIT
from saga_fsm.observability._serve import MissingExtra, refresh_gauges, worker_observer
from saga_fsm.stores import open_store
from saga_fsm.stores.url import redact_url, url_scheme

EXIT_REFUSED = 1
log = get_logger("saga_fsm.worker")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UsageProblem(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UsageProblem(f"{path} is not UTF-8 text (byte offset {err.start})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            row = parse_json_object(line, f"{path} line {number}")
            # Every line is checked before any saga is written: all of them, or none.
            problem = data_problem(row, "data")
            if problem is not None:
                raise UsageProblem(f"{path} line {number}: {problem}")
            rows.append(row)
    return rows


@main.command("start")
@click.argument("ref")
@click.option("--data", default=None, metavar="JSON", help="The saga data, a JSON object.")
@click.option("--data-file", default=None, metavar="FILE.jsonl", help="One saga per JSON line.")
@click.option(
    "--idempotency-key",
    default=None,
    metavar="K",
    help="Start at most once per key (with --data-file, line N uses K:N).",
)
@store_option
@click.option("--json", "as_json", is_flag=True, help='Print [{"id", "state", "version"}, ...].')
def start(
    ref: str,
    data: str | None,
    data_file: str | None,
    idempotency_key: str | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Persist new sagas of REF without running them; print their ids (a worker runs them)."""
    refuse_memory_store(store_url)
    if (data is None) == (data_file is None):
        raise UsageProblem("give exactly one of --data and --data-file")
    payloads = (
        [parse_json_object(data, "--data")] if data is not None else read_jsonl(str(data_file))
    )
    keys: list[str | None]
    if idempotency_key is None:
        keys = [None] * len(payloads)
    elif data is not None:
        keys = [idempotency_key]
    else:
        keys = [f"{idempotency_key}:{n}" for n in range(1, len(payloads) + 1)]
    definition = load_definition(ref)
    source = definition_ref(ref)

    async def go() -> list[Snapshot]:
        async with open_store(resolve_store_url(store_url)) as store:
            # One transaction: a failure leaves no saga of the batch behind.
            return await Orchestrator(store, [definition]).start_many(
                definition, payloads, idempotency_keys=keys, definition_ref=source
            )

    started = run_async(go)
    if as_json:
        echo_json([{"id": s.saga_id, "state": s.state, "version": s.version} for s in started])
        return
    for snapshot in started:
        click.echo(snapshot.saga_id)


def refuse_memory_store(store_url: str | None) -> None:
    """A saga started in memory:// is gone when this process exits, before any worker
    (another process) could run it."""
    if url_scheme(resolve_store_url(store_url)) == "memory":
        raise UsageProblem(
            "start persists sagas for workers in other processes; memory:// is gone when"
            " this command exits: use sqlite:///FILE.db or postgresql://..."
        )


@main.command("worker")
@click.argument("refs", nargs=-1, metavar="REF [REF ...]")
@store_option
@click.option("--concurrency", type=count(maximum=MAX_CONCURRENCY), default=8, show_default=True)
@click.option("--id", "worker_id", default=None, help="Worker name (default: host:pid:random).")
@click.option(
    "--lease-seconds",
    type=FiniteFloat(min=0.1, max=MAX_LEASE_SECONDS),
    default=DEFAULT_LEASE_SECONDS,
    show_default=True,
    help="How long a dead worker's sagas wait before another takes them over.",
)
@click.option(
    "--poll-interval",
    type=FiniteFloat(min=0.01, max=MAX_INTERVAL_SECONDS),
    default=0.2,
    show_default=True,
)
@click.option(
    "--grace",
    type=FiniteFloat(min=0, max=MAX_INTERVAL_SECONDS),
    default=30.0,
    show_default=True,
    help="On SIGTERM/SIGINT, seconds to let in-flight steps finish.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log each claim and step.")
@log_format_option
@metrics_port_option
@click.option(
    "--tracing",
    is_flag=True,
    help="OpenTelemetry spans through the configured tracer provider (extra: otel).",
)
@broker_option("broker")
@click.option(
    "--reply-channel",
    default=DEFAULT_REPLY_CHANNEL,
    show_default=True,
    help="Participants answer remote steps on REPLY_CHANNEL.<definition>.",
)
@click.option("--no-relay", is_flag=True, help="Leave the outbox to saga-fsm relay processes.")
@click.option(
    "--ack-wait",
    type=FiniteFloat(min=0.1, max=MAX_LEASE_SECONDS),
    default=DEFAULT_ACK_WAIT,
    show_default=True,
    help="Seconds a reply taken by a worker that died waits before another gets it"
    " (database transports, NATS).",
)
def worker(
    refs: tuple[str, ...],
    store_url: str | None,
    concurrency: int,
    worker_id: str | None,
    lease_seconds: float,
    poll_interval: float,
    grace: float,
    verbose: bool,
    log_format: str,
    metrics_port: int | None,
    tracing: bool,
    broker: str | None,
    reply_channel: str,
    no_relay: bool,
    ack_wait: float,
) -> None:
    """Claim and run due sagas of the definitions REF... until SIGTERM or SIGINT, then
    exit 0.

    Each REF is a definition file or package.module:attribute, as for start. Only sagas
    of these definitions (name and version) pinned to these tables are claimed; others
    are left for workers that serve them (saga-fsm ls --unrunnable REF... lists those
    no REF serves). Logs a start line, a summary every 10 s while busy, and with -v
    each claim and step.

    When a definition has remote steps (or --broker is given), the worker also consumes
    their replies and relays the outbox's commands to the broker (--no-relay: leave
    that to saga-fsm relay); with no broker, the saga store's database is the broker.
    """
    if not refs:
        raise UsageProblem(
            "name the definitions this worker serves: saga-fsm worker REF [REF ...]"
            " (a definition file or package.module:attribute)"
        )
    definitions = [load_definition(ref) for ref in refs]
    configure_logging(verbose=verbose, log_format=log_format)
    url = resolve_store_url(store_url)
    remote = broker is not None or any(s.remote for d in definitions for s in d.steps)
    transport_url = broker_url(broker, url) if remote else None
    check_channel_option(reply_channel)
    try:
        observer, metrics = worker_observer(metrics_port=metrics_port, tracing=tracing)
    except MissingExtra as err:
        raise UsageProblem(str(err)) from None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        backoff = poll_interval
        while not stop.is_set():
            # The store may be down when the worker starts, too: wait for it, never exit.
            try:
                async with (
                    open_store(url) as store,
                    _maybe_transport(transport_url, ack_wait) as transport,
                ):
                    orchestrator = Orchestrator(
                        store,
                        definitions,
                        worker_id=worker_id,
                        lease_seconds=lease_seconds,
                        observer=observer,
                        reply_channel=reply_channel,
                    )
                    gauges = None
                    if metrics is not None:
                        gauges = asyncio.create_task(
                            refresh_gauges(metrics, store, orchestrator.clock, stop, every=5.0)
                        )
                    try:
                        await Worker(
                            orchestrator,
                            concurrency=concurrency,
                            poll_interval=poll_interval,
                            store_name=redact_url(url),
                            transport=transport,
                            relay=not no_relay,
                        ).run(stop, grace=grace)
                    finally:
                        if gauges is not None:
                            gauges.cancel()
                    return
            except (InvalidStoreURL, InvalidTransportURL):
                raise
            except (StoreError, TransportError) as err:
                log.warning("worker: store unavailable (%s); retrying in %.1fs", err, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)

    run_async(serve)


@contextlib.asynccontextmanager
async def _maybe_transport(url: str | None, ack_wait: float) -> AsyncIterator[Transport | None]:
    if url is None:
        yield None
        return
    async with open_transport(url, ack_wait=ack_wait) as transport:
        yield transport


def check_channel_option(channel: str) -> None:
    try:
        check_channel(channel)
    except InvalidChannel as err:
        raise UsageProblem(f"--reply-channel: {err.reason}") from None


def _operate(saga_id: str, store_url: str | None, action: OperatorCommand, as_json: bool) -> None:
    """Apply an operator command (``saga_fsm._operator.operate``, as the console does).
    Refusals exit 1 and change nothing; so does a saga that ends parked in failed again
    (it still needs an operator)."""

    async def go() -> Operated:
        async with open_store(resolve_store_url(store_url), create=False) as store:
            return await operate(store, await resolve_id(store, saga_id), action)

    _report(go, as_json)


def _report(go: Callable[[], Awaitable[Operated]], as_json: bool) -> None:
    try:
        operated = run_async(go)
    except (TransitionNotAllowed, SagaLeased) as refused:
        click.echo(f"saga-fsm: refused: {refused}", err=True)
        exit_with(EXIT_REFUSED)
        return
    if operated.carried_on_by is not None:
        console.print(f"[dim]{operated.carried_on_by}: it carries on there[/]")
    final = operated.snapshot
    if as_json:
        echo_json({"id": final.saga_id, "state": final.state, "version": final.version})
    else:
        console.print(f"saga {final.saga_id}: {state_text(final.state)}")
    if final.status is SagaStatus.FAILED:
        click.echo(f"saga-fsm: saga {final.saga_id} failed again: {final.failure}", err=True)
        exit_with(EXIT_REFUSED)


def _operator_command(name: OperatorCommand, help_text: str) -> None:
    @main.command(name, help=help_text + " ID may be any unique prefix.")
    @click.argument("saga_id", metavar="ID")
    @store_option
    @click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
    def command(saga_id: str, store_url: str | None, as_json: bool) -> None:
        _operate(saga_id, store_url, name, as_json)


_operator_command("cancel", "Compensate a running saga (refused past the pivot or once finished).")
_operator_command(
    "retry",
    "Resume a saga parked in failed where it gave up (a compensation: fresh attempts; a"
    " pivot that may have acted: one more attempt).",
)
_operator_command("resume", "Take over a saga no live worker holds and run it to the end.")


@main.command("signal")
@click.argument("saga_id", metavar="ID")
@click.argument("event")
@click.option("--data", default=None, metavar="JSON", help="The event's data, a JSON object.")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def signal_command(
    saga_id: str, event: str, data: str | None, store_url: str | None, as_json: bool
) -> None:
    """Deliver EVENT to a saga waiting at a WaitFor step, then carry it on here unless a
    live worker holds it. Refused (exit 1, nothing changed) for an event the wait does
    not list or a saga that is not waiting; the same signal again changes nothing. ID
    may be any unique prefix."""
    payload = parse_json_object(data, "--data") if data is not None else {}

    async def go() -> Operated:
        async with open_store(resolve_store_url(store_url), create=False) as store:
            return await deliver_signal(store, await resolve_id(store, saga_id), event, payload)

    _report(go, as_json)

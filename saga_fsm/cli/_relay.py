"""``relay``: publish the saga store's outbox (remote steps' commands) to a broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from saga_fsm._errors import InvalidArgument, InvalidStoreURL, StoreError
from saga_fsm._executor import default_worker_id
from saga_fsm._logging import configure as configure_logging
from saga_fsm._logging import get_logger
from saga_fsm.cli._app import UsageProblem, main, resolve_store_url, run_async, store_option
from saga_fsm.cli._dlq import broker_url
from saga_fsm.cli._params import (
    MAX_INTERVAL_SECONDS,
    MAX_LEASE_SECONDS,
    FiniteFloat,
    broker_option,
)
from saga_fsm.messaging import InvalidTransportURL, TransportError, open_transport
from saga_fsm.messaging._relay import DEFAULT_RELAY_LEASE, OutboxRelay
from saga_fsm.observability._serve import MissingExtra, worker_observer
from saga_fsm.stores import open_store
from saga_fsm.stores._outbox import OutboxStore

log = get_logger("saga_fsm.relay")


@main.command("relay")
@store_option
@broker_option("broker")
@click.option("--id", "relay_id", default=None, help="Relay name (default: host:pid:random).")
@click.option(
    "--lease-seconds",
    type=FiniteFloat(min=0.1, max=MAX_LEASE_SECONDS),
    default=DEFAULT_RELAY_LEASE,
    show_default=True,
    help="How long a dead relay's claimed rows wait before another publishes them.",
)
@click.option(
    "--poll-interval",
    type=FiniteFloat(min=0.01, max=MAX_INTERVAL_SECONDS),
    default=0.05,
    show_default=True,
)
@click.option(
    "--tracing",
    is_flag=True,
    help="A PRODUCER span per published command, continuing its saga's trace (extra: otel).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG.")
def relay(
    store_url: str | None,
    broker: str | None,
    relay_id: str | None,
    lease_seconds: float,
    poll_interval: float,
    tracing: bool,
    verbose: bool,
) -> None:
    """Publish the commands remote steps wrote to the saga store's outbox, until SIGTERM
    or SIGINT, then exit 0. At least once, in order per saga; any number of relays (and
    workers running their own) may share a store."""
    configure_logging(verbose=verbose, log_format="human")
    url = resolve_store_url(store_url)
    transport_url = broker_url(broker, url)
    name = relay_id or default_worker_id()
    try:
        observer, _metrics = worker_observer(metrics_port=None, tracing=tracing)
    except MissingExtra as err:
        raise UsageProblem(str(err)) from None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        backoff = poll_interval
        while not stop.is_set():
            try:
                async with open_store(url) as store, open_transport(transport_url) as transport:
                    if not isinstance(store, OutboxStore):
                        raise InvalidArgument(f"{store!r} has no outbox")
                    log.info("relay %s publishing the outbox of %r", name, store)
                    await OutboxRelay(
                        store,
                        transport,
                        name,
                        lease_seconds=lease_seconds,
                        poll_interval=poll_interval,
                        observer=observer,
                    ).run(stop)
                    return
            except (InvalidStoreURL, InvalidTransportURL) as err:
                raise UsageProblem(str(err)) from None
            except (StoreError, TransportError) as err:
                log.warning("relay: unavailable (%s); retrying in %.1fs", err, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)

    run_async(serve)

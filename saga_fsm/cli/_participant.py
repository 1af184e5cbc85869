"""``participant``: a module's Participant as a service process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click

from saga_fsm._logging import configure as configure_logging
from saga_fsm.cli._app import UsageProblem, main, run_async
from saga_fsm.cli._dlq import broker_url
from saga_fsm.cli._params import (
    MAX_CONCURRENCY,
    MAX_INTERVAL_SECONDS,
    FiniteFloat,
    broker_option,
    count,
    log_format_option,
    metrics_port_option,
)
from saga_fsm.messaging._url import check_transport_url
from saga_fsm.observability._observer import NO_OBSERVER, Observers
from saga_fsm.observability._serve import MissingExtra, worker_observer
from saga_fsm.participant._service import (
    INBOX_URLS,
    check_inbox_url,
    load_participant,
    run_participant,
    under,
)
from saga_fsm.stores.url import redact_url, sqlite_path, url_scheme

INBOX_ENV = "SAGA_FSM_INBOX"


def _inbox_url(inbox: str | None, broker: str) -> str:
    """``--inbox``, else ``$SAGA_FSM_INBOX``, else the broker when it is a database (the
    reply then commits with the inbox row); a message broker holds no inbox."""
    url = inbox or os.environ.get(INBOX_ENV)
    if url is not None:
        if not url.strip():
            raise UsageProblem(f"--inbox is empty: give a URL ({INBOX_URLS})")
        return url
    if url_scheme(broker) in ("sqlite", "postgresql"):
        return broker
    raise UsageProblem(
        f"the broker {redact_url(broker)} cannot hold the inbox: give --inbox URL ({INBOX_URLS})"
    )


def _check_sqlite(url: str, option: str) -> None:
    """A missing directory is a typo, not an outage: refuse it rather than retry."""
    if url_scheme(url) == "sqlite":
        parent = Path(sqlite_path(url)).parent
        if not parent.is_dir():
            raise UsageProblem(f"{option} {url}: directory {parent} does not exist")


@main.command("participant")
@click.argument("ref", metavar="MODULE[:ATTR]")
@broker_option("url")
@click.option(
    "--inbox",
    default=None,
    metavar="URL",
    help="sqlite:///…, postgresql://… or memory:// (default: $SAGA_FSM_INBOX, else the"
    " broker when it is a database).",
)
@click.option(
    "--concurrency",
    type=count(maximum=MAX_CONCURRENCY),
    default=4,
    show_default=True,
    help="Commands of each channel handled at once.",
)
@click.option(
    "--max-deliveries",
    type=count(maximum=1000),
    default=5,
    show_default=True,
    help="A command delivered more often goes to the dead letters.",
)
@click.option(
    "--ack-wait",
    type=FiniteFloat(min=0.1, max=MAX_INTERVAL_SECONDS),
    default=30.0,
    show_default=True,
    help="Seconds a command stays claimed by a consumer that may have died (the database"
    " transports, NATS).",
)
@click.option(
    "--prefix",
    default=None,
    metavar="P",
    help="Serve every channel under P (P.inventory.reserve): services sharing a broker.",
)
@metrics_port_option
@click.option(
    "--tracing",
    is_flag=True,
    help="A CONSUMER span per command, continuing the saga's trace (extra: otel).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@log_format_option
def participant(
    ref: str,
    url: str | None,
    inbox: str | None,
    concurrency: int,
    max_deliveries: int,
    ack_wait: float,
    prefix: str | None,
    metrics_port: int | None,
    tracing: bool,
    verbose: bool,
    log_format: str,
) -> None:
    """Serve the Participant MODULE[:ATTR] until SIGTERM or SIGINT, then exit 0.

    Without ATTR, the module's ``participant``, else the one Participant it holds.
    Commands are deduplicated in the inbox; while the broker or the inbox database is
    unreachable the service logs, backs off and tries again.
    """
    found = load_participant(ref)
    if prefix is not None:
        found = under(found, prefix)
    broker = broker_url(url)
    check_transport_url(broker)
    inbox_url = _inbox_url(inbox, broker)
    check_inbox_url(inbox_url)
    _check_sqlite(broker, "--broker")
    _check_sqlite(inbox_url, "--inbox")
    configure_logging(verbose=verbose, log_format=log_format)
    try:
        observer, _metrics = worker_observer(metrics_port=metrics_port, tracing=tracing)
    except MissingExtra as err:
        raise UsageProblem(str(err)) from None
    if observer is not NO_OBSERVER:
        found.observer = Observers(found.observer, observer)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_participant(
            found,
            broker_url=broker,
            inbox_url=inbox_url,
            stop=stop,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            ack_wait=ack_wait,
        )

    run_async(serve)

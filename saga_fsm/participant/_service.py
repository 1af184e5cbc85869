"""A participant as a service process: found by reference, served on a transport URL
with its inbox at another URL, until told to stop, through broker and database outages."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
from typing import Any

from saga_fsm._errors import InvalidReference
from saga_fsm._logging import get_logger
from saga_fsm.messaging import (
    InvalidTransportURL,
    TransportError,
    check_channel,
    connect_transport,
)
from saga_fsm.participant._inbox import Inbox, MemoryInbox, PostgresInbox, SqliteInbox
from saga_fsm.participant._participant import Participant
from saga_fsm.stores.url import redact_url, url_scheme

log = get_logger("saga_fsm.participant")
_MODULE = re.compile(r"^[A-Za-z_][\w.]*$")
_MIN_BACKOFF, _MAX_BACKOFF = 0.1, 5.0
INBOX_URLS = "sqlite:///FILE.db, postgresql://..., or memory:// (forgotten on exit)"


def load_participant(ref: str) -> Participant:
    """The ``Participant`` at ``module:attribute``; for a bare ``module``, its attribute
    ``participant``, else the one Participant it holds."""
    module_name, _, attr = ref.partition(":")
    if not _MODULE.match(module_name) or (attr and not _MODULE.match(attr)):
        raise InvalidReference(f"{ref!r} is not a reference of the form package.module[:attribute]")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import that raises anything is a module we cannot serve
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidReference(f"cannot import module {module_name!r}: {why}") from None
    if attr:
        value: Any = module
        for part in attr.split("."):
            value = getattr(value, part, None)
            if value is None:
                raise InvalidReference(f"module {module_name!r} has no {attr!r}")
        if not isinstance(value, Participant):
            raise InvalidReference(f"{ref!r} is a {type(value).__name__}, not a Participant")
        return value
    default = getattr(module, "participant", None)
    if isinstance(default, Participant):
        return default
    found = {name: value for name, value in vars(module).items() if isinstance(value, Participant)}
    if len(found) != 1:
        names = ", ".join(sorted(found)) or "none"
        raise InvalidReference(
            f"module {module_name!r} holds {len(found)} Participants ({names});"
            f" name one as {module_name}:attribute"
        )
    return next(iter(found.values()))


def under(participant: Participant, prefix: str) -> Participant:
    """A copy of ``participant`` with every channel under ``prefix`` (``P.inventory.reserve``):
    services sharing a broker with others keep to their own channels."""
    check_channel(prefix)
    moved = Participant(
        participant.name, retry_delay=participant.retry_delay, observer=participant.observer
    )
    for route in participant.routes.values():
        compensates = f"{prefix}.{route.compensates}" if route.compensates else None
        moved.handles(f"{prefix}.{route.channel}", compensates=compensates)(route.handler)
    return moved


def check_inbox_url(url: str) -> None:
    if url_scheme(url) not in ("memory", "sqlite", "postgresql"):
        raise InvalidTransportURL(f"invalid inbox URL {redact_url(url)!r}; use {INBOX_URLS}")
    if url_scheme(url) == "memory" and url.lower() != "memory://":
        raise InvalidTransportURL(f"invalid inbox URL {url!r}: memory:// takes no name")


async def open_inbox(url: str) -> Inbox:
    """The inbox ``url`` names; the caller closes it."""
    check_inbox_url(url)
    scheme = url_scheme(url)
    if scheme == "memory":
        return MemoryInbox()
    if scheme == "sqlite":
        return SqliteInbox.open(url)
    return await PostgresInbox.open(url)


async def run_participant(
    participant: Participant,
    *,
    broker_url: str,
    inbox_url: str,
    stop: asyncio.Event,
    concurrency: int = 4,
    max_deliveries: int = 5,
    ack_wait: float = 30.0,
) -> None:
    """Serve ``participant`` until ``stop`` is set. An unreachable broker or inbox
    database (at start or later) is logged and tried again with back-off; only a
    malformed URL, or credentials refused before any connection worked, is raised."""
    check_inbox_url(inbox_url)
    backoff = _MIN_BACKOFF
    connected = False
    while not stop.is_set():
        try:
            try:
                transport = await connect_transport(
                    broker_url, max_deliveries=max_deliveries, ack_wait=ack_wait
                )
            except InvalidTransportURL as err:
                if not connected:  # a URL that never worked: refused credentials
                    raise
                # A broker still booting may refuse a login it accepted before.
                raise TransportError(broker_url.partition(":")[0], str(err)) from err
            connected = True
            try:
                inbox = await open_inbox(inbox_url)
                try:
                    await participant.serve(transport, inbox, stop=stop, concurrency=concurrency)
                    return
                finally:
                    await inbox.close()
            finally:
                await transport.close()
        except TransportError as err:
            log.warning("participant %s: %s; trying again in %.1fs", participant.name, err, backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF)

"""Option types that refuse what the engine cannot use (NaN, infinities, counts and
durations beyond any store or clock) with one line, before anything runs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click

# SQLite and PostgreSQL both take a LIMIT up to a signed 64-bit integer; nobody lists more.
MAX_COUNT = 2**31 - 1
MAX_CONCURRENCY = 100_000  # sagas in flight in one process
MAX_LEASE_SECONDS = 7 * 86400.0
MAX_INTERVAL_SECONDS = 86400.0  # polls, grace periods
# datetime arithmetic overflows near 10,000 years; a century back is "forever" for a saga.
MAX_DURATION = timedelta(days=36500)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class FiniteFloat(click.FloatRange):
    """A ``FloatRange`` that also refuses NaN (which every comparison lets through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def count(minimum: int = 1, maximum: int = MAX_COUNT) -> click.IntRange:
    """A whole number no store or queue will choke on."""
    return click.IntRange(min=minimum, max=maximum)


def parse_duration(text: str, option: str = "--older-than") -> timedelta:
    """``90s``, ``5m``, ``2h``, ``1d`` or plain seconds, up to ``MAX_DURATION``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a duration like 90s, 5m, 2h or 1d", param_hint=option
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > MAX_DURATION.total_seconds():
        raise click.BadParameter(f"{text!r} is longer than 36500d", param_hint=option)
    return timedelta(seconds=seconds)


# Options that every long-running process (worker, participant) shares.
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["human", "json"]),
    default="human",
    show_default=True,
    help="Log lines for people, or one JSON object per line.",
)
metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on http://0.0.0.0:PORT/metrics (extra: metrics).",
)

_F = TypeVar("_F", bound=Callable[..., Any])


def broker_option(dest: str) -> Callable[[_F], _F]:
    """``--broker URL`` (stored as ``dest``): one option, one help text, wherever a
    command talks to a transport."""
    return click.option(
        "--broker",
        dest,
        default=None,
        metavar="URL",
        help="Where messages travel: amqp://…, nats://…, sqlite:///…, postgresql://…"
        " (default: $SAGA_FSM_BROKER, else the saga store itself).",
    )

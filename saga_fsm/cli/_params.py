"""Option types that refuse what the engine cannot use (NaN, infinities, counts and
durations beyond any store or clock) with one line, before anything runs."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

import click

# SQLite and PostgreSQL both take a LIMIT up to a signed 64-bit integer; nobody lists more.
MAX_COUNT = 2**31 - 1
# datetime arithmetic overflows near 10,000 years; a century back is "forever" for a saga.
MAX_DURATION = timedelta(days=36500)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class FiniteFloat(click.ParamType):
    """A finite number in ``[minimum, maximum]`` (``minimum`` excluded when ``open_min``)."""

    name = "number"

    def __init__(self, minimum: float, maximum: float, *, open_min: bool = False) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.open_min = open_min

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_ok = number > self.minimum if self.open_min else number >= self.minimum
        if not low_ok or number > self.maximum:
            low = f"more than {self.minimum:g}" if self.open_min else f"at least {self.minimum:g}"
            self.fail(f"{value!r} must be {low} and at most {self.maximum:g}", param, ctx)
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

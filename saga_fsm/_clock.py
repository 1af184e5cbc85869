"""Injectable time: the core never reads a clock, the orchestrator reads this one."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Protocol

from saga_fsm._errors import InvalidArgument

# Ten years: beyond that, datetime arithmetic (now + seconds) overflows soon enough.
MAX_SECONDS = 10 * 365 * 86400.0


def seconds(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` if it is a usable number of seconds: finite, positive (or zero when
    ``allow_zero``), at most ``MAX_SECONDS``; else ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        reason = "must be a number of seconds"
    elif not math.isfinite(value):
        reason = "must be a finite number of seconds"
    elif value < 0 or (value == 0 and not allow_zero):
        reason = "must be " + ("0 or more" if allow_zero else "positive")
    elif value > MAX_SECONDS:
        reason = f"must be at most {MAX_SECONDS:.0f} seconds"
    else:
        return float(value)
    raise InvalidArgument(f"{name} {reason}, got {value!r}", name=name, value=value)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time in UTC and real ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class FakeClock:
    """Virtual time for tests: ``sleep`` moves time forward at once instead of waiting,
    so retry back-off and lease expiry are tested without sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)

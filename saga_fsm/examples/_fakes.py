"""In-process fake participants for the examples and the demo.

They honour idempotency keys (a repeated call returns the first result and applies
nothing twice) and fail on demand: each call draws from a hash of the seed, the key and
the attempt, so a seeded demo fails the same way whatever the interleaving.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from saga_fsm._core import idempotency_key
from saga_fsm._definition import StepContext
from saga_fsm._errors import InvalidArgument, StepFailed


class TransientServiceError(ConnectionError):
    """A failure a retry can cure (the fake's stand-in for a dropped connection)."""


class FakeServices:
    """Inventory, payments, shipping, notifications and travel vendors, in memory."""

    def __init__(self) -> None:
        self.fail_rate = 0.0
        self.seed = 0
        self.latency = 0.0
        self.effects: dict[str, dict[str, Any]] = {}
        self.applied: Counter[str] = Counter()

    def configure(self, *, fail_rate: float = 0.0, seed: int = 0, latency: float = 0.0) -> None:
        if not 0 <= fail_rate <= 1:
            raise InvalidArgument(f"fail_rate must be between 0 and 1, got {fail_rate}")
        self.fail_rate, self.seed, self.latency = fail_rate, seed, latency
        self.effects.clear()
        self.applied.clear()

    def _draw(self, ctx: StepContext, salt: str) -> float:
        token = f"{self.seed}:{ctx.correlation_id or ctx.saga_id}:{ctx.step}:{salt}"
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    async def call(
        self, operation: str, ctx: StepContext, result: dict[str, Any], *, may_fail_for_good: bool
    ) -> dict[str, Any]:
        """Apply ``operation`` once per idempotency key; maybe fail first."""
        if self.latency:
            await asyncio.sleep(self.latency)
        draw = self._draw(ctx, "outcome")
        if draw < self.fail_rate:
            # Half of the failures are permanent (where the caller allows it); transient
            # ones clear up after the first two attempts, so retries always win.
            if may_fail_for_good and draw < self.fail_rate / 2:
                raise StepFailed(f"{operation} refused for {ctx.correlation_id}", retryable=False)
            if ctx.attempt <= 2 and not (ctx.compensating and ctx.attempt > 1):
                raise TransientServiceError(f"{operation}: service unavailable")
        if ctx.idempotency_key not in self.effects:
            self.effects[ctx.idempotency_key] = result
            self.applied[operation] += 1
        return self.effects[ctx.idempotency_key]

    def forget(self, saga_id: str, steps: Iterable[str]) -> None:
        """Drop the effects a finished saga left (a long demo keeps only those in flight)."""
        for step in steps:
            for compensation in (False, True):
                self.effects.pop(idempotency_key(saga_id, step, compensation=compensation), None)


services = FakeServices()
"""The participants the example actions talk to; the demo configures it."""

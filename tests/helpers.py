"""Small definitions shared by the tests."""

from __future__ import annotations

from typing import Any

from saga_fsm import SagaBuilder, SagaDefinition, StepContext


def noop(ctx: StepContext) -> None:
    return None


async def anoop(ctx: StepContext) -> None:
    return None


def three_step(**options: Any) -> SagaDefinition:
    """reserve (compensable) -> charge (pivot) -> notify (retriable)."""
    return (
        SagaBuilder("three")
        .step("reserve", noop, compensation=noop, **options)
        .pivot("charge", noop, **options)
        .retriable("notify", noop)
        .build()
    )

"""What ``saga-fsm worker --metrics-port/--tracing`` sets up (imports its extras late)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from saga_fsm._clock import Clock
from saga_fsm._errors import SagaError
from saga_fsm._logging import get_logger
from saga_fsm.observability._observer import NO_OBSERVER, Observer, Observers
from saga_fsm.stores._queries import SagaQueries

if TYPE_CHECKING:
    from saga_fsm.observability.metrics import SagaMetrics

log = get_logger("saga_fsm.observability")


class MissingExtra(SagaError):
    """An option needs an extra that is not installed."""


def worker_observer(
    *, metrics_port: int | None, tracing: bool, host: str = "0.0.0.0"
) -> tuple[Observer, SagaMetrics | None]:
    """The observer a worker runs with, serving ``/metrics`` on ``metrics_port``."""
    observers: list[Observer] = []
    metrics = None
    if metrics_port is not None:
        try:
            from prometheus_client import start_http_server

            from saga_fsm.observability.metrics import SagaMetrics
        except ImportError:
            raise MissingExtra(
                "--metrics-port needs prometheus-client: pip install 'saga-fsm[metrics]'"
            ) from None
        metrics = SagaMetrics()
        try:
            start_http_server(metrics_port, addr=host)
        except OSError as err:
            raise MissingExtra(f"--metrics-port {metrics_port}: {err.strerror}") from None
        observers.append(metrics)
    if tracing:
        try:
            from saga_fsm.observability.tracing import SagaTracing
        except ImportError:
            raise MissingExtra(
                "--tracing needs opentelemetry-api: pip install 'saga-fsm[otel]'"
            ) from None
        observers.append(SagaTracing())
    if not observers:
        return NO_OBSERVER, None
    return (observers[0] if len(observers) == 1 else Observers(*observers)), metrics


async def refresh_gauges(
    metrics: SagaMetrics, store: object, clock: Clock, stop: asyncio.Event, every: float
) -> None:
    """Keep the store's gauges (in flight by state, stuck) fresh until ``stop``."""
    if not isinstance(store, SagaQueries):
        return
    while not stop.is_set():
        try:
            await metrics.refresh_from_store(store, clock.now())
        except SagaError as err:
            log.warning("metrics: store counts failed (%s)", err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)

"""Watching sagas: one ``Observer`` interface the engine calls, and three uses of it.

- ``saga_fsm.observability.tracing.SagaTracing``: OpenTelemetry spans (extra ``otel``);
- ``saga_fsm.observability.metrics.SagaMetrics``: Prometheus metrics (extra ``metrics``);
- ``ParkedAlert``: a callback when a saga parks in ``failed`` (e.g. post to a chat).

Neither OpenTelemetry nor prometheus-client is imported until its module is.
"""

from saga_fsm._logging import CONTEXT_FIELDS as LOG_FIELDS
from saga_fsm._logging import HumanFormatter, JsonFormatter, SagaContext
from saga_fsm.observability._observer import NO_OBSERVER, Observer, Observers, ParkedAlert

__all__ = [
    "HumanFormatter",
    "JsonFormatter",
    "LOG_FIELDS",
    "NO_OBSERVER",
    "Observer",
    "Observers",
    "ParkedAlert",
    "SagaContext",
]

"""Log records that say which saga they are about.

Every record of saga_fsm's loggers carries ``saga_id``, ``definition``, ``step``,
``attempt``, ``correlation_id`` and ``trace_id`` (None outside a saga), taken from a
context variable the orchestrator sets while it drives a saga: each saga runs in its
own task, so concurrent sagas never mix them up. Applications format them as they
like; the CLI's handler prints them (``human``) or writes one JSON object per line
(``json``).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("saga_id", "definition", "step", "attempt", "correlation_id", "trace_id")
_NOTHING: tuple[Any, ...] = (None,) * len(CONTEXT_FIELDS)
# CONTEXT_FIELDS' values for the saga this task is driving.
_CURRENT: ContextVar[tuple[Any, ...]] = ContextVar("saga_fsm_log_context", default=_NOTHING)


class SagaContext(logging.Filter):
    """Adds the current saga's id, definition, step, attempt, correlation id and trace
    id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in zip(CONTEXT_FIELDS, _CURRENT.get(), strict=True):
            if not hasattr(record, name):  # an explicit extra= wins
                setattr(record, name, value)
        return True


_FILTER = SagaContext()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the saga context on each of its records (a
    logger's filters do not see records its children propagate, so each gets one)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


def bind_saga(
    saga_id: str,
    correlation_id: str | None,
    *,
    definition: str | None = None,
    traceparent: str | None = None,
) -> Any:
    """Log as saga ``saga_id`` in this task from now on; returns the token to reset."""
    return _CURRENT.set((saga_id, definition, None, None, correlation_id, trace_id_of(traceparent)))


def bind_step(step: str | None, attempt: int | None = None) -> None:
    saga_id, definition, _, _, correlation_id, trace_id = _CURRENT.get()
    _CURRENT.set((saga_id, definition, step, attempt, correlation_id, trace_id))


def unbind(token: Any) -> None:
    _CURRENT.reset(token)


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message [saga=… step=… attempt=… correlation=… trace=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{label}={value}"
            for label, value in (
                ("saga", getattr(record, "saga_id", None)),
                ("step", getattr(record, "step", None)),
                ("attempt", getattr(record, "attempt", None)),
                ("correlation", getattr(record, "correlation_id", None)),
                ("trace", getattr(record, "trace_id", None)),
            )
            if value is not None
        )
        return f"{text} [{context}]" if context else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the saga context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(*, verbose: bool, log_format: str) -> None:
    """The CLI's logging: one handler on stderr, human or JSON lines; saga_fsm's own
    records at INFO (DEBUG with ``verbose``: each claim and step), others at WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("saga_fsm").setLevel(logging.DEBUG if verbose else logging.INFO)

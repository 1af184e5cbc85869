"""The Grafana dashboard shipped with saga_fsm queries only metrics that exist."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from typing import Any

from prometheus_client import CollectorRegistry

from saga_fsm.observability.metrics import METRIC_NAMES, SagaMetrics

_METRIC = re.compile(r"\bsaga_fsm_[a-z_]+\b")


def dashboard() -> dict[str, Any]:
    text = files("saga_fsm.observability").joinpath("grafana-dashboard.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def queries(value: Any) -> list[str]:
    """Every PromQL text in the dashboard (panel targets and template variables)."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("expr", "query") and isinstance(v, str)]
        return found + [q for v in value.values() for q in queries(v)]
    if isinstance(value, list):
        return [q for v in value for q in queries(v)]
    return []


def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    registry = CollectorRegistry()
    SagaMetrics(registry)
    exposed = {sample.name for family in registry.collect() for sample in family.samples}
    for family in registry.collect():  # families with labels have no sample yet
        exposed.add(family.name)
        if family.type == "histogram":
            exposed |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    exposed |= {f"{name}_total" for name in exposed}
    used = {m for q in queries(dashboard()) for m in _METRIC.findall(q)}
    assert used, "the dashboard queries nothing"
    assert used <= exposed, sorted(used - exposed)


def test_the_dashboard_shows_every_metric() -> None:
    used = {m for q in queries(dashboard()) for m in _METRIC.findall(q)}
    shown = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    assert set(METRIC_NAMES) <= shown, sorted(set(METRIC_NAMES) - shown)

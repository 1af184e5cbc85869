"""Helpers for the diagram tests: read DOT back, check images, build sagas."""

from __future__ import annotations

import re
import struct
from typing import Any

from saga_fsm import RetryPolicy, SagaBuilder, SagaDefinition, StepContext, StepFailed

_EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)" \[(.*)\];$')
_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\]\s]+)')
_NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[(.*)\];$')
FAST = RetryPolicy(max_attempts=3, initial_interval=0.001, max_interval=0.002)


def _attrs(text: str) -> dict[str, str]:
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTR.findall(text)}


def edges(dot: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every visible edge as (source, dest, attrs), undoing ``dir=back`` reversal."""
    found = []
    for line in dot.splitlines():
        match = _EDGE.match(line)
        if not match:
            continue
        tail, head, attrs = match.group(1), match.group(2), _attrs(match.group(3))
        if attrs.get("style") == "invis":
            continue
        if attrs.get("dir") == "back":
            tail, head = head, tail
        found.append((tail, head, attrs))
    return found


def edge(dot: str, source: str, dest: str) -> dict[str, str]:
    matches = [a for s, d, a in edges(dot) if (s, d) == (source, dest)]
    assert len(matches) == 1, f"{len(matches)} edges {source} -> {dest}"
    return matches[0]


def node(dot: str, node_id: str) -> dict[str, str]:
    for line in dot.splitlines():
        match = _NODE.match(line)
        if match and match.group(1) == node_id:
            return _attrs(match.group(2))
    raise AssertionError(f"no node {node_id!r}")


def label_lines(attrs: dict[str, str]) -> list[str]:
    return [line for line in attrs.get("label", "").split("\\l") if line]


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def ten_steps() -> SagaDefinition:
    """Seven compensable steps, the pivot, two retriable steps."""
    builder = SagaBuilder("ten_steps")
    for n in range(1, 8):
        builder.step(f"step_{n}", _ok, compensation=_ok)
    builder.pivot("step_8", _ok)
    return builder.retriable("step_9", _ok).retriable("step_10", _ok).build()


def _ok(ctx: StepContext) -> None:
    return None


class Script:
    """Actions that fail on cue: ``plan[step]`` is a list of outcomes, one per attempt
    (``"ok"``, ``"transient"``, ``"permanent"``); missing means ok."""

    def __init__(self, plan: dict[str, list[str]] | None = None) -> None:
        self.plan = plan or {}

    def __call__(self, ctx: StepContext) -> Any:
        key = f"{ctx.step}:undo" if ctx.compensating else ctx.step
        outcomes = self.plan.get(key, [])
        outcome = outcomes[ctx.attempt - 1] if ctx.attempt <= len(outcomes) else "ok"
        if outcome == "transient":
            raise ConnectionError(f"{key} blip")
        if outcome == "permanent":
            raise StepFailed(f"{key} refused", retryable=False)
        return None


def order_saga(script: Script) -> SagaDefinition:
    """reserve, charge (compensable) -> ship (pivot) -> notify (retriable)."""
    return (
        SagaBuilder("order")
        .step("reserve", script, compensation=script, retry=FAST, compensation_retry=FAST)
        .step("charge", script, compensation=script, retry=FAST, compensation_retry=FAST)
        .pivot("ship", script, retry=FAST)
        .retriable("notify", script, retry=RetryPolicy(max_attempts=None, initial_interval=0.001))
        .build()
    )

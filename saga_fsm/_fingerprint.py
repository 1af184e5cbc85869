"""The fingerprint of a compiled saga table: what an instance is pinned to.

It covers what an instance's snapshot depends on: the states, the transitions (trigger,
source, destination) and each step's name, kind, whether it is compensable or read-only
and its class (a step type of its own is a different table), and for a wait its events,
what they and its timeout do, and the field that skips it. It leaves out what may
change under a running instance without stranding it: source text, the identity of
actions and compensations, descriptions, retry policies and timeouts, and the engine's
own names for guards and effects (an upgrade of saga_fsm that renames one must not
strand every instance in flight). Pure: sha256 of a canonical JSON text, the same in
every process and Python run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from saga_fsm._definition import SagaDefinition, Step, WaitFor
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._groups import StepGroup
from saga_fsm._snapshot import SagaStatus

FINGERPRINT_FORMAT = 1
"""Part of the hashed text: a change to what is hashed is a new format, never a silent
change of every fingerprint."""


def _edges(compiled: CompiledSaga) -> set[tuple[str, str, str]]:
    return {(row.trigger, row.source, row.dest or row.source) for row in compiled.rows}


def table_of(
    compiled: CompiledSaga, edges: set[tuple[str, str, str]] | None = None
) -> dict[str, Any]:
    """The canonical description the fingerprint hashes (JSON values only)."""
    transitions = sorted(_edges(compiled) if edges is None else edges)
    return {
        "format": FINGERPRINT_FORMAT,
        "states": sorted(compiled.states),
        "steps": [
            {
                "name": step.name,
                "kind": step.kind.value,
                "compensable": step.compensable,
                "read_only": step.read_only,
                "type": type(step).__name__,
                # Only when set, so the tables of local steps keep the fingerprints
                # they had before remote and transactional steps existed.
                **({"remote": True} if step.command or step.compensation_command else {}),
                **({"transactional": True} if step.transactional else {}),
                # A parallel group: its branches, their steps and its join.
                **(step.table() if isinstance(step, StepGroup) else {}),
                **_wait_table(step),
            }
            for step in compiled.definition.steps
        ],
        "transitions": [list(t) for t in transitions],
    }


def _wait_table(step: Step) -> dict[str, Any]:
    """What a wait waits for is part of its table: a saga waiting for ``approved``
    must not be handed to a table that waits for ``ok``."""
    if not isinstance(step, WaitFor):
        return {}
    return {"events": dict(step.events), "on_timeout": str(step.on_timeout), "when": step.when}


def _hash(table: dict[str, Any]) -> str:
    text = json.dumps(table, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@functools.cache
def fingerprint(compiled: CompiledSaga) -> str:
    """The compiled table's fingerprint: 64 hex digits (computed once per table)."""
    return _hash(table_of(compiled))


def _before_the_pivot_parked(compiled: CompiledSaga) -> set[tuple[str, str, str]] | None:
    """The edges this table had before a pivot that may have acted parked the saga
    (it compensated the earlier steps then, and a cancel between its attempts did too),
    or None when that did not change it."""
    edges = _edges(compiled)
    failed = SagaStatus.FAILED.value
    for step in compiled.definition.steps:
        here = f"{SagaStatus.RUNNING.value}:{step.name}"
        parks = {(t, here, failed) for t in ("step_failed", "step_timed_out")}
        if not parks <= edges:
            continue
        (undo,) = {d for t, s, d in edges if (t, s) == ("step_failed", here) and d != here} - {
            failed
        }
        return (edges - parks - {("retry", failed, here)}) | {
            ("step_timed_out", here, undo),
            ("cancel", here, undo),
        }
    return None


@functools.cache
def accepted(compiled: CompiledSaga) -> tuple[str, ...]:
    """The fingerprints a saga may be pinned to and run on this table: its own, and the
    one the same definition had before a pivot that may have acted parked the saga. That
    table had the same states and no snapshot this one cannot continue, so an upgrade
    of saga_fsm does not strand the sagas in flight."""
    older = _before_the_pivot_parked(compiled)
    if older is None:
        return (fingerprint(compiled),)
    return (fingerprint(compiled), _hash(table_of(compiled, older)))


def definition_fingerprint(definition: SagaDefinition) -> str:
    """The fingerprint of ``definition``'s compiled table: what its new sagas are pinned
    to, and what a lock file records for its (name, version)."""
    return fingerprint(compile_saga(definition))


def short(value: str | None) -> str:
    """A fingerprint as an operator reads it: its first 12 digits ("none" when absent)."""
    return "none" if value is None else value[:12]

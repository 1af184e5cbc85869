"""The fingerprint of a compiled saga table: what an instance is pinned to.

It covers what an instance's snapshot depends on: the states, the transitions (trigger,
source, destination) and each step's name, kind, whether it is compensable or read-only
and its class (a step type of its own is a different table). It leaves out what may
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

from saga_fsm._definition import SagaDefinition
from saga_fsm._flow import CompiledSaga, compile_saga

FINGERPRINT_FORMAT = 1
"""Part of the hashed text: a change to what is hashed is a new format, never a silent
change of every fingerprint."""


def table_of(compiled: CompiledSaga) -> dict[str, Any]:
    """The canonical description the fingerprint hashes (JSON values only)."""
    transitions = sorted(
        {(row.trigger, row.source, row.dest or row.source) for row in compiled.rows}
    )
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
            }
            for step in compiled.definition.steps
        ],
        "transitions": [list(t) for t in transitions],
    }


@functools.cache
def fingerprint(compiled: CompiledSaga) -> str:
    """The compiled table's fingerprint: 64 hex digits (computed once per table)."""
    text = json.dumps(table_of(compiled), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def definition_fingerprint(definition: SagaDefinition) -> str:
    """The fingerprint of ``definition``'s compiled table: what its new sagas are pinned
    to, and what a lock file records for its (name, version)."""
    return fingerprint(compile_saga(definition))


def short(value: str | None) -> str:
    """A fingerprint as an operator reads it: its first 12 digits ("none" when absent)."""
    return "none" if value is None else value[:12]

"""Lay one instance's stored history over its definition's flow: the states it visited,
the edges it took numbered in order, retries counted on their loop, and where it is now.

Each history row is checked against the Machine: a row the flow has no transition for
(a history from another definition or version) is refused rather than drawn wrongly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from transitions import Machine

from saga_fsm._snapshot import HistoryEntry
from saga_fsm.diagrams._branches import branch_marks
from saga_fsm.diagrams._errors import DiagramError
from saga_fsm.diagrams._machine import MachineTransition, read_transitions, shown_effects
from saga_fsm.diagrams._scene import TIMES, Mark, Scene

# A loop row whose transition only re-runs the step is the wake-up half of a retry the
# previous row already counted.
_RERUN_EFFECTS = frozenset({"run_step", "run_compensation"})


def _matching(
    transitions: Sequence[MachineTransition], entry: HistoryEntry
) -> list[MachineTransition]:
    return [
        t
        for t in transitions
        if t.trigger == entry.trigger and t.source == entry.from_state and t.dest == entry.to_state
    ]


def _loop_text(entries: Sequence[HistoryEntry], transitions: Sequence[MachineTransition]) -> str:
    retries = 0
    others: Counter[str] = Counter()
    for entry in entries:
        matches = _matching(transitions, entry)
        if any("retry" in shown_effects(t.effects) for t in matches):
            retries += 1
        elif not all(set(t.effects) <= _RERUN_EFFECTS for t in matches):
            others[entry.trigger] += 1
    parts = [f"{TIMES}{retries}"] if retries else []
    parts += [name if n == 1 else f"{name} {TIMES}{n}" for name, n in others.items()]
    return ", ".join(parts) or f"{TIMES}{len(entries)}"


def overlay(
    scene: Scene,
    machine: Machine,
    history: Sequence[HistoryEntry],
    *,
    current: str | None,
    title: str,
) -> Scene:
    """``scene`` with the path of ``history`` marked. ``current`` defaults to where the
    history ends (or the initial state when there is none)."""
    transitions = read_transitions(machine)
    states = set(machine.states)
    for n, entry in enumerate(history, 1):
        if not _matching(transitions, entry):
            raise DiagramError(
                f"history row {n} ({entry.from_state} -> {entry.to_state} on {entry.trigger!r})"
                f" is not a transition of {scene.title}"
            )
    here = current or (history[-1].to_state if history else machine.initial)
    if here not in states:
        raise DiagramError(f"state {here!r} is not a state of {scene.title}")
    nodes = {s: Mark.VISITED for e in history for s in (e.from_state, e.to_state)}
    nodes[here] = Mark.CURRENT
    steps: dict[tuple[str, str], list[str]] = {}
    loops: dict[tuple[str, str], list[HistoryEntry]] = {}
    taken = 0
    for entry in history:
        key = (entry.from_state, entry.to_state)
        if entry.from_state == entry.to_state:
            loops.setdefault(key, []).append(entry)
        else:
            taken += 1
            steps.setdefault(key, []).append(f"#{taken}")
    edges = {key: (Mark.VISITED, ", ".join(order)) for key, order in steps.items()}
    edges.update(
        {key: (Mark.VISITED, _loop_text(entries, transitions)) for key, entries in loops.items()}
    )
    if scene.clusters:
        # Each branch of a parallel group: its own path, from the moves history recorded.
        branch_nodes, branch_edges = branch_marks(scene.clusters, history)
        nodes.update(branch_nodes)
        edges.update(branch_edges)
    return scene.with_marks(nodes, edges, title)

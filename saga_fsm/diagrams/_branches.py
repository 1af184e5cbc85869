"""Parallel groups in a diagram: beside the group's state, one box per branch, side by
side, each the branch's own flow read from its compiled Machine (its steps down, their
compensations beside them back up, ``joined`` at the bottom). An instance diagram marks
each branch's own path, read from the ``branches`` its history rows record."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from attrs import frozen

from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._groups import JOIN, ForEach, Parallel, StepGroup, branch_definition
from saga_fsm._snapshot import HistoryEntry, SagaStatus
from saga_fsm.diagrams._scene import EdgeKind, Mark, Role, SceneEdge, SceneNode

_RUN, _UNDO = SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value
_AT_JOIN = f"{_RUN}:{JOIN}"


@frozen
class SceneBranch:
    """One branch of a group: its nodes and edges (ids prefixed ``group/branch/``)."""

    id: str
    label: str
    nodes: tuple[SceneNode, ...]
    edges: tuple[SceneEdge, ...]
    chain: tuple[str, ...]
    """Its forward path, top to bottom (the only edges that set ranks inside it)."""


@frozen
class SceneCluster:
    """A parallel group, drawn beside ``attach`` (its ``running:<group>`` state)."""

    id: str
    label: str
    attach: str
    branches: tuple[SceneBranch, ...]


def _group_label(group: StepGroup) -> str:
    if isinstance(group, ForEach):
        head = f"{group.name}: for each item of data[{group.items!r}]"
    else:
        join = group.join if isinstance(group, Parallel) else "all"
        head = f"{group.name}: parallel, join {join}"
    if group.max_concurrency is not None:
        head += f", at most {group.max_concurrency} at once"
    return head


def _branch(group: StepGroup, key: str, label: str) -> SceneBranch:
    compiled: CompiledSaga = compile_saga(branch_definition(group, key))
    prefix = f"{group.name}/{key}/"
    steps = [s for s in compiled.definition.steps if s.name != JOIN]
    nodes = [
        *(SceneNode(prefix + f"{_RUN}:{s.name}", s.name, Role.STEP) for s in steps),
        SceneNode(prefix + _AT_JOIN, "joined", Role.SUCCEEDED),
        *(
            SceneNode(prefix + f"{_UNDO}:{s.name}", f"undo {s.name}", Role.COMPENSATING)
            for s in steps
            if s.compensable
        ),
        SceneNode(prefix + "compensated", "undone", Role.COMPENSATED),
    ]
    known = {n.id for n in nodes}
    edges: list[SceneEdge] = []
    seen: set[tuple[str, str]] = set()
    for row in compiled.rows:
        if row.dest is None or row.dest == row.source:
            continue
        source, dest = prefix + row.source, prefix + row.dest
        if source not in known or dest not in known or (source, dest) in seen:
            continue
        seen.add((source, dest))
        if row.source.startswith(_RUN) and row.dest.startswith(_RUN):
            kind = EdgeKind.FORWARD
        elif row.source.startswith(_UNDO) or row.source == _AT_JOIN:
            kind = EdgeKind.COMPENSATION
        else:
            kind = EdgeKind.FAILURE
        edges.append(SceneEdge(source, dest, "", kind))
    chain = (*(prefix + f"{_RUN}:{s.name}" for s in steps), prefix + _AT_JOIN)
    return SceneBranch(prefix.rstrip("/"), label, tuple(nodes), tuple(edges), chain)


def group_clusters(compiled: CompiledSaga) -> tuple[SceneCluster, ...]:
    """A cluster for each parallel group of the flow (none for a flow without)."""
    clusters = []
    for step in compiled.definition.steps:
        if not isinstance(step, StepGroup):
            continue
        branches: tuple[SceneBranch, ...]
        if isinstance(step, ForEach):
            branches = (_branch(step, "*", "each item"),)
        else:
            branches = tuple(_branch(step, key, key) for key in step.branch_keys())
        clusters.append(
            SceneCluster(step.name, _group_label(step), f"{_RUN}:{step.name}", branches)
        )
    return tuple(clusters)


def branch_marks(
    clusters: Sequence[SceneCluster], history: Iterable[HistoryEntry]
) -> tuple[dict[str, Mark], dict[tuple[str, str], tuple[Mark, str]]]:
    """Each branch's path from the ``branches`` recorded in ``history``: the states it
    visited (where it is now marked current), the edges it took, numbered per branch.
    A ``ForEach``'s branches share its one drawn template."""
    groups = {c.id: c for c in clusters}
    nodes: dict[str, Mark] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    last: dict[str, str] = {}
    moves: dict[str, int] = {}
    for entry in history:
        moved = entry.detail.get("branches")
        if not isinstance(moved, list):
            continue
        # The group entered (its branches started) or the one the saga was at.
        names = (entry.to_state.partition(":")[2], entry.from_state.partition(":")[2])
        group = next((name for name in names if name in groups), "")
        cluster = groups.get(group)
        if cluster is None:
            continue
        for note in moved:
            if not isinstance(note, Mapping):
                continue
            key = str(note.get("branch"))
            drawn = "*" if cluster.branches and cluster.branches[0].id.endswith("/*") else key
            prefix = f"{group}/{drawn}/"
            source, dest = prefix + str(note.get("from")), prefix + str(note.get("to"))
            nodes.setdefault(source, Mark.VISITED)
            nodes[dest] = Mark.VISITED
            last[f"{group}/{key}"] = dest
            moves[f"{group}/{key}"] = moves.get(f"{group}/{key}", 0) + 1
            if source != dest:
                tag = (
                    f"{key}#{moves[f'{group}/{key}']}"
                    if drawn == "*"
                    else f"#{moves[f'{group}/{key}']}"
                )
                edges.setdefault((source, dest), []).append(tag)
    for here in last.values():
        nodes[here] = (
            Mark.CURRENT if not here.endswith(("/compensated", _AT_JOIN)) else Mark.VISITED
        )
    return nodes, {k: (Mark.VISITED, ", ".join(v)) for k, v in edges.items()}


def branch_nodes(clusters: Sequence[SceneCluster]) -> Mapping[str, SceneNode]:
    return {n.id: n for c in clusters for b in c.branches for n in b.nodes}

"""What a diagram shows, independent of the output language: nodes with a role, edges
with a kind, which nodes share a rank, and what an instance's path highlights. DOT and
Mermaid are both written from a Scene, so they cannot disagree."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from attrs import evolve, frozen


class Role(StrEnum):
    """What a state is for; picks its shape and colour."""

    INITIAL = "initial"
    STEP = "step"
    PIVOT = "pivot"
    RETRIABLE = "retriable"
    SUCCEEDED = "succeeded"
    ERROR = "error"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    SKIPPED = "skipped"


class EdgeKind(StrEnum):
    """What a transition does to the saga; picks its colour and line style."""

    FORWARD = "forward"
    LOOP = "loop"
    FAILURE = "failure"
    COMPENSATION = "compensation"
    PARK = "park"
    RESUME = "resume"


class Mark(StrEnum):
    """How an instance's path marks a node or an edge."""

    VISITED = "visited"
    CURRENT = "current"
    UNVISITED = "unvisited"


TIMES = "\u00d7"
"""The multiplication sign of retry counts (``\u00d73``)."""
TERMINAL_ROLES = frozenset({Role.COMPLETED, Role.COMPENSATED, Role.FAILED, Role.SKIPPED})
_ERRORS = frozenset({Role.ERROR})
_UNDOING = frozenset({Role.COMPENSATING, Role.COMPENSATED})
_AHEAD = frozenset({Role.INITIAL, Role.STEP, Role.PIVOT, Role.RETRIABLE})


def edge_kind(source: Role, dest: Role, *, loop: bool) -> EdgeKind:
    """Classify a transition by the roles it connects (never by trigger names, so the
    rule holds for flows and both lifecycles alike)."""
    if loop:
        return EdgeKind.LOOP
    if dest is Role.FAILED:
        return EdgeKind.PARK
    if source in (Role.FAILED, Role.ERROR):
        return EdgeKind.RESUME
    if dest in _ERRORS or (source in _AHEAD and dest in _UNDOING):
        return EdgeKind.FAILURE
    if dest in _UNDOING:
        return EdgeKind.COMPENSATION
    return EdgeKind.FORWARD


@frozen
class SceneNode:
    id: str
    label: str
    role: Role
    note: str = ""
    """A second line under the label (``pivot``, ``current``)."""
    mark: Mark | None = None


@frozen
class SceneEdge:
    source: str
    dest: str
    label: str
    kind: EdgeKind
    mark: Mark | None = None
    order: str = ""
    """Where an instance's path took this edge: ``#1``, ``#3, #7``, or a count for loops."""


@frozen
class Scene:
    name: str
    title: str
    nodes: tuple[SceneNode, ...]
    edges: tuple[SceneEdge, ...]
    ranks: tuple[tuple[str, ...], ...] = ()
    """Nodes drawn side by side, left to right (the forward column first)."""
    chain: tuple[str, ...] = ()
    """The forward path, top to bottom: the only edges that set ranks."""
    initial: str | None = None
    clusters: tuple[Any, ...] = ()
    """Parallel groups' branches, drawn side by side beside their group's state
    (``saga_fsm.diagrams._branches.SceneCluster``); none for a flow without groups."""

    def with_marks(
        self,
        nodes: dict[str, Mark],
        edges: dict[tuple[str, str], tuple[Mark, str]],
        title: str,
    ) -> Scene:
        """The same scene with an instance's path laid over it; anything not on the path
        is marked unvisited (drawn faded)."""
        return evolve(
            self,
            title=title,
            nodes=tuple(
                evolve(
                    n,
                    mark=nodes.get(n.id, Mark.UNVISITED),
                    note=_join(n.note, "current" if nodes.get(n.id) is Mark.CURRENT else ""),
                )
                for n in self.nodes
            ),
            edges=tuple(
                evolve(
                    e,
                    mark=edges.get((e.source, e.dest), (Mark.UNVISITED, ""))[0],
                    order=edges.get((e.source, e.dest), (Mark.UNVISITED, ""))[1],
                )
                for e in self.edges
            ),
            clusters=tuple(_marked_cluster(c, nodes, edges) for c in self.clusters),
        )


def _marked_cluster(
    cluster: Any, nodes: dict[str, Mark], edges: dict[tuple[str, str], tuple[Mark, str]]
) -> Any:
    return evolve(
        cluster,
        branches=tuple(
            evolve(
                b,
                nodes=tuple(
                    evolve(
                        n,
                        mark=nodes.get(n.id, Mark.UNVISITED),
                        note=_join(n.note, "now" if nodes.get(n.id) is Mark.CURRENT else ""),
                    )
                    for n in b.nodes
                ),
                edges=tuple(
                    evolve(
                        e,
                        mark=edges.get((e.source, e.dest), (Mark.UNVISITED, ""))[0],
                        order=edges.get((e.source, e.dest), (Mark.UNVISITED, ""))[1],
                    )
                    for e in b.edges
                ),
            )
            for b in cluster.branches
        ),
    )


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)

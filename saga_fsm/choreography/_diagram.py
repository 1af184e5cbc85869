"""Choreography diagrams through saga_fsm.diagrams' scene and renderers: states, the
events that move between them (with the participant that publishes each and the time an
expected one is awaited), and one instance's path with where it is stuck."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import evolve

from saga_fsm._errors import InvalidReference
from saga_fsm._loading import _FILE_SUFFIXES, _parse, resolve_reference
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.choreography._definition import (
    COMPENSATED,
    COMPLETED,
    PENDING,
    Choreography,
    compensating_state,
    forward_state,
)
from saga_fsm.choreography._loading import load_choreography
from saga_fsm.choreography._track import machine, rows
from saga_fsm.diagrams import Diagram, DiagramError, InstanceDiagram
from saga_fsm.diagrams._instance import overlay
from saga_fsm.diagrams._scene import Role, Scene, SceneEdge, SceneNode, edge_kind
from saga_fsm.stores import SnapshotStore

_ROLES = {
    PENDING: Role.INITIAL,
    "running": Role.STEP,
    "compensating": Role.COMPENSATING,
    COMPLETED: Role.COMPLETED,
    COMPENSATED: Role.COMPENSATED,
}


def _role(state: str) -> Role:
    return _ROLES[state.partition(":")[0]]


def _label(c: Choreography, event: str) -> str:
    expectation = c.expectation(event)
    timer = f" \u2264{expectation.within:g}s" if expectation else ""
    return f"{event} ({c.event(event).publisher}){timer}"


def choreography_scene(c: Choreography) -> Scene:
    m = machine(c)
    labels: dict[tuple[str, str], list[str]] = {}
    for row in rows(c):
        if row.dest is not None and _label(c, row.trigger) not in labels.get(
            (row.source, row.dest), []
        ):
            labels.setdefault((row.source, row.dest), []).append(_label(c, row.trigger))
    edges = tuple(
        SceneEdge(
            source,
            dest,
            "\n".join(text),
            edge_kind(_role(source), _role(dest), loop=source == dest),
        )
        for (source, dest), text in labels.items()
    )
    following = {m.state: m.to for m in c.moves}
    chain = [PENDING]
    while chain[-1] in following and following[chain[-1]] not in chain:
        chain.append(following[chain[-1]])
    beside: dict[str, list[str]] = {PENDING: [PENDING, COMPENSATED]}
    for failure in c.failures:
        pair = beside.setdefault(failure.state, [forward_state(failure.state)])
        pair.append(compensating_state(failure.event) if failure.compensations else COMPENSATED)
    return Scene(
        name=c.name,
        ranks=tuple(tuple(dict.fromkeys(r)) for r in beside.values()),
        title=f"{c.name} v{c.version} (choreography)",
        nodes=tuple(SceneNode(s, s, _role(s)) for s in m.states),
        edges=edges,
        chain=tuple(forward_state(s) for s in chain),
        initial=PENDING,
    )


def choreography_diagram(c: Choreography) -> Diagram:
    return Diagram(choreography_scene(c))


def tracked_diagram(
    c: Choreography, snapshot: Snapshot, history: Sequence[HistoryEntry]
) -> InstanceDiagram:
    """The path one tracked instance took; a stuck one says which event it waits for."""
    if (snapshot.definition, snapshot.definition_version) != (c.name, c.version):
        raise DiagramError(
            f"saga {snapshot.saga_id} is a {snapshot.definition} v{snapshot.definition_version}"
            f" instance, not {c.name} v{c.version}"
        )
    moves = [h for h in history if h.trigger in machine(c).events]  # not anomalies, not stuck
    title = f"{c.name} v{c.version}, instance {snapshot.saga_id}: {snapshot.state}"
    stuck = snapshot.data.get("stuck")
    scene = overlay(choreography_scene(c), machine(c), moves, current=snapshot.state, title=title)
    if stuck:
        scene = evolve(
            scene,
            title=f"{title}, stuck waiting for {stuck}",
            nodes=tuple(
                evolve(n, note=f"stuck: no {stuck}") if n.id == snapshot.state else n
                for n in scene.nodes
            ),
        )
    return InstanceDiagram(
        scene, saga_id=snapshot.saga_id, state=snapshot.state, history=tuple(history)
    )


async def load_tracked_diagram(
    store: SnapshotStore, saga_id: str, c: Choreography
) -> InstanceDiagram:
    snapshot = await store.load(saga_id)
    return tracked_diagram(c, snapshot, await store.history(saga_id))


def choreography_at(ref: str) -> Choreography | None:
    """The choreography ``ref`` names, or None when it names something else (a saga)."""
    if ref.lower().endswith(_FILE_SUFFIXES):
        try:
            with open(ref, encoding="utf-8") as file:
                raw = _parse(ref[ref.rfind(".") :].lower(), file.read())
        except (OSError, ValueError):
            return None  # the saga loader says what is wrong with it
        return load_choreography(ref) if isinstance(raw, dict) and "moves" in raw else None
    if ":" not in ref:
        return None
    try:
        value = resolve_reference(ref)
    except InvalidReference:
        return None
    return value if isinstance(value, Choreography) else None

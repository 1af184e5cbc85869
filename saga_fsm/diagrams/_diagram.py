"""The public face: a Diagram knows its scene and writes it as DOT, Mermaid, SVG or PNG,
and shows itself inline in Jupyter."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs
from attrs import frozen

from saga_fsm._child import ChildSaga
from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import SnapshotDecodeError
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._snapshot import HistoryEntry, SagaStatus, Snapshot
from saga_fsm.diagrams._build import Lifecycle, flow_scene, lifecycle_scene
from saga_fsm.diagrams._dot import to_dot
from saga_fsm.diagrams._errors import DiagramError, RendererNotFound
from saga_fsm.diagrams._instance import overlay
from saga_fsm.diagrams._mermaid import to_mermaid
from saga_fsm.diagrams._render import ImageFormat, Renderer, find_renderer
from saga_fsm.diagrams._scene import Scene
from saga_fsm.stores import SnapshotStore

Format = Literal["png", "svg", "dot", "mermaid"]
FORMATS: tuple[Format, ...] = ("png", "svg", "dot", "mermaid")
_SUFFIXES: dict[str, Format] = {
    ".png": "png",
    ".svg": "svg",
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
}


def format_for_path(path: str | os.PathLike[str]) -> Format:
    """The format a file name asks for, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DiagramError(
            f"cannot tell the format from {str(path)!r}: use a suffix among"
            f" {', '.join(_SUFFIXES)} or give the format"
        )
    return _SUFFIXES[suffix]


def _checked_format(fmt: str) -> Format:
    for known in FORMATS:
        if fmt == known:
            return known
    raise DiagramError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


@frozen(eq=False)
class Diagram:
    """A state diagram drawn from a transitions Machine: a definition's flow or a
    generic lifecycle. Text formats need nothing; images need a renderer (Graphviz
    ``dot`` or ``graphviz-pure``)."""

    scene: Scene

    @property
    def name(self) -> str:
        return self.scene.name

    def to_dot(self) -> str:
        return to_dot(self.scene)

    def to_mermaid(self) -> str:
        return to_mermaid(self.scene)

    def render(self, fmt: str = "svg", *, renderer: Renderer | None = None) -> bytes:
        """The diagram in ``fmt`` (png, svg, dot or mermaid) as bytes."""
        fmt = _checked_format(fmt)
        if fmt == "dot":
            return self.to_dot().encode()
        if fmt == "mermaid":
            return self.to_mermaid().encode()
        image: ImageFormat = fmt
        return (renderer or find_renderer()).render(self.to_dot(), image)

    def save(
        self,
        path: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        renderer: Renderer | None = None,
    ) -> Path:
        """Write the diagram to ``path`` (format from its suffix unless given). Nothing is
        written unless rendering succeeded and the output is of the asked format."""
        target = Path(path)
        data = self.render(fmt or format_for_path(target), renderer=renderer)
        target.write_bytes(data)
        return target

    def _repr_svg_(self) -> str | None:
        """Inline display in Jupyter; without a renderer, warn and fall back to text."""
        try:
            svg = self.render("svg").decode()
        except RendererNotFound as err:
            warnings.warn(str(err), stacklevel=2)
            return None
        return svg[svg.index("<svg") :]


@frozen(eq=False)
class InstanceDiagram(Diagram):
    """A definition's flow with the path one saga instance took laid over it."""

    saga_id: str | None = None
    state: str | None = None
    history: tuple[HistoryEntry, ...] = ()
    children: tuple[InstanceDiagram, ...] = ()
    """The instance diagrams of the child sagas it started (``ChildSaga``), each named
    on the step that started it."""


def definition_diagram(definition: SagaDefinition | CompiledSaga) -> Diagram:
    """The definition's compiled flow, read from the Machine the engine runs."""
    return Diagram(flow_scene(definition))


def lifecycle_diagram(which: Lifecycle) -> Diagram:
    """The generic ``saga`` or ``step`` lifecycle Machine."""
    return Diagram(lifecycle_scene(which))


def instance_diagram(
    definition: SagaDefinition | CompiledSaga,
    history: Sequence[HistoryEntry],
    *,
    saga_id: str | None = None,
    state: str | None = None,
) -> InstanceDiagram:
    """The flow with the path of ``history`` (as ``store.history(saga_id)`` returns it)
    highlighted; ``state`` (default: where the history ends) is drawn as current."""
    compiled = definition if isinstance(definition, CompiledSaga) else compile_saga(definition)
    d = compiled.definition
    title = f"{d.name} v{d.version}" + (f", saga {saga_id}" if saga_id else "")
    here = state or (history[-1].to_state if history else None)
    scene = overlay(
        flow_scene(compiled),
        compiled.machine,
        history,
        current=state,
        title=f"{title}: {here}" if here else title,
    )
    return InstanceDiagram(scene, saga_id=saga_id, state=here, history=tuple(history))


def snapshot_diagram(
    definition: SagaDefinition | CompiledSaga,
    snapshot: Snapshot,
    history: Sequence[HistoryEntry],
) -> InstanceDiagram:
    """``instance_diagram`` for a loaded snapshot, refusing one of another definition."""
    compiled = definition if isinstance(definition, CompiledSaga) else compile_saga(definition)
    d = compiled.definition
    if (snapshot.definition, snapshot.definition_version) != (d.name, d.version):
        raise DiagramError(
            f"saga {snapshot.saga_id} is a {snapshot.definition} v{snapshot.definition_version}"
            f" instance, not {d.name} v{d.version}"
        )
    return instance_diagram(compiled, history, saga_id=snapshot.saga_id, state=snapshot.state)


async def load_instance_diagram(
    store: SnapshotStore, saga_id: str, definition: SagaDefinition | CompiledSaga
) -> InstanceDiagram:
    """Read one instance's snapshot and history from ``store`` and draw its path, with
    the child sagas it started: each named (id and state) on the step that started it,
    and drawn as a diagram of its own in ``children``."""
    snapshot = await store.load(saga_id)
    drawn = snapshot_diagram(definition, snapshot, await store.history(saga_id))
    compiled = definition if isinstance(definition, CompiledSaga) else compile_saga(definition)
    if not compiled.child_steps:
        return drawn
    notes: dict[str, list[str]] = {}
    children = []
    for child in await store.list(parent=saga_id):
        if isinstance(child, SnapshotDecodeError) or child.parent_step is None:
            continue
        step = compiled.definition.steps[compiled.step_index[child.parent_step]]
        assert isinstance(step, ChildSaga)
        notes.setdefault(child.parent_step, []).append(f"child {child.saga_id}: {child.state}")
        if isinstance(step.definition, SagaDefinition):
            children.append(await load_instance_diagram(store, child.saga_id, step.definition))
    nodes = tuple(
        attrs.evolve(node, note="; ".join([node.note, *notes[name]]).strip("; "))
        if (name := node.id.partition(":")[2]) in notes
        and node.id.startswith(SagaStatus.RUNNING.value)
        else node
        for node in drawn.scene.nodes
    )
    scene = attrs.evolve(drawn.scene, nodes=nodes)
    return attrs.evolve(drawn, scene=scene, children=tuple(children))

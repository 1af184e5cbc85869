"""Write a Scene as Graphviz DOT.

Every id is quoted: flow states contain ``:``, which DOT would otherwise read as a port
separator (``running:charge`` would become node ``running``, port ``charge``). Only the
forward chain constrains ranks; every other edge has ``constraint=false`` and each
rank's nodes are ordered left to right by invisible edges, so the forward path stays one
straight column and the compensations a parallel one, however many steps there are.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterable, Mapping, Sequence

from saga_fsm.diagrams._scene import (
    TERMINAL_ROLES,
    TIMES,
    EdgeKind,
    Mark,
    Role,
    Scene,
    SceneEdge,
)

FONT = "Helvetica"

NODE_STYLE: Mapping[Role, Mapping[str, str]] = {
    Role.INITIAL: {"shape": "box", "style": "rounded,filled", "fillcolor": "#eeeeee"},
    Role.STEP: {"style": "rounded,filled", "fillcolor": "#e3eefa", "color": "#1f5fbf"},
    Role.PIVOT: {
        "style": "rounded,filled,bold",
        "fillcolor": "#fff1c1",
        "color": "#b8860b",
        "penwidth": "3",
    },
    Role.RETRIABLE: {"style": "rounded,filled,dashed", "fillcolor": "#e6f4ea", "color": "#1e8449"},
    Role.SUCCEEDED: {"style": "rounded,filled", "fillcolor": "#d5f0dd", "color": "#1e8449"},
    Role.ERROR: {"style": "rounded,filled", "fillcolor": "#fde2e0", "color": "#c0392b"},
    Role.COMPENSATING: {"style": "rounded,filled", "fillcolor": "#fdebd0", "color": "#ca6f1e"},
    Role.COMPLETED: {"fillcolor": "#abebc6", "color": "#1e8449"},
    Role.COMPENSATED: {"fillcolor": "#fad7a0", "color": "#ca6f1e"},
    Role.FAILED: {"fillcolor": "#f5b7b1", "color": "#922b21"},
    Role.SKIPPED: {"fillcolor": "#eeeeee", "color": "#888888"},
}
_TERMINAL = {"shape": "box", "style": "rounded,filled,bold", "peripheries": "2"}

EDGE_STYLE: Mapping[EdgeKind, Mapping[str, str]] = {
    EdgeKind.FORWARD: {"color": "#1f5fbf", "penwidth": "1.8"},
    EdgeKind.LOOP: {"color": "#7f8c8d"},
    EdgeKind.FAILURE: {"color": "#c0392b", "style": "dashed"},
    EdgeKind.COMPENSATION: {"color": "#ca6f1e", "penwidth": "2.4"},
    EdgeKind.PARK: {"color": "#922b21", "style": "dotted", "penwidth": "1.4"},
    EdgeKind.RESUME: {"color": "#5d6d7e", "style": "dotted"},
}
LEGEND_TEXT: Mapping[EdgeKind, str] = {
    EdgeKind.FORWARD: "forward",
    EdgeKind.LOOP: "retry / wake-up (same state)",
    EdgeKind.FAILURE: "failure, timeout, cancel",
    EdgeKind.COMPENSATION: "compensation (runs backwards)",
    EdgeKind.PARK: "gave up: parked for an operator",
    EdgeKind.RESUME: "retry out of a failure",
}
SHARED_LABEL_NOTE = "an unlabelled arrow reads as its labelled twin of the same style"
TAKEN_NOTE = f"taken: #n in order, {TIMES}n retries"
_FADED_NODE = {"fillcolor": "#f7f7f7", "color": "#c8c8c8", "fontcolor": "#a0a0a0"}
_FADED_EDGE = {"color": "#d5d5d5", "fontcolor": "#b5b5b5", "penwidth": "1"}
_CURRENT_NODE = {"fillcolor": "#ffd54f", "color": "#000000", "penwidth": "3.5"}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def quote(text: str) -> str:
    """A DOT double-quoted string (ids and labels alike)."""
    return f'"{_escape(text)}"'


def _label(lines: Iterable[str]) -> str:
    """Left-justified multi-line label: each line ends with DOT's ``\\l``."""
    return '"' + "".join(f"{_escape(line)}\\l" for line in lines) + '"'


def _centred(lines: Iterable[str]) -> str:
    """Centred multi-line label (DOT's ``\\n`` between lines)."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def _attrs(attrs: Mapping[str, str], **raw: str) -> str:
    parts = [f"{key}={quote(value)}" for key, value in attrs.items()]
    parts += [f"{key}={value}" for key, value in raw.items()]
    return "[" + ", ".join(parts) + "]"


def _node_attrs(role: Role, mark: Mark | None) -> dict[str, str]:
    attrs = dict(_TERMINAL) if role in TERMINAL_ROLES else {"shape": "box"}
    attrs.update(NODE_STYLE[role])
    if mark is Mark.UNVISITED:
        attrs.update(_FADED_NODE)
        attrs["penwidth"] = "1"
    elif mark is Mark.CURRENT:
        attrs.update(_CURRENT_NODE)
    elif mark is Mark.VISITED:
        attrs["penwidth"] = str(max(2.5, float(attrs.get("penwidth", "1"))))
    return attrs


def _edge_attrs(edge: SceneEdge, scene: Scene, chain: set[tuple[str, str]]) -> dict[str, str]:
    attrs = dict(EDGE_STYLE[edge.kind])
    attrs["fontcolor"] = attrs["color"]
    if scene.chain and (edge.source, edge.dest) not in chain:
        attrs["constraint"] = "false"
    if edge.mark is Mark.UNVISITED:
        attrs.update(_FADED_EDGE)
    elif edge.mark is not None:
        attrs["penwidth"] = "3.5"
    return attrs


def _legend(kinds: Iterable[EdgeKind], *, shared_labels: bool, marked: bool) -> list[str]:
    """A key as one HTML-like table: each row draws a line in that kind's colour and
    style (a cell's bottom border), then says what it means."""
    rows = []
    for kind in kinds:
        style = EDGE_STYLE[kind]
        line = style.get("style", "solid")
        width = "2" if float(style.get("penwidth", "1")) >= 1.8 else "1"
        rows.append(
            f'<tr><td width="36" sides="b" border="{width}" style="{line}"'
            f' color="{style["color"]}"></td>'
            f'<td align="left"><font color="{style["color"]}">{html.escape(LEGEND_TEXT[kind])}'
            "</font></td></tr>"
        )
    if marked:
        rows += [
            '<tr><td bgcolor="#ffd54f" border="1"></td>'
            '<td align="left">where the saga is now</td></tr>',
            '<tr><td sides="b" border="3" color="#555555"></td><td align="left">'
            f"{html.escape(TAKEN_NOTE)}</td></tr>",
            '<tr><td sides="b" border="1" color="#d5d5d5"></td><td align="left">'
            '<font color="#999999">not taken</font></td></tr>',
        ]
    if shared_labels:
        rows.append(f'<tr><td colspan="2" align="left">{html.escape(SHARED_LABEL_NOTE)}</td></tr>')
    table = (
        '<table border="1" color="#bbbbbb" style="rounded" cellborder="0" cellspacing="0"'
        ' cellpadding="3"><tr><td colspan="2"><b>legend</b></td></tr>' + "".join(rows) + "</table>"
    )
    return [f'  "legend" [shape=plain, fontsize=9, label=<{table}>];']


def _loop_ports(scene: Scene) -> dict[str, str]:
    """Which side each node's self-loop goes on: outward, away from the next column,
    so a loop's label never lands on the edges that run between columns."""
    ports = {node.id: "e" for node in scene.nodes}
    for group in scene.ranks:
        if len(group) > 1:
            ports[group[0]] = "w"
    for node_id in scene.chain:
        ports[node_id] = "w"
    return ports


def _levels(scene: Scene) -> dict[str, int]:
    """Each node's row, top to bottom: its place on the forward chain, shared by the
    nodes of its rank group."""
    levels = {node_id: n for n, node_id in enumerate(scene.chain)}
    for group in scene.ranks:
        level = next((levels[n] for n in group if n in levels), None)
        if level is None:
            level = max(levels.values(), default=-1) + 1
        for node_id in group:
            levels.setdefault(node_id, level)
    return levels


def _labelled(edges: Sequence[SceneEdge]) -> set[int]:
    """Which edges print their label. Where several arrows of one kind and one label fan
    into (or out of) the same state, as every compensation's arrow into ``failed`` does,
    one label says it for all: the same text N times over is what makes edge soup.
    An instance's visited edges always keep theirs."""
    fans: dict[tuple[object, ...], list[int]] = {}
    for n, edge in enumerate(edges):
        if edge.source != edge.dest:
            fans.setdefault(("in", edge.dest, edge.kind, edge.label), []).append(n)
            fans.setdefault(("out", edge.source, edge.kind, edge.label), []).append(n)
    hidden: set[int] = set()
    for members in fans.values():
        if len(members) < 2:
            continue
        visited = [n for n in members if edges[n].mark not in (None, Mark.UNVISITED)]
        keep = set(visited) or {members[0]}
        hidden.update(n for n in members if n not in keep)
    return {n for n in range(len(edges)) if n not in hidden}


def _edge_line(
    edge: SceneEdge,
    attrs: dict[str, str],
    label: bool,
    levels: Mapping[str, int],
) -> str:
    lines = [*([edge.order] if edge.order else []), *(edge.label.split("\n") if label else [])]
    tail, head = edge.source, edge.dest
    if levels.get(head, 0) < levels.get(tail, 0):
        # Drawn downwards with the arrowhead at the top: dot routes an upward edge as a
        # wide detour around the column, a reversed one straight.
        tail, head = head, tail
        attrs["dir"] = "back"
        ports = attrs.pop("tailport", None), attrs.pop("headport", None)
        attrs.update({k: v for k, v in zip(("headport", "tailport"), ports, strict=True) if v})
    raw = {"label": _label(lines)} if lines else {}
    return f"  {quote(tail)} -> {quote(head)} {_attrs(attrs, **raw)};"


_CLUSTER = {"style": "rounded,dashed", "color": "#1f5fbf", "fontcolor": "#1f5fbf"}
_BRANCH = {"style": "rounded", "color": "#8fa9d6", "fontcolor": "#1f5fbf"}


def _clusters(scene: Scene) -> list[str]:
    """Each parallel group's branches, side by side in a box of their own, hanging below
    the group's state by dotted lines (one per branch) that start each branch."""
    out: list[str] = []
    for cluster in scene.clusters:
        out.append(f"  subgraph {quote('cluster_' + cluster.id)} {{")
        out.append(f"    graph {_attrs(_CLUSTER, label=quote(cluster.label), fontsize='11')};")
        for branch in cluster.branches:
            out.append(f"    subgraph {quote('cluster_' + branch.id)} {{")
            out.append(f"      graph {_attrs(_BRANCH, label=quote(branch.label), fontsize='10')};")
            for node in branch.nodes:
                lines = [node.label, *([f"({node.note})"] if node.note else [])]
                attrs = _node_attrs(node.role, node.mark)
                attrs.pop("peripheries", None)
                out.append(f"      {quote(node.id)} {_attrs(attrs, label=_centred(lines))};")
            chain = set(itertools.pairwise(branch.chain))
            ids = {n.id for n in branch.nodes}
            beside = [
                (run, run.replace(":", ":", 1).replace("/running:", "/compensating:"))
                for run in branch.chain
            ]
            for run, undo in beside:
                if undo in ids and undo != run:
                    out.append(f"      {{ rank=same; {quote(run)}; {quote(undo)}; }}")
                    out.append(f"      {quote(run)} -> {quote(undo)} [style=invis];")
            undone = branch.id + "/compensated"
            if undone in ids and branch.chain:
                out.append(f"      {{ rank=same; {quote(branch.chain[-1])}; {quote(undone)}; }}")
            for edge in branch.edges:
                attrs = dict(EDGE_STYLE[edge.kind])
                attrs["fontcolor"] = attrs["color"]
                if (edge.source, edge.dest) not in chain:
                    attrs["constraint"] = "false"
                if edge.mark is Mark.UNVISITED:
                    attrs.update(_FADED_EDGE)
                elif edge.mark is not None:
                    attrs["penwidth"] = "3.5"
                raw = {"label": _label([edge.order])} if edge.order else {}
                out.append(
                    f"      {quote(edge.source)} -> {quote(edge.dest)} {_attrs(attrs, **raw)};"
                )
            out.append("    }")
        out.append("  }")
        for branch in cluster.branches:
            if branch.chain:
                link = {"style": "dotted", "color": "#1f5fbf", "arrowhead": "none", "weight": "0"}
                out.append(f"  {quote(cluster.attach)} -> {quote(branch.chain[0])} {_attrs(link)};")
    return out


def to_dot(scene: Scene) -> str:
    chain = set(itertools.pairwise(scene.chain))
    out = [
        f"digraph {quote(scene.name)} {{",
        f"  graph [rankdir=TB, newrank=true, nodesep=0.6, ranksep=0.5,"
        f" fontname={quote(FONT)}, fontsize=16, labelloc=t, label={quote(scene.title)}];",
        f'  node [fontname={quote(FONT)}, fontsize=11, margin="0.15,0.06"];',
        f"  edge [fontname={quote(FONT)}, fontsize=9, arrowsize=0.7];",
    ]
    for node in scene.nodes:
        lines = [node.label, *([f"({node.note})"] if node.note else [])]
        attrs = _attrs(_node_attrs(node.role, node.mark), label=_centred(lines))
        out.append(f"  {quote(node.id)} {attrs};")
    out += _clusters(scene)
    for group in scene.ranks:
        out.append("  { rank=same; " + " ".join(f"{quote(n)};" for n in group) + " }")
        for left, right in itertools.pairwise(group):
            out.append(f"  {quote(left)} -> {quote(right)} [style=invis];")
    ports = _loop_ports(scene) if scene.ranks or scene.chain else {}
    levels = _levels(scene)
    labelled = _labelled(scene.edges)
    for n, edge in enumerate(scene.edges):
        edge_attrs = _edge_attrs(edge, scene, chain)
        if edge.source == edge.dest and edge.source in ports:
            edge_attrs["tailport"] = edge_attrs["headport"] = ports[edge.source]
        elif edge.kind is EdgeKind.PARK and ports.get(edge.source) == "e":
            # Leave from below, clear of the loop label on the node's right.
            edge_attrs["tailport"] = "s"
        elif edge.kind is EdgeKind.RESUME and ports.get(edge.dest) == "e":
            edge_attrs["headport"] = "s"
        if scene.clusters and (edge.source, edge.dest) in chain:
            edge_attrs["weight"] = "20"  # the forward column stays straight beside groups
        out.append(_edge_line(edge, edge_attrs, n in labelled, levels))
    kinds = [k for k in EdgeKind if any(e.kind is k for e in scene.edges)]
    marked = any(node.mark is not None for node in scene.nodes)
    out += _legend(kinds, shared_labels=len(labelled) < len(scene.edges), marked=marked)
    out.append("}")
    return "\n".join(out) + "\n"

"""Write a Scene as Mermaid ``stateDiagram-v2`` text (for Markdown renderers that draw
Mermaid: GitHub, GitLab, many wikis).

Mermaid state ids cannot hold ``:`` (nor ``.`` or ``-``), so each state gets a sanitised
id and keeps its real name as the label. Mermaid cannot style single transitions in a
state diagram, so the edge kind is carried by the label's wording and the node classes.
"""

from __future__ import annotations

import re

from saga_fsm.diagrams._scene import TERMINAL_ROLES, Mark, Role, Scene

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_KEYWORDS = frozenset({"state", "note", "direction", "class", "classDef", "end", "as"})

_CLASS_STYLE = {
    Role.INITIAL: "fill:#eeeeee,stroke:#555555",
    Role.STEP: "fill:#e3eefa,stroke:#1f5fbf",
    Role.PIVOT: "fill:#fff1c1,stroke:#b8860b,stroke-width:3px",
    Role.RETRIABLE: "fill:#e6f4ea,stroke:#1e8449,stroke-dasharray:4 3",
    Role.SUCCEEDED: "fill:#d5f0dd,stroke:#1e8449",
    Role.ERROR: "fill:#fde2e0,stroke:#c0392b",
    Role.COMPENSATING: "fill:#fdebd0,stroke:#ca6f1e",
    Role.COMPLETED: "fill:#abebc6,stroke:#1e8449,stroke-width:3px",
    Role.COMPENSATED: "fill:#fad7a0,stroke:#ca6f1e,stroke-width:3px",
    Role.FAILED: "fill:#f5b7b1,stroke:#922b21,stroke-width:3px",
    Role.SKIPPED: "fill:#eeeeee,stroke:#888888",
}
_MARK_STYLE = {
    Mark.CURRENT: "fill:#ffd54f,stroke:#000000,stroke-width:4px",
    Mark.UNVISITED: "fill:#f7f7f7,stroke:#c8c8c8,color:#a0a0a0",
}


def mermaid_ids(states: list[str]) -> dict[str, str]:
    """A Mermaid-safe, unique id for each state: ``running:charge`` -> ``running_charge``."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for state in states:
        base = _UNSAFE.sub("_", state)
        if base in _KEYWORDS or not base[:1].isalpha():
            base = f"s_{base}"
        candidate, n = base, 2
        while candidate in used:
            candidate, n = f"{base}_{n}", n + 1
        used.add(candidate)
        ids[state] = candidate
    return ids


def _text(value: str) -> str:
    # ':' separates a transition from its label and '"' ends a description.
    return value.replace('"', "'").replace(":", "#58;")


def _quoted(value: str) -> str:
    return value.replace('"', "'")


def _clusters(scene: Scene, ids: dict[str, str]) -> list[str]:
    """Each parallel group as a composite state beside its group's state, its branches
    as concurrent regions (``--``), each with its own steps and moves."""
    out: list[str] = []
    for cluster in scene.clusters:
        out.append(f'    state "{_quoted(cluster.label)}" as {ids["cluster/" + cluster.id]} {{')
        for n, branch in enumerate(cluster.branches):
            if n:
                out.append("        --")
            out.append(
                f'        state "{_quoted(branch.label)}" as {ids["cluster/" + branch.id]} {{'
            )
            for node in branch.nodes:
                label = node.label + (f" ({node.note})" if node.note else "")
                out.append(f'            state "{_quoted(label)}" as {ids[node.id]}')
            if branch.chain:
                out.append(f"            [*] --> {ids[branch.chain[0]]}")
            for edge in branch.edges:
                text = f" : {_text(edge.order)}" if edge.order else ""
                out.append(f"            {ids[edge.source]} --> {ids[edge.dest]}{text}")
            out.append("        }")
        out.append("    }")
        out.append(f"    {ids[cluster.attach]} --> {ids['cluster/' + cluster.id]} : branches")
    return out


def to_mermaid(scene: Scene) -> str:
    inner = [
        key
        for c in scene.clusters
        for key in (
            "cluster/" + c.id,
            *("cluster/" + b.id for b in c.branches),
            *(n.id for b in c.branches for n in b.nodes),
        )
    ]
    ids = mermaid_ids([*(n.id for n in scene.nodes), *inner])
    branch_nodes = [n for c in scene.clusters for b in c.branches for n in b.nodes]
    title = scene.title.replace("\\", "\\\\").replace('"', '\\"')
    out = ["---", f'title: "{title}"', "---", "stateDiagram-v2", "    direction TB"]
    for node in scene.nodes:
        label = node.label + (f" ({node.note})" if node.note else "")
        out.append(f'    state "{label.replace(chr(34), chr(39))}" as {ids[node.id]}')
    if scene.initial is not None:
        out.append(f"    [*] --> {ids[scene.initial]}")
    for edge in scene.edges:
        lines = [*([edge.order] if edge.order else []), *edge.label.split("\n")]
        label = "<br/>".join(_text(line) for line in lines)
        out.append(f"    {ids[edge.source]} --> {ids[edge.dest]} : {label}")
    for node in scene.nodes:
        if node.role in TERMINAL_ROLES:
            out.append(f"    {ids[node.id]} --> [*]")
    out += _clusters(scene, ids)
    every = [*scene.nodes, *branch_nodes]
    for role, style in _CLASS_STYLE.items():
        members = [ids[n.id] for n in every if n.role is role and n.mark is None]
        members += [ids[n.id] for n in every if n.role is role and n.mark is Mark.VISITED]
        if members:
            out.append(f"    classDef {role.value} {style}")
            out.append(f"    class {','.join(members)} {role.value}")
    for mark, style in _MARK_STYLE.items():
        members = [ids[n.id] for n in every if n.mark is mark]
        if members:
            out.append(f"    classDef {mark.value} {style}")
            out.append(f"    class {','.join(members)} {mark.value}")
    return "\n".join(out) + "\n"

"""State diagrams drawn from the transitions Machines saga_fsm runs.

``definition_diagram`` draws a definition's compiled flow, ``instance_diagram`` (or
``load_instance_diagram`` from a store) lays the path one instance took over it, and
``lifecycle_diagram`` draws the generic saga or step lifecycle. Each is read from the
Machine itself, so a picture cannot drift from what the engine does. Diagrams write DOT
and Mermaid text, and PNG or SVG through Graphviz ``dot`` (or ``graphviz-pure``).
"""

from saga_fsm.diagrams._diagram import (
    FORMATS,
    Diagram,
    Format,
    InstanceDiagram,
    definition_diagram,
    format_for_path,
    instance_diagram,
    lifecycle_diagram,
    load_instance_diagram,
    snapshot_diagram,
)
from saga_fsm.diagrams._errors import DiagramError, RendererNotFound
from saga_fsm.diagrams._render import Renderer, find_renderer

__all__ = [
    "Diagram",
    "DiagramError",
    "FORMATS",
    "Format",
    "InstanceDiagram",
    "Renderer",
    "RendererNotFound",
    "definition_diagram",
    "find_renderer",
    "format_for_path",
    "instance_diagram",
    "lifecycle_diagram",
    "load_instance_diagram",
    "snapshot_diagram",
]

# Raised to users under the public module's name.
DiagramError.__module__ = RendererNotFound.__module__ = __name__

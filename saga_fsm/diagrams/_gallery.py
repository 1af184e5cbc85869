"""The diagrams committed under ``diagrams/`` at the repository root: the example
definitions and both lifecycles, each as DOT (compared by a test, since image bytes
differ between renderers) and PNG (stamped with the hash of the DOT it was drawn from,
so a stale picture is caught even when its DOT is fresh).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from saga_fsm._errors import InvalidArgument
from saga_fsm.diagrams._diagram import Diagram, definition_diagram, lifecycle_diagram
from saga_fsm.diagrams._render import PNG_SIGNATURE, Renderer

REFRESH_COMMAND = "python -m saga_fsm.diagrams diagrams"
"""What regenerates the committed diagrams (run from the repository root)."""
PNG_KEY = "saga_fsm:dot-sha256"


def _order_fulfillment() -> Diagram:
    from saga_fsm.examples import order_fulfillment

    return definition_diagram(order_fulfillment.definition)


def _travel_booking() -> Diagram:
    from saga_fsm.examples import travel_booking

    return definition_diagram(travel_booking.definition)


def _parallel_order() -> Diagram:
    from saga_fsm.examples import parallel_order

    return definition_diagram(parallel_order.definition)


def _refund_approval() -> Diagram:
    from saga_fsm.examples import refund_approval

    return definition_diagram(refund_approval.definition)


GALLERY: dict[str, Callable[[], Diagram]] = {
    "order_fulfillment": _order_fulfillment,
    "parallel_order": _parallel_order,
    "refund_approval": _refund_approval,
    "travel_booking": _travel_booking,
    "saga_lifecycle": lambda: lifecycle_diagram("saga"),
    "step_lifecycle": lambda: lifecycle_diagram("step"),
}


def dot_digest(dot: str) -> str:
    return hashlib.sha256(dot.encode()).hexdigest()


def stamp_png(png: bytes, key: str, value: str) -> bytes:
    """``png`` with a tEXt chunk ``key=value`` right after its IHDR chunk."""
    if not png.startswith(PNG_SIGNATURE):
        raise InvalidArgument("not a PNG")
    ihdr_end = len(PNG_SIGNATURE) + 8 + struct.unpack(">I", png[8:12])[0] + 4
    body = b"tEXt" + key.encode("latin-1") + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def png_text(png: bytes) -> dict[str, str]:
    """The tEXt entries of a PNG."""
    found: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        if kind == b"tEXt" and b"\0" in data:
            key, _, value = data.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        if kind == b"IEND":
            break
        pos += 12 + length
    return found


def stale(directory: str | Path) -> list[str]:
    """What in ``directory`` no longer matches the Machines: a missing or different
    ``NAME.dot``, or a ``NAME.png`` that is missing, not a PNG, or drawn from other DOT."""
    target = Path(directory)
    problems = []
    for name, make in GALLERY.items():
        dot = make().to_dot()
        dot_file, png_file = target / f"{name}.dot", target / f"{name}.png"
        if not dot_file.is_file() or dot_file.read_text(encoding="utf-8") != dot:
            problems.append(f"{dot_file} differs from what the Machine gives")
        if not png_file.is_file():
            problems.append(f"{png_file} is missing")
            continue
        png = png_file.read_bytes()
        if not png.startswith(PNG_SIGNATURE):
            problems.append(f"{png_file} is not a PNG")
        elif png_text(png).get(PNG_KEY) != dot_digest(dot):
            problems.append(f"{png_file} was drawn from other DOT")
    return problems


def write_gallery(directory: str | Path, *, renderer: Renderer | None = None) -> list[Path]:
    """Write ``NAME.dot`` and ``NAME.png`` for every gallery diagram into ``directory``."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in GALLERY.items():
        diagram = make()
        dot = diagram.to_dot()
        png = stamp_png(diagram.render("png", renderer=renderer), PNG_KEY, dot_digest(dot))
        (target / f"{name}.dot").write_text(dot, encoding="utf-8")
        (target / f"{name}.png").write_bytes(png)
        written += [target / f"{name}.dot", target / f"{name}.png"]
    return written

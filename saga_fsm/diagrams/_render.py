"""Turn DOT into PNG or SVG bytes with whichever Graphviz is there.

Graphviz's own ``dot`` is preferred when it is on PATH. Otherwise the ``graphviz-pure``
package (a runtime dependency: a self-contained port of ``dot`` shipped as a wheel)
provides a ``graphviz-pure`` command; it is looked for on PATH and next to the running
interpreter, since a virtualenv's scripts are often not on PATH. Output is checked
(PNG signature, SVG root element) before anyone writes it, so a ``.png`` file never
holds an error page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Literal

from attrs import frozen

from saga_fsm.diagrams._errors import DiagramError, RendererNotFound

ImageFormat = Literal["png", "svg"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RENDER_TIMEOUT = 60.0
INSTALL_HINT = (
    "no Graphviz renderer found: install Graphviz (apt-get install graphviz, brew install"
    " graphviz) so `dot` is on PATH, or `pip install graphviz-pure`"
)


@frozen
class Renderer:
    """A dot-compatible command: ``name`` is ``dot`` or ``graphviz-pure``."""

    name: str
    path: str

    def render(self, source: str, fmt: ImageFormat) -> bytes:
        """Lay out and draw ``source``; raises ``DiagramError`` if the command fails or
        what it printed is not an image of that format."""
        if fmt not in ("png", "svg"):
            raise DiagramError(f"cannot render {fmt!r}: png or svg")
        try:
            done = subprocess.run(
                [self.path, f"-T{fmt}"],
                input=source.encode(),
                capture_output=True,
                timeout=RENDER_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DiagramError(f"{self.name} ({self.path}) could not run: {err}") from None
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip().splitlines()
            raise DiagramError(
                f"{self.name} exited with {done.returncode}: {why[-1] if why else 'no message'}"
            )
        check_image(done.stdout, fmt, origin=self.name)
        return done.stdout


def check_image(data: bytes, fmt: ImageFormat, *, origin: str) -> None:
    """Refuse bytes that are not a PNG (by signature) or an SVG (by root element)."""
    if fmt == "png":
        ok = data.startswith(PNG_SIGNATURE)
    else:
        head = data[:4096].decode("utf-8", errors="replace")
        ok = "<svg" in head and data.rstrip().endswith(b"</svg>")
    if not ok:
        raise DiagramError(f"{origin} did not produce a valid {fmt.upper()} image")


def default_search_path() -> str:
    """PATH, then this interpreter's scripts directories (where pip put graphviz-pure)."""
    extra = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    return os.pathsep.join([os.environ.get("PATH", ""), *extra])


def find_renderer(search_path: str | None = None) -> Renderer:
    """System ``dot`` on PATH first, else ``graphviz-pure``; ``RendererNotFound`` if
    neither is there. ``search_path`` replaces the default lookup (PATH plus the
    interpreter's scripts directory)."""
    system_path = os.environ.get("PATH", "") if search_path is None else search_path
    dot = shutil.which("dot", path=system_path)
    if dot:
        return Renderer("dot", dot)
    pure = shutil.which(
        "graphviz-pure", path=default_search_path() if search_path is None else search_path
    )
    if pure:
        return Renderer("graphviz-pure", pure)
    raise RendererNotFound(INSTALL_HINT)

"""Rendering: system Graphviz when present, graphviz-pure otherwise, a clear error when
neither is there, and never a file of the wrong format."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saga_fsm import SagaError
from saga_fsm.diagrams import (
    DiagramError,
    Renderer,
    RendererNotFound,
    _render,
    definition_diagram,
    find_renderer,
    format_for_path,
    instance_diagram,
)
from saga_fsm.examples import order_fulfillment
from tests.diagrams._support import png_size, ten_steps

SYSTEM_DOT = shutil.which("dot")
needs_system_dot = pytest.mark.skipif(
    SYSTEM_DOT is None and os.environ.get("CI") != "true",
    reason="Graphviz's dot is not installed (apt-get install graphviz)",
)


def _fake(tmp_path: Path, name: str, script: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


@needs_system_dot
def test_system_dot_is_preferred_and_draws_a_png(tmp_path: Path) -> None:
    assert SYSTEM_DOT is not None, "CI installs Graphviz: dot must be on PATH"
    renderer = find_renderer()
    assert renderer == Renderer("dot", SYSTEM_DOT)
    target = definition_diagram(ten_steps()).save(tmp_path / "ten.png", renderer=renderer)
    width, height = png_size(target.read_bytes())
    assert width > 800 and height > 1000  # ten rows of states, not an empty page


def test_without_system_dot_graphviz_pure_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    renderer = find_renderer()
    assert renderer.name == "graphviz-pure"
    diagram = definition_diagram(order_fulfillment.definition)
    width, height = png_size(diagram.render("png"))
    assert width > 600 and height > 400
    svg = diagram.render("svg").decode()
    assert svg.rstrip().endswith("</svg>")
    # Ids were quoted: each flow state is one node, named in full.
    for state in ("running:reserve_inventory", "compensating:process_payment", "failed"):
        assert f"<title>{state}</title>" in svg
    assert "<title>running</title>" not in svg


def test_graphviz_pure_in_a_subprocess_with_no_path(tmp_path: Path) -> None:
    code = (
        "from saga_fsm.diagrams import definition_diagram, find_renderer\n"
        "from saga_fsm.examples import travel_booking\n"
        "print(find_renderer().name)\n"
        "definition_diagram(travel_booking.definition).save('out.png')\n"
    )
    env = {**os.environ, "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "graphviz-pure"
    assert png_size((tmp_path / "out.png").read_bytes())[0] > 600


def test_no_renderer_is_a_clear_saga_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RendererNotFound) as caught:
        find_renderer(search_path=str(tmp_path))
    assert isinstance(caught.value, SagaError)
    assert "apt-get install graphviz" in str(caught.value)
    assert "pip install graphviz-pure" in str(caught.value)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_render, "default_search_path", lambda: str(tmp_path))
    diagram = definition_diagram(order_fulfillment.definition)
    with pytest.raises(RendererNotFound):
        diagram.save(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    # Text formats need no renderer.
    assert diagram.save(tmp_path / "x.dot").read_text().startswith("digraph")
    with pytest.warns(UserWarning, match="no Graphviz renderer"):
        assert diagram._repr_svg_() is None


def test_output_that_is_not_an_image_is_never_written(tmp_path: Path) -> None:
    liar = Renderer("dot", str(_fake(tmp_path, "dot", "cat >/dev/null; echo '<html>oops</html>'")))
    diagram = definition_diagram(order_fulfillment.definition)
    for fmt in ("png", "svg"):
        with pytest.raises(DiagramError, match=f"did not produce a valid {fmt.upper()}"):
            diagram.save(tmp_path / f"x.{fmt}", renderer=liar)
        assert not (tmp_path / f"x.{fmt}").exists()


def test_a_failing_renderer_reports_its_last_words(tmp_path: Path) -> None:
    broken = Renderer(
        "dot", str(_fake(tmp_path, "dot", "echo 'syntax error in line 3' >&2; exit 1"))
    )
    with pytest.raises(DiagramError, match="dot exited with 1: syntax error in line 3"):
        definition_diagram(order_fulfillment.definition).render("png", renderer=broken)


def test_system_dot_wins_over_graphviz_pure(tmp_path: Path) -> None:
    dot = _fake(tmp_path, "dot", "exit 0")
    _fake(tmp_path, "graphviz-pure", "exit 0")
    assert find_renderer(search_path=str(tmp_path)) == Renderer("dot", str(dot))


def test_formats_from_file_names() -> None:
    assert [format_for_path(p) for p in ("a.png", "a.SVG", "a.dot", "a.gv", "a.mmd")] == [
        "png",
        "svg",
        "dot",
        "dot",
        "mermaid",
    ]
    with pytest.raises(DiagramError, match="cannot tell the format"):
        format_for_path("a.txt")
    with pytest.raises(DiagramError, match="unknown format 'pdf'"):
        definition_diagram(order_fulfillment.definition).render("pdf")


def _render_seconds(renderer: Renderer) -> float:
    source = definition_diagram(ten_steps()).to_dot()
    start = time.perf_counter()
    png_size(renderer.render(source, "png"))
    return time.perf_counter() - start


def test_ten_step_png_renders_quickly_with_graphviz_pure(tmp_path: Path) -> None:
    path = shutil.which("graphviz-pure", path=_render.default_search_path())
    assert path is not None, "graphviz-pure is a runtime dependency"
    assert _render_seconds(Renderer("graphviz-pure", path)) < 10


@needs_system_dot
def test_ten_step_png_renders_quickly_with_system_dot() -> None:
    assert SYSTEM_DOT is not None
    assert _render_seconds(Renderer("dot", SYSTEM_DOT)) < 10


def test_jupyter_shows_definitions_and_instances_as_svg() -> None:
    svg = order_fulfillment.definition._repr_svg_()
    assert svg is not None and svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<title>running:create_shipment</title>" in svg
    instance = instance_diagram(order_fulfillment.definition, [])._repr_svg_()
    assert instance is not None and "current" in instance

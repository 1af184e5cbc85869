"""The notebooks run top to bottom without an error, and are committed with outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_compensation_paths.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), "run it and save the outputs"
    assert all(out.output_type != "error" for cell in code for out in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    # Raises CellExecutionError, naming the cell, if any cell raises.
    NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    svgs = [out for out in outputs if "image/svg+xml" in out.get("data", {})]
    assert svgs, "the diagrams are shown inline"
    assert all("<svg" in out["data"]["image/svg+xml"] for out in svgs)
    text = "".join(out.get("text", "") for out in outputs)
    if path.stem.startswith("02"):
        table = next(
            out["data"]["text/markdown"]
            for out in outputs
            if "| scenario |" in out.get("data", {}).get("text/markdown", "")
        )
        for state in ("completed", "compensated", "failed"):
            assert f"`{state}`" in table
    else:
        assert "final state: completed" in text

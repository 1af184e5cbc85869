"""The README's child-saga example runs as written and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Child sagas\n", 1)[1].split("\n## ", 1)[0]


def test_the_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    [example] = re.findall(r"```python\n(.*?)```", section(), re.S)
    printed = re.findall(r"prints\n\n```\n(.*?)```", section(), re.S)[0]
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed


def test_the_file_snippet_loads() -> None:
    import tomllib

    from saga_fsm import ChildSaga
    from saga_fsm._loading import definition_from_mapping

    [snippet] = re.findall(r"```toml\n(.*?)```", section(), re.S)
    steps = tomllib.loads(snippet)["steps"]
    loaded = definition_from_mapping({"name": "readme", "steps": steps})
    assert isinstance(loaded.steps[0], ChildSaga)

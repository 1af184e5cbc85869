"""The README's runnable examples, as the tests that run them read them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    """The text under ``## {title}`` (or ``### {title}``), up to the next ``## ``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for level in ("## ", "### "):
        marker = f"{level}{title}\n"
        if marker in text:
            return text.split(marker, 1)[1].split("\n## ", 1)[0]
    raise KeyError(title)


def python_example(section: str) -> str:
    (example,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return str(example)


def printed_output(section: str) -> str:
    """The block after "prints" that the example's output must equal."""
    found = re.search(r"\nprints\n\n```\n(.*?)```", section, re.S)
    assert found is not None, "the section says what its example prints"
    return found.group(1)


def run_example(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in ``cwd``, with the repository importable."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

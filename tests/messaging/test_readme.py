"""The README's messaging examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Messaging (transports and participants)\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_its_two_examples() -> None:
    assert len(examples()) == 2


@pytest.mark.parametrize("index", [0, 1])
def test_an_example_runs(index: int, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", examples()[index]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {
        0: "{'qty': 2, 'sku': 'A-1'} 1\n",
        1: "ReplyBody(outcome=<Outcome.SUCCEEDED: 'succeeded'>, data={'reservation': 's-1:reserve'}, error=None, nothing_to_undo=False)\n",
    }
    assert done.stdout == expected[index]

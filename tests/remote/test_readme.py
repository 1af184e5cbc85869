"""The README's remote-steps example runs as written and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Remote steps\n", 1)[1].split("\n## ", 1)[0]


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


def test_the_demo_commands_name_real_options() -> None:
    from click.testing import CliRunner

    from saga_fsm.cli import main

    for command in ("demo", "worker", "relay"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        for option in re.findall(rf"saga-fsm {command} [^\n]*", section()):
            for flag in re.findall(r"--[a-z-]+", option):
                assert flag in help_text, (command, flag)

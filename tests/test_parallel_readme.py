"""The README's parallel branches example runs as written and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

from tests.readme import readme_section, run_example


def test_the_parallel_example_runs(tmp_path: Path) -> None:
    section = readme_section("Parallel branches")
    example, printed = re.findall(r"```(?:python)?\n(.*?)```", section, re.S)[:2]
    done = run_example(example, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed

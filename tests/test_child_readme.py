"""The README's child-saga example runs as written and prints what it says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from saga_fsm import ChildSaga
from saga_fsm._loading import definition_from_mapping
from tests.readme import printed_output, python_example, readme_section, run_example


def test_the_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    section = readme_section("Child sagas")
    done = run_example(python_example(section), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed_output(section)


def test_the_file_snippet_loads() -> None:
    [snippet] = re.findall(r"```toml\n(.*?)```", readme_section("Child sagas"), re.S)
    steps = tomllib.loads(snippet)["steps"]
    loaded = definition_from_mapping({"name": "readme", "steps": steps})
    assert isinstance(loaded.steps[0], ChildSaga)

"""The README's remote-steps example runs as written and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

from tests.readme import printed_output, python_example, readme_section, run_example


def section() -> str:
    return readme_section("Remote steps")


def test_the_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    done = run_example(python_example(section()), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed_output(section())


def test_the_demo_commands_name_real_options() -> None:
    from click.testing import CliRunner

    from saga_fsm.cli import main

    for command in ("demo", "worker", "relay"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        for option in re.findall(rf"saga-fsm {command} [^\n]*", section()):
            for flag in re.findall(r"--[a-z-]+", option):
                assert flag in help_text, (command, flag)

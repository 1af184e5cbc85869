"""The README's Choreography example runs as written."""

from __future__ import annotations

from pathlib import Path

from tests.readme import python_example, readme_section, run_example


def test_the_example_runs(tmp_path: Path) -> None:
    done = run_example(python_example(readme_section("Choreography")), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "completed ['OrderCreated', 'PaymentProcessed', 'OrderConfirmed']\n"

"""Both example sagas hold every property, with every reachable transition taken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saga_fsm import SagaDefinition
from saga_fsm.examples import order_fulfillment, travel_booking
from saga_fsm.examples._fakes import FakeServices, services
from saga_fsm.testing import check


def fresh_services() -> FakeServices:
    """The examples' shared fakes, reset (other tests may have made them flaky)."""
    services.configure()
    return services


@pytest.mark.parametrize(
    "definition", [order_fulfillment.definition, travel_booking.definition], ids=lambda d: d.name
)
def test_example_holds_every_property_with_full_coverage(definition: SagaDefinition) -> None:
    report = check(definition, setup=fresh_services, max_examples=30, seed=11)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0 and not report.coverage.missed, report.format()
    # What no event sequence reaches: the compensations have no compensation_timeout.
    assert {row.trigger for row in report.coverage.unreachable} == {"compensation_timed_out"}
    assert report.paths >= report.examples


def test_saga_fsm_check_on_the_order_example_exits_0_with_full_coverage(tmp_path: Path) -> None:
    """The acceptance run, as a user types it (default settings)."""
    done = subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", "check", "saga_fsm.examples.order_fulfillment"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "transition coverage: 45/45 reachable transitions taken (100%)" in out
    assert "4 row(s) unreachable by construction" in out
    assert "result: every property holds" in out
    assert " paths (" in out.splitlines()[1]
    assert not (tmp_path / ".hypothesis").exists()

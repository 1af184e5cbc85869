"""The diagrams committed under diagrams/ match the Machines that run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from saga_fsm.diagrams._gallery import GALLERY, REFRESH_COMMAND, png_text, stale, stamp_png

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "diagrams"


def test_committed_diagrams_are_fresh() -> None:
    problems = stale(COMMITTED)
    assert not problems, (
        "the committed diagrams are stale:\n  "
        + "\n  ".join(problems)
        + f"\nrefresh them from the repository root with: {REFRESH_COMMAND}"
    )


def test_every_example_and_both_lifecycles_are_committed() -> None:
    assert set(GALLERY) == {
        "order_fulfillment",
        "parallel_order",
        "refund_approval",
        "travel_booking",
        "saga_lifecycle",
        "step_lifecycle",
    }
    for name in GALLERY:
        assert (COMMITTED / f"{name}.png").stat().st_size > 10_000


def test_staleness_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "diagrams"
    shutil.copytree(COMMITTED, copy)
    assert stale(copy) == []
    dot = copy / "order_fulfillment.dot"
    dot.write_text(dot.read_text().replace("step_succeeded", "step_done", 1))
    png = copy / "travel_booking.png"
    png.write_bytes((copy / "saga_lifecycle.png").read_bytes())  # a picture of something else
    (copy / "step_lifecycle.png").unlink()
    assert stale(copy) == [
        f"{dot} differs from what the Machine gives",
        f"{png} was drawn from other DOT",
        f"{copy / 'step_lifecycle.png'} is missing",
    ]


def test_png_stamp_round_trips() -> None:
    png = (COMMITTED / "saga_lifecycle.png").read_bytes()
    stamped = stamp_png(png, "k", "v")
    assert png_text(stamped)["k"] == "v"
    assert stamped.startswith(png[:33])


def test_the_refresh_command_writes_fresh_diagrams(tmp_path: Path) -> None:
    module, target = REFRESH_COMMAND.split()[2:]
    assert (module, target) == ("saga_fsm.diagrams", "diagrams")
    done = subprocess.run(
        [sys.executable, "-m", module, str(tmp_path / target)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote ") == 2 * len(GALLERY)
    assert stale(tmp_path / target) == []
    bad = subprocess.run([sys.executable, "-m", module, "a", "b"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr

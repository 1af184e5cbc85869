"""``saga-fsm diagram`` as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.diagrams._support import png_size

_SCRIPT = Path(sys.executable).with_name("saga-fsm")
CLI = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from saga_fsm.cli import main; main()"]
)
ORDER = "saga_fsm.examples.order_fulfillment"


def saga_fsm(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


def test_definition_to_png_svg_dot_and_mermaid(tmp_path: Path) -> None:
    done = saga_fsm("diagram", ORDER, "-o", "order.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert png_size((tmp_path / "order.png").read_bytes())[0] > 600
    assert saga_fsm("diagram", ORDER, "-o", "order.svg", cwd=tmp_path).returncode == 0
    assert "<title>running:create_shipment</title>" in (tmp_path / "order.svg").read_text()
    assert saga_fsm("diagram", ORDER, "-o", "order.gv", cwd=tmp_path).returncode == 0
    assert (tmp_path / "order.gv").read_text().startswith('digraph "order_fulfillment"')
    done = saga_fsm("diagram", ORDER, "--format", "mermaid", "-o", "order.md", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stateDiagram-v2" in (tmp_path / "order.md").read_text()
    toml = Path(__file__).resolve().parents[2] / "saga_fsm/examples/order_fulfillment.toml"
    printed = saga_fsm("diagram", str(toml), cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert '"running:process_payment" -> "running:create_shipment"' in printed.stdout


def test_lifecycles(tmp_path: Path) -> None:
    for which in ("saga", "step"):
        done = saga_fsm("diagram", "--lifecycle", which, "-o", f"{which}.svg", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        svg = (tmp_path / f"{which}.svg").read_text()
        assert "<title>compensating</title>" in svg
    assert "retry [parked_here]" in saga_fsm("diagram", "--lifecycle", "saga", cwd=tmp_path).stdout


def test_instance_from_a_store(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sagas.db'}"
    ran = saga_fsm(
        "run", ORDER, "--data", '{"amount": 5}', "--store", store, "--json", cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    saga_id = json.loads(ran.stdout)["id"]
    done = saga_fsm("diagram", ORDER, "--instance", saga_id, "--store", store, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"saga {saga_id}: completed" in done.stdout
    assert 'label="#1\\lstart\\l"' in done.stdout
    done = saga_fsm(
        "diagram", ORDER, "--instance", saga_id, "--store", store, "-o", "i.png", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert png_size((tmp_path / "i.png").read_bytes())[0] > 600
    other = saga_fsm(
        "diagram",
        "saga_fsm.examples.travel_booking",
        "--instance",
        saga_id,
        "--store",
        store,
        cwd=tmp_path,
    )
    assert other.returncode == 2
    assert "is a order_fulfillment v1 instance, not travel_booking v1" in other.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("diagram", "no.such.module", "-o", "x.png"), "cannot import module 'no.such.module'"),
        (("diagram", ORDER, "-o", "x.png", "--format", "svg"), "does not match 'x.png'"),
        (("diagram", ORDER, "-o", "x.txt"), "cannot tell the format of 'x.txt'"),
        (("diagram", ORDER), None),
        (("diagram",), "give a REF"),
        (("diagram", ORDER, "--lifecycle", "saga"), "give no REF"),
        (("diagram", ORDER, "--format", "png"), "png is binary"),
        (("diagram", ORDER, "--store", "memory://"), "--store is only read with --instance"),
        (
            ("diagram", ORDER, "--instance", "nope", "--store", "memory://"),
            "no saga with id 'nope'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str | None
) -> None:
    done = saga_fsm(*args, cwd=tmp_path)
    if message is None:  # the control: a good command
        assert done.returncode == 0
        return
    assert done.returncode == 2, done.stdout
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_renderer_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    code = (
        "import saga_fsm.diagrams._render as r\n"
        "r.default_search_path = lambda: ''\n"
        "from saga_fsm.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code, "diagram", ORDER, "-o", "x.png"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("saga-fsm: error: no Graphviz renderer found")
    assert "pip install graphviz-pure" in done.stderr
    assert not (tmp_path / "x.png").exists()

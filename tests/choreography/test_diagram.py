"""Choreography diagrams: drawn from its Machine through saga_fsm.diagrams, with who
publishes each event and the expected-within timers; a tracked instance's path and
where it is stuck; ``saga-fsm diagram REF [--instance ID]`` for a choreography."""

from __future__ import annotations

import asyncio
from pathlib import Path

from saga_fsm._clock import FakeClock
from saga_fsm.choreography._diagram import choreography_diagram, load_tracked_diagram
from saga_fsm.examples.order_choreography import choreography
from saga_fsm.stores import open_store
from tests.choreography.test_tracker import ID, cli, follow, tracker
from tests.diagrams._support import png_size

REF = "saga_fsm.examples.order_choreography:choreography"


def test_every_row_is_an_edge_labelled_with_its_publisher_and_timer() -> None:
    text = choreography_diagram(choreography).to_mermaid()
    assert "running_charging --> running_shipping : PaymentProcessed (payment) \u226430s" in text
    assert "running_charging --> compensating_PaymentFailed : PaymentFailed (payment)" in text
    assert (
        "compensating_PaymentFailed --> compensated : InventoryReleased (inventory) \u226430s"
        "<br/>OrderFailed (orders) \u226430s" in text
    )


def test_an_instance_shows_its_path_and_where_it_is_stuck(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'saga_fsm.db'}"

    async def scenario() -> str:
        async with open_store(url) as store:
            clock = FakeClock()
            t = tracker(store, clock=clock)
            await follow(t, "OrderCreated", "InventoryReserved")
            clock.advance(60)
            await t.check_deadlines()
            return (await load_tracked_diagram(store, ID, choreography)).to_dot()

    dot = asyncio.run(scenario())
    assert "stuck waiting for PaymentProcessed" in dot
    assert "stuck: no PaymentProcessed" in dot
    drawn = cli(
        "diagram", REF, "--instance", ID, "--store", url, "--format", "mermaid", cwd=tmp_path
    )
    assert drawn.returncode == 0, drawn.stderr
    assert "stuck waiting for PaymentProcessed" in drawn.stdout
    whole = cli("diagram", REF, "--format", "mermaid", cwd=tmp_path)
    assert "PaymentProcessed (payment)" in whole.stdout


def test_a_choreography_renders_as_png_and_svg(tmp_path: Path) -> None:
    diagram = choreography_diagram(choreography)
    svg = diagram.render("svg").decode()
    assert svg.rstrip().endswith("</svg>")
    for state in ("running:charging", "compensating:PaymentFailed", "compensated"):
        assert f"<title>{state}</title>" in svg
    assert "PaymentProcessed (payment)" in svg
    width, height = png_size(diagram.render("png"))
    assert width > 300 and height > 300
    drawn = cli("diagram", REF, "-o", "order.png", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert png_size((tmp_path / "order.png").read_bytes())[0] > 300

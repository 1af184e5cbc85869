"""Remote steps in the state table: validation (row, field, why), loading from files,
the core's request ids and durable wait, diagrams naming the channel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from saga_fsm import DefinitionError, SagaDefinition, Step, decide, new_snapshot
from saga_fsm._codec import snapshot_from_json, snapshot_to_json
from saga_fsm._core import Event, RunStep, outstanding
from saga_fsm._flow import compile_saga
from saga_fsm._loading import definition_from_mapping, load_definition
from saga_fsm._remote import awaited, command_id, remote_commands
from saga_fsm.diagrams import definition_diagram

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def local(ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "field", "why"),
    [
        ({"action": local, "command": "a.b", "timeout": 1}, "command", "either local"),
        ({"command": "a.b", "compensation": local}, "timeout", "needs a timeout"),
        ({"command": "a b", "timeout": 1, "read_only": True}, "command", "channel name"),
        (
            {"command": "a.b", "compensation": local, "compensation_command": "a.c", "timeout": 1},
            "compensation_command",
            "either local",
        ),
        (
            {"command": "a.b", "kind": "pivot", "compensation_command": "a.c", "timeout": 1},
            "compensation_command",
            "never compensated",
        ),
        ({"compensation_command": "a.c"}, "compensation_timeout", "needs compensation_timeout"),
    ],
)
def test_a_bad_remote_step_is_refused_naming_its_field(
    options: dict[str, Any], field: str, why: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        Step("reserve", **options)
    assert caught.value.field == field and caught.value.step == "reserve"
    assert why in caught.value.reason


def test_a_file_names_the_row_of_a_bad_remote_step() -> None:
    raw = {
        "name": "order",
        "steps": [
            {"name": "check", "action": f"{__name__}:local", "read_only": True},
            {
                "name": "reserve",
                "command": "inventory.reserve",
                "compensation": f"{__name__}:local",
            },
        ],
    }
    with pytest.raises(DefinitionError) as caught:
        definition_from_mapping(raw, source="order.toml")
    err = caught.value
    assert (err.row, err.step, err.field, err.source) == (1, "reserve", "timeout", "order.toml")


def test_the_example_file_loads_with_its_channels() -> None:
    definition = load_definition("saga_fsm/examples/order_remote.toml")
    assert [(s.command, s.compensation_command) for s in definition.steps] == [
        ("inventory.reserve", "inventory.release"),
        ("payment.charge", "payment.refund"),
        ("shipping.ship", None),
        (None, None),
    ]
    assert [s.remote for s in definition.steps] == [True, True, True, False]


ORDER = SagaDefinition(
    "order",
    [
        Step(
            "reserve",
            command="inventory.reserve",
            compensation_command="inventory.release",
            timeout=30,
        ),
        Step("charge", local, kind="pivot"),
    ],
)


def test_a_remote_step_waits_with_its_request_id_until_its_deadline() -> None:
    fresh = new_snapshot(ORDER, "s-1", {"qty": 2}, T0)
    decision = decide(ORDER, fresh, Event.start(T0))
    [command] = decision.commands
    assert command == RunStep(
        "reserve", 1, "s-1:reserve", T0 + timedelta(seconds=30), "s-1:reserve:1"
    )
    waiting = decision.snapshot
    assert waiting.step("reserve").request_id == "s-1:reserve:1"
    # No worker needs it before the deadline: the reply comes by message.
    assert waiting.due_at == T0 + timedelta(seconds=30)
    assert outstanding(ORDER, waiting) == (command,)
    assert awaited(waiting) is not None
    assert snapshot_from_json(snapshot_to_json(waiting)) == waiting
    [row] = remote_commands(compile_saga(ORDER), waiting, decision.commands, "orders.replies")
    assert row.channel == "inventory.reserve" and row.message_id == command_id("s-1:reserve:1")


def test_a_local_step_record_encodes_as_before() -> None:
    fresh = new_snapshot(SagaDefinition("l", [Step("a", local, read_only=True)]), "s", {}, T0)
    assert "request_id" not in snapshot_to_json(fresh)


def test_diagrams_mark_remote_states_with_their_channel() -> None:
    text = definition_diagram(ORDER).to_mermaid()
    assert "running:reserve (remote: inventory.reserve)" in text
    assert "compensating:reserve (remote: inventory.release)" in text

"""Parallel groups in TOML, YAML and JSON definition files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga_fsm import DefinitionError, ForEach, InvalidReference, Parallel, load_definition
from saga_fsm._fingerprint import definition_fingerprint
from saga_fsm.examples import parallel_order

EX = "saga_fsm.examples.parallel_order"
RESERVE = {"name": "reserve", "action": f"{EX}:reserve", "compensation": f"{EX}:release"}


def table() -> dict[str, object]:
    return {
        "name": "parallel_order",
        "steps": [
            {"name": "plan_parcels", "action": f"{EX}:plan_parcels", "read_only": True},
            {
                "name": "reserve_stock",
                "max_concurrency": 3,
                "branches": {k: [dict(RESERVE)] for k in ("north", "south", "east")},
            },
            {
                "name": "book_couriers",
                "for_each": "parcels",
                "max_concurrency": 2,
                "steps": [
                    {
                        "name": "book",
                        "action": f"{EX}:book_courier",
                        "compensation": f"{EX}:cancel_courier",
                    }
                ],
            },
            {"name": "charge_card", "action": f"{EX}:charge_card", "kind": "pivot"},
            {"name": "send_receipt", "action": f"{EX}:send_receipt", "kind": "retriable"},
        ],
    }


def test_a_json_file_describes_the_same_table_as_the_python_example(tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text(json.dumps(table()))
    loaded = load_definition(str(path))
    assert [type(s).__name__ for s in loaded.steps] == [
        "Step",
        "Parallel",
        "ForEach",
        "Step",
        "Step",
    ]
    group = loaded.step("reserve_stock")
    assert isinstance(group, Parallel) and group.branch_keys() == ("north", "south", "east")
    assert isinstance(loaded.step("book_couriers"), ForEach)
    # The same table: same fingerprint as the Python definition.
    assert definition_fingerprint(loaded) == definition_fingerprint(parallel_order.definition)


def test_toml_and_yaml_read_groups_too(tmp_path: Path) -> None:
    toml = tmp_path / "g.toml"
    toml.write_text(
        'name = "g"\n[[steps]]\nname = "g"\njoin = "any"\n[steps.branches]\n'
        f'a = [{{ name = "r", action = "{EX}:reserve", compensation = "{EX}:release" }}]\n'
        f'b = [{{ name = "r", action = "{EX}:reserve", compensation = "{EX}:release" }}]\n'
    )
    group = load_definition(str(toml)).step("g")
    assert isinstance(group, Parallel) and group.join == "any"
    yaml = tmp_path / "g.yaml"
    yaml.write_text(
        "name: g\nsteps:\n  - name: each\n    for_each: items\n    steps:\n"
        f"      - {{name: hold, action: '{EX}:reserve', compensation: '{EX}:release'}}\n"
    )
    each = load_definition(str(yaml)).step("each")
    assert isinstance(each, ForEach) and each.items == "items"


@pytest.mark.parametrize(
    ("change", "error", "row", "step", "field"),
    [
        (lambda t: t["steps"][1].update(join="most"), DefinitionError, 1, "reserve_stock", "join"),
        (
            lambda t: t["steps"][1]["branches"]["east"][0].update(action="no.such:thing"),
            InvalidReference,
            1,
            "reserve_stock/east/reserve",
            "action",
        ),
        (
            lambda t: t["steps"][1]["branches"]["east"][0].update(timeout="soon"),
            DefinitionError,
            1,
            "reserve_stock/east/reserve",
            "timeout",
        ),
        (
            lambda t: t["steps"][2].update(colour="red"),
            DefinitionError,
            2,
            "book_couriers",
            "colour",
        ),
        (lambda t: t["steps"][3].update(timeout="x"), DefinitionError, 3, "charge_card", "timeout"),
        (
            lambda t: t["steps"][2]["steps"][0].update(kind="pivot"),
            DefinitionError,
            2,
            "book_couriers/*/book",
            "compensation",
        ),
    ],
)
def test_errors_in_a_file_name_the_row_the_branch_step_and_the_field(
    tmp_path: Path, change: object, error: type, row: int, step: str, field: str
) -> None:
    raw = table()
    change(raw)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(error) as raised:
        load_definition(str(path))
    err = raised.value
    assert (err.row, err.step, err.field, err.source) == (row, step, field, str(path)), err

"""Choreography tables: validated row by row when built, loadable from files."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga_fsm import DefinitionError
from saga_fsm.choreography import Choreography, Event, Move, expect, machine
from saga_fsm.choreography._loading import choreography_from_mapping, load_choreography
from saga_fsm.examples import order_choreography

TOML = Path(order_choreography.__file__).with_suffix(".toml")


def raw() -> dict[str, Any]:
    return tomllib.loads(TOML.read_text())


def minimal(**changes: Any) -> Choreography:
    fields: dict[str, Any] = {
        "name": "c",
        "start": "A",
        "correlation": ["id"],
        "events": [Event("A", publisher="p"), Event("B", publisher="q")],
        "moves": [Move("pending", "A", "one"), Move("one", "B", "completed")],
    }
    fields.update(changes)
    return Choreography(**fields)


def test_the_file_and_the_python_table_are_the_same_choreography() -> None:
    assert load_choreography(str(TOML)) == order_choreography.choreography
    assert (
        load_choreography("saga_fsm.examples.order_choreography:choreography")
        is order_choreography.choreography
    )


def test_json_loads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw()))
    assert load_choreography(str(path)) == order_choreography.choreography


def test_yaml_loads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw()))
    assert load_choreography(str(path)) == order_choreography.choreography


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["events"][2].__setitem__("name", 3),
            "f.toml, events[2], field 'name': expected str, got int 3",
        ),
        (
            lambda r: r["moves"][1].__setitem__("event", "Nope"),
            "f.toml, moves[1], field 'event': event 'Nope' is not in events",
        ),
        (lambda r: r.__setitem__("extra", 1), "f.toml: extra fields found (extra)"),
        (
            lambda r: r["expectations"][0].__setitem__("within", -1),
            "f.toml, expectations[0], field 'within': within must be > 0 seconds, got -1.0",
        ),
        (
            lambda r: r["failures"][1]["compensations"].append("Gone"),
            "f.toml, failures[1], field 'compensations': event 'Gone' is not in events",
        ),
        (
            lambda r: r["events"][10].__setitem__("keys", ["customer_id"]),
            "f.toml, events[10], field 'keys': key 'customer_id' is not one of correlation"
            " ('order_id', 'payment_id')",
        ),
    ],
)
def test_a_bad_row_is_named_with_its_field(change: Any, message: str) -> None:
    bad = copy.deepcopy(raw())
    change(bad)
    with pytest.raises(DefinitionError) as caught:
        choreography_from_mapping(bad, source="f.toml")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start": "B"}, "moves[0], field 'event': only the start event 'B' leaves 'pending'"),
        (
            {"moves": [Move("pending", "A", "one"), Move("two", "B", "completed")]},
            "moves[1], field 'state': state 'two' is never reached",
        ),
        ({"moves": [Move("pending", "A", "one")]}, "no move reaches 'completed'"),
        ({"correlation": []}, "field 'correlation': name at least one correlation key"),
        (
            {"events": [Event("A", publisher="p"), Event("A", publisher="q")]},
            "events[1], field 'name': event 'A' is already row 0",
        ),
        (
            {"expectations": [expect("B", within=1, compensate="C")]},
            "expectations[0], field 'compensate': event 'C' is not in events",
        ),
        (
            {
                "events": [
                    Event("A", publisher="p", consumers=["tracker"]),
                    Event("B", publisher="q"),
                ]
            },
            "events[0], field 'consumers': the tracker follows every event",
        ),
    ],
)
def test_python_tables_are_validated_when_built(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(message)):
        minimal(**changes)


def test_one_machine_per_definition_with_every_row() -> None:
    c = order_choreography.choreography
    assert machine(c) is machine(c)
    m = machine(c)
    assert m.events["PaymentFailed"].transitions["running:charging"][0].dest == (
        "compensating:PaymentFailed"
    )
    assert set(m.states) >= {"pending", "completed", "compensated", "running:fulfilling"}

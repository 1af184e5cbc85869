"""Definitions from files and references: precise errors, nothing half-built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from saga_fsm import (
    DefinitionError,
    InvalidReference,
    StepKind,
    load_definition,
    load_definition_file,
)
from saga_fsm.examples import order_fulfillment

EXAMPLE_TOML = Path(order_fulfillment.__file__).with_suffix(".toml")
ACTION = "saga_fsm.examples.order_fulfillment:reserve_inventory"
UNDO = "saga_fsm.examples.order_fulfillment:release_inventory"


def write(tmp_path: Path, name: str, body: object) -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(body))
    elif name.endswith((".yaml", ".yml")):
        path.write_text(yaml.safe_dump(body))
    else:
        path.write_text(str(body))
    return path


def table(*steps: dict[str, object]) -> dict[str, object]:
    return {"name": "s", "steps": list(steps)}


def test_toml_example_resolves_to_the_same_actions() -> None:
    definition = load_definition_file(EXAMPLE_TOML)
    assert [s.name for s in definition.steps] == [
        s.name for s in order_fulfillment.definition.steps
    ]
    assert definition.steps[0].action is order_fulfillment.reserve_inventory
    assert definition.steps[1].retry.non_retryable == (ValueError,)
    assert definition.steps[2].kind is StepKind.PIVOT
    assert load_definition(str(EXAMPLE_TOML)) == definition


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_json_and_yaml_load_the_same_table(tmp_path: Path, suffix: str) -> None:
    body = table(
        {"name": "a", "action": ACTION, "compensation": UNDO, "retry": {"max_attempts": 2}},
        {"name": "p", "action": ACTION, "kind": "pivot", "timeout": 1.5},
    )
    definition = load_definition_file(write(tmp_path, "s" + suffix, body))
    assert definition.steps[0].retry.max_attempts == 2
    assert definition.steps[1].timeout == 1.5


@pytest.mark.parametrize(
    ("steps", "row", "field", "words", "error"),
    [
        (
            [{"name": "a", "action": ACTION, "compensation": UNDO, "colour": "red"}],
            0,
            None,
            "colour",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": "nope.nothing:here", "compensation": UNDO}],
            0,
            "action",
            "cannot import",
            InvalidReference,
        ),
        (
            [
                {
                    "name": "a",
                    "action": "saga_fsm.examples.order_fulfillment:nothing",
                    "compensation": UNDO,
                }
            ],
            0,
            "action",
            "has no",
            InvalidReference,
        ),
        (
            [{"name": "a", "action": "not a ref", "compensation": UNDO}],
            0,
            "action",
            "package.module:attribute",
            InvalidReference,
        ),
        (
            [
                {
                    "name": "a",
                    "action": "saga_fsm.examples.order_fulfillment:FAST_RETRY",
                    "compensation": UNDO,
                }
            ],
            0,
            "action",
            "not callable",
            InvalidReference,
        ),
        (
            [{"name": "a", "action": ACTION, "compensation": UNDO, "timeout": 0}],
            0,
            "timeout",
            "positive",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": ACTION, "compensation": UNDO, "retry": {"max_attempts": 0}}],
            0,
            "max_attempts",
            "at least 1",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": ACTION, "compensation": UNDO, "retry": {"max_attempts": "3"}}],
            0,
            "retry.max_attempts",
            "expected int",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": ACTION, "compensation": UNDO, "read_only": "no"}],
            0,
            "read_only",
            "expected bool",
            DefinitionError,
        ),
        (
            [
                {
                    "name": "a",
                    "action": ACTION,
                    "compensation": UNDO,
                    "retry": {"non_retryable": ["builtins:len"]},
                }
            ],
            0,
            "non_retryable",
            "not an exception",
            InvalidReference,
        ),
        (
            [
                {"name": "a", "action": ACTION, "compensation": UNDO},
                {"name": "a", "action": ACTION, "compensation": UNDO},
            ],
            1,
            "name",
            "duplicate",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": ACTION, "kind": "retriable"}],
            0,
            "kind",
            "after the pivot",
            DefinitionError,
        ),
        (
            [
                {"name": "a", "action": ACTION, "kind": "pivot"},
                {"name": "b", "action": ACTION, "kind": "pivot"},
            ],
            1,
            "kind",
            "more than one pivot",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": ACTION}],
            0,
            "compensation",
            "needs a compensation",
            DefinitionError,
        ),
        (
            [{"name": "a", "action": ACTION, "kind": "sideways"}],
            0,
            "kind",
            "sideways",
            DefinitionError,
        ),
    ],
)
def test_file_errors_name_row_and_field(tmp_path, steps, row, field, words, error) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "bad.json", table(*steps))
    with pytest.raises(error) as caught:
        load_definition_file(path)
    err = caught.value
    assert err.row == row, str(err)
    if field is not None:
        assert err.field is not None and err.field.endswith(field), str(err)
    assert words in str(err)
    assert str(path) in str(err)


def test_unknown_top_level_key_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="owner"):
        load_definition_file(write(tmp_path, "a.json", {"name": "s", "owner": "me", "steps": []}))
    (tmp_path / "b.toml").write_text("name = [unclosed")
    with pytest.raises(DefinitionError, match="malformed TOML"):
        load_definition_file(tmp_path / "b.toml")
    (tmp_path / "c.txt").write_text("")
    with pytest.raises(DefinitionError, match="unknown file type"):
        load_definition_file(tmp_path / "c.txt")
    with pytest.raises(DefinitionError, match="cannot read"):
        load_definition_file(tmp_path / "missing.yaml")


def test_references_to_modules_and_attributes() -> None:
    assert load_definition("saga_fsm.examples.order_fulfillment") is order_fulfillment.definition
    assert (
        load_definition("saga_fsm.examples.order_fulfillment:definition")
        is order_fulfillment.definition
    )
    with pytest.raises(InvalidReference, match="holds 0 saga definitions"):
        load_definition("saga_fsm.examples")
    with pytest.raises(InvalidReference, match="not a SagaDefinition"):
        load_definition("saga_fsm.examples.order_fulfillment:reserve_inventory")
    with pytest.raises(InvalidReference, match="cannot import"):
        load_definition("no_such_package_xyz")

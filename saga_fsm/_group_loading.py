"""Parallel groups in definition files: a step table with ``branches`` (a ``Parallel``:
``join``, ``max_concurrency``, and a list of step tables per branch) or ``for_each`` (a
``ForEach``: the data key of its list, ``steps``, ``max_concurrency``). Each branch step
is read like any step table; errors name the row, the branch step and the field."""

from __future__ import annotations

from typing import Any

import cattrs

from saga_fsm._definition import Step
from saga_fsm._errors import DefinitionError, InvalidReference
from saga_fsm._groups import ForEach, Parallel, StepGroup

_PARALLEL_KEYS = frozenset({"name", "branches", "join", "max_concurrency"})
_FOR_EACH_KEYS = frozenset({"name", "for_each", "steps", "max_concurrency"})


def is_group_table(table: Any) -> bool:
    return isinstance(table, dict) and ("branches" in table or "for_each" in table)


def load_group(table: dict[str, Any], row: int, source: str) -> StepGroup:
    name: Any = table.get("name")
    parallel = "branches" in table
    allowed = _PARALLEL_KEYS if parallel else _FOR_EACH_KEYS
    unknown = sorted(set(table) - allowed)
    if unknown:
        kind = "a parallel group (branches)" if parallel else "a for_each group"
        raise DefinitionError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for {kind}: it takes"
            f" {', '.join(sorted(allowed))}",
            row=row,
            step=name if isinstance(name, str) else None,
            field=unknown[0],
            source=source,
        )

    def steps_of(raw: Any, where: str, field: str) -> list[Step]:
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            raise DefinitionError(
                "must be a list of step tables/objects",
                row=row,
                step=where,
                field=field,
                source=source,
            )
        return [_branch_step(t, row, f"{where}/{t.get('name', '?')}", source) for t in raw]

    try:
        if parallel:
            branches = table["branches"]
            if not isinstance(branches, dict):
                raise DefinitionError(
                    "must map branch names to lists of step tables", field="branches"
                )
            return Parallel(
                name,
                branches={
                    key: steps_of(value, f"{name}/{key}", f"branches.{key}")
                    for key, value in branches.items()
                },
                join=table.get("join", "all"),
                max_concurrency=table.get("max_concurrency"),
            )
        return ForEach(
            name,
            items=table["for_each"],
            steps=steps_of(table.get("steps"), f"{name}/*", "steps"),
            max_concurrency=table.get("max_concurrency"),
        )
    except DefinitionError as err:
        if err.source is not None:
            raise
        error_type = InvalidReference if isinstance(err, InvalidReference) else DefinitionError
        raise error_type(
            err.reason, row=row, step=err.step or name, field=err.field, source=source
        ) from None


def _branch_step(table: dict[str, Any], row: int, where: str, source: str) -> Step:
    from saga_fsm._loading import (
        _format_exception,
        _StepSpec,
        build_step,
        definition_converter,
    )

    try:
        spec = definition_converter.structure(table, _StepSpec)
    except cattrs.BaseValidationError as err:
        message = cattrs.transform_error(err, format_exception=_format_exception)[0]
        text, _, path = message.rpartition(" @ ")
        field = path.removeprefix("$").lstrip(".") or None
        raise DefinitionError(
            text or message, row=row, step=where, field=field, source=source
        ) from None
    try:
        return build_step(spec, table)
    except DefinitionError as err:
        error_type = InvalidReference if isinstance(err, InvalidReference) else DefinitionError
        raise error_type(err.reason, row=row, step=where, field=err.field, source=source) from None

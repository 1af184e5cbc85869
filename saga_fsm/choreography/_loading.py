"""Choreographies from TOML, YAML or JSON files and from ``package.module:attribute``
references, through saga_fsm's own strict cattrs Converter (unknown keys and mistyped
values refused, errors naming the table, row and field)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cattrs

from saga_fsm._errors import DefinitionError, InvalidReference
from saga_fsm._loading import (
    _FILE_SUFFIXES,
    _format_exception,
    _parse,
    definition_converter,
    resolve_reference,
)
from saga_fsm.choreography._definition import Choreography

_PATH = re.compile(r"^\$\.([a-z_]+)(?:\[(\d+)\])?(?:\.(.+))?$")


def choreography_from_mapping(raw: Any, *, source: str = "<mapping>") -> Choreography:
    """A choreography from parsed file content; every error is one ``DefinitionError``."""
    if not isinstance(raw, dict):
        raise DefinitionError(
            f"expected a table/object at the top, got {type(raw).__name__}", source=source
        )
    try:
        return definition_converter.structure(raw, Choreography)
    except cattrs.BaseValidationError as err:
        invalid = _definition_error(err)
        if invalid is not None:
            raise _sourced(invalid, source) from None
        message = cattrs.transform_error(err, format_exception=_format_exception)[0]
        text, _, path = message.rpartition(" @ ")
        match = _PATH.match(path)
        if match is None:
            raise DefinitionError(text or message, source=source) from None
        table, row, field = match.groups()
        if row is None:
            raise DefinitionError(text, field=table, source=source) from None
        raise DefinitionError(text, field=field, source=f"{source}, {table}[{row}]") from None
    except DefinitionError as err:
        raise _sourced(err, source) from None


def _definition_error(err: BaseException) -> DefinitionError | None:
    """The table's own validation error, raised inside cattrs' structuring."""
    if isinstance(err, DefinitionError):
        return err
    for inner in getattr(err, "exceptions", ()):
        found = _definition_error(inner)
        if found is not None:
            return found
    return None


def _sourced(err: DefinitionError, source: str) -> DefinitionError:
    where = err.source if err.source != "choreography" else None
    return DefinitionError(
        err.reason, field=err.field, source=f"{source}, {where}" if where else source
    )


def load_choreography(ref: str) -> Choreography:
    """A choreography from a file (.toml, .yaml, .yml, .json) or a
    ``package.module:attribute`` reference."""
    if ref.lower().endswith(_FILE_SUFFIXES):
        path = Path(ref)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise DefinitionError(f"cannot read file: {err.strerror}", source=ref) from None
        try:
            raw = _parse(path.suffix.lower(), text)
        except ValueError as err:
            kind = path.suffix[1:].upper()
            raise DefinitionError(
                f"malformed {kind}: {str(err).splitlines()[0]}", source=ref
            ) from None
        return choreography_from_mapping(raw, source=ref)
    value = resolve_reference(ref)
    if not isinstance(value, Choreography):
        raise InvalidReference(f"{ref!r} is a {type(value).__name__}, not a Choreography")
    return value

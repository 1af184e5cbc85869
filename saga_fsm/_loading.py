"""Definitions from files (TOML, YAML, JSON) and from references.

A reference is ``package.module:attribute`` (attribute may be dotted). A file's actions,
compensations and non-retryable exception types are references; the file is read through
saga_fsm's own cattrs Converter, which refuses unknown keys and mistyped values.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs
from attrs import frozen
from cattrs.v import format_exception

from saga_fsm._child import DEFAULT_CHECK_EVERY, ChildSaga
from saga_fsm._definition import (
    DEFAULT_COMPENSATION_RETRY,
    DEFAULT_RETRY,
    UNLIMITED_RETRY,
    RetryPolicy,
    SagaDefinition,
    Step,
    StepKind,
    WaitFor,
    WaitOutcome,
)
from saga_fsm._errors import DefinitionError, InvalidReference

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_FILE_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def resolve_reference(ref: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute."""
    if not isinstance(ref, str) or not _REF.match(ref):
        raise InvalidReference(f"{ref!r} is not a reference of the form package.module:attribute")
    module_name, _, attr_path = ref.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise InvalidReference(f"cannot import module {module_name!r} for {ref!r}: {err}") from None
    for part in attr_path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise InvalidReference(
                f"{ref!r}: module {module_name!r} has no {attr_path!r}"
            ) from None
    return value


# -- the file format --------------------------------------------------------------------


@frozen
class _RetrySpec:
    max_attempts: int | None = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.0
    non_retryable: tuple[str, ...] = ()


@frozen
class _StepSpec:
    name: str
    action: str | None = None
    compensation: str | None = None
    kind: StepKind = StepKind.COMPENSABLE
    retry: _RetrySpec | None = None
    compensation_retry: _RetrySpec | None = None
    timeout: float | None = None
    compensation_timeout: float | None = None
    read_only: bool = False
    transactional: bool = False
    command: str | None = None
    compensation_command: str | None = None
    child: str | None = None
    """A child saga step: the child definition, by reference (``pkg.module:attr``) or
    by the name of one registered where the saga runs."""
    input: tuple[str, ...] | None = None
    output: tuple[str, ...] | None = None
    check_every: float | None = None
    events: dict[str, str] | None = None
    on_timeout: str | None = None
    when: str | None = None


@frozen
class _SagaSpec:
    name: str
    steps: tuple[_StepSpec, ...]
    version: int = 1
    description: str = ""
    reversible: bool = False


def _strict(kind: type, accepts: tuple[type, ...]) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure


definition_converter = cattrs.Converter(forbid_extra_keys=True)
definition_converter.register_structure_hook(bool, _strict(bool, (bool,)))
definition_converter.register_structure_hook(int, _strict(int, (int,)))
definition_converter.register_structure_hook(float, _strict(float, (int, float)))
definition_converter.register_structure_hook(str, _strict(str, (str,)))


def _kind(value: Any, _type: Any) -> StepKind:
    try:
        return StepKind(value)
    except ValueError:
        choices = ", ".join(k.value for k in StepKind)
        raise ValueError(f"unknown kind {value!r} (one of: {choices})") from None


# Registered after ``str``: StepKind is a str subclass and would otherwise be a plain str.
definition_converter.register_structure_hook(StepKind, _kind)


def _format_exception(exc: BaseException, type_: Any) -> str:
    # Our hooks raise ValueError/TypeError with the precise reason: keep it.
    if isinstance(exc, (ValueError, TypeError)) and str(exc):
        return str(exc)
    return format_exception(exc, type_)


_PATH_ROW = re.compile(r"\$\.steps\[(\d+)\](?:\.([A-Za-z_]+))?")


def _field_error(message: str, source: str, raw_steps: Any) -> DefinitionError:
    text, _, path = message.rpartition(" @ ")
    match = _PATH_ROW.match(path)
    if match is None:
        field = path.removeprefix("$.").split(".")[0] or None
        return DefinitionError(text or message, field=field, source=source)
    row = int(match.group(1))
    name = None
    if isinstance(raw_steps, list) and row < len(raw_steps) and isinstance(raw_steps[row], dict):
        name = raw_steps[row].get("name")
    field = match.group(2)
    rest = path[match.end() :].lstrip(".")
    if field and rest:
        field = f"{field}.{rest}"
    return DefinitionError(text, row=row, step=name, field=field, source=source)


def _retry(spec: _RetrySpec | None, raw: Any, default: RetryPolicy) -> RetryPolicy:
    """The policy a file's table describes; an omitted ``max_attempts`` keeps the
    default for the step's kind (three, unlimited for retriable steps)."""
    if spec is None:
        return default
    types = []
    for ref in spec.non_retryable:
        value = _resolve_field(ref, "non_retryable")
        if not (isinstance(value, type) and issubclass(value, BaseException)):
            raise InvalidReference(f"{ref!r} is not an exception type", field="non_retryable")
        types.append(value)
    values = attrs.asdict(spec, recurse=False)
    values["non_retryable"] = tuple(types)
    if not (isinstance(raw, dict) and "max_attempts" in raw):
        values["max_attempts"] = default.max_attempts
    return RetryPolicy(**values)


def _resolve_field(ref: str, field: str) -> Any:
    try:
        return resolve_reference(ref)
    except InvalidReference as err:
        raise InvalidReference(err.reason, field=field) from None


def _callable(ref: str | None, field: str) -> Any:
    if ref is None:
        return None
    value = _resolve_field(ref, field)
    if not callable(value):
        raise InvalidReference(f"{ref!r} is not callable", field=field)
    return value


def _check_steps_shape(raw_steps: Any, source: str) -> None:
    """``steps`` is a list of tables: said plainly, before the converter would read a
    string's characters or a table's keys as steps."""
    if raw_steps is None:
        return
    if not isinstance(raw_steps, list | tuple):
        raise DefinitionError(
            f"must be a list of step tables/objects, got {type(raw_steps).__name__}"
            f" {raw_steps!r:.40}",
            field="steps",
            source=source,
        )
    for row, raw_step in enumerate(raw_steps):
        if not isinstance(raw_step, dict):
            raise DefinitionError(
                f"a step must be a table/object, got {type(raw_step).__name__} {raw_step!r:.40}",
                row=row,
                source=source,
            )


def _child_step(spec: _StepSpec, raw_step: Any, forward_default: RetryPolicy) -> ChildSaga:
    """A ``child = ...`` row: a ``ChildSaga`` (a reference is loaded, a name kept)."""
    assert spec.child is not None
    for name in ("action", "compensation", "command", "compensation_command"):
        if getattr(spec, name) is not None:
            raise DefinitionError(
                f"a child saga step runs its child definition: it takes no {name}", field=name
            )
    child: SagaDefinition | str = spec.child
    if ":" in spec.child:
        child = _resolve_field(spec.child, "child")
        if not isinstance(child, SagaDefinition):
            raise InvalidReference(
                f"{spec.child!r} is {type(child).__name__}, not a SagaDefinition", field="child"
            )
    return ChildSaga(
        spec.name,
        retry=_retry(spec.retry, raw_step.get("retry"), forward_default),
        definition=child,
        input=spec.input,
        output=spec.output,
        check_every=DEFAULT_CHECK_EVERY if spec.check_every is None else spec.check_every,
        **_common(spec),
    )


def _common(spec: _StepSpec) -> dict[str, Any]:
    """The fields every kind of step takes as they are written."""
    return {
        "kind": spec.kind,
        "timeout": spec.timeout,
        "compensation_timeout": spec.compensation_timeout,
        "read_only": spec.read_only,
        "transactional": spec.transactional,
    }


def _wait(spec: _StepSpec) -> WaitFor:
    for name in ("action", "compensation", "command", "compensation_command"):
        if getattr(spec, name) is not None:
            raise DefinitionError(f"a wait runs nothing, so it has no {name}", field=name)
    assert spec.events is not None
    return WaitFor(
        spec.name,
        events=spec.events,
        on_timeout=spec.on_timeout or WaitOutcome.FAIL,
        when=spec.when,
        **_common(spec),
    )


def build_step(step_spec: _StepSpec, raw_step: Any) -> Step:
    """The step a file's step table describes (its references resolved): a wait, a
    child saga step, or a local or remote step."""
    if step_spec.events is not None:
        return _wait(step_spec)
    for name in ("on_timeout", "when"):
        if getattr(step_spec, name) is not None:
            raise DefinitionError(f"only a wait (a step with events) has {name}", field=name)
    forward_default = UNLIMITED_RETRY if step_spec.kind is StepKind.RETRIABLE else DEFAULT_RETRY
    if step_spec.child is not None:
        return _child_step(step_spec, raw_step, forward_default)
    return Step(
        step_spec.name,
        _callable(step_spec.action, "action"),
        _callable(step_spec.compensation, "compensation"),
        retry=_retry(step_spec.retry, raw_step.get("retry"), forward_default),
        compensation_retry=_retry(
            step_spec.compensation_retry,
            raw_step.get("compensation_retry"),
            DEFAULT_COMPENSATION_RETRY,
        ),
        command=step_spec.command,
        compensation_command=step_spec.compensation_command,
        **_common(step_spec),
    )


def definition_from_mapping(raw: Any, *, source: str = "<mapping>") -> SagaDefinition:
    """Build a definition from parsed file content. Errors name the step row and field."""
    if not isinstance(raw, dict):
        raise DefinitionError(
            f"expected a table/object at the top, got {type(raw).__name__}", source=source
        )
    raw_steps: Any = raw.get("steps")
    _check_steps_shape(raw_steps, source)
    # Parallel groups (a table with ``branches`` or ``for_each``) are read on their own
    # (see saga_fsm._group_loading); the other rows through the converter.
    from saga_fsm._group_loading import is_group_table, load_group

    rows = list(raw_steps) if isinstance(raw_steps, list | tuple) else []
    plain = [n for n, table in enumerate(rows) if not is_group_table(table)]
    try:
        spec = definition_converter.structure(
            {**raw, "steps": [rows[n] for n in plain]} if rows else raw, _SagaSpec
        )
    except cattrs.BaseValidationError as err:
        messages = cattrs.transform_error(err, format_exception=_format_exception)
        error = _field_error(messages[0], source, [rows[n] for n in plain])
        if error.row is not None:
            error = DefinitionError(
                error.reason,
                row=plain[error.row],
                step=error.step,
                field=error.field,
                source=source,
            )
        raise error from None
    specs = dict(zip(plain, spec.steps, strict=True))
    steps: list[Step] = []
    for row, raw_step in enumerate(rows):
        if row not in specs:
            steps.append(load_group(raw_step, row, source))
            continue
        step_spec = specs[row]
        try:
            steps.append(build_step(step_spec, raw_step))
        except DefinitionError as err:
            error_type = InvalidReference if isinstance(err, InvalidReference) else DefinitionError
            raise error_type(
                err.reason, row=row, step=step_spec.name, field=err.field, source=source
            ) from None
    try:
        return SagaDefinition(
            spec.name,
            tuple(steps),
            version=spec.version,
            description=spec.description,
            reversible=spec.reversible,
        )
    except DefinitionError as err:
        raise DefinitionError(
            err.reason, row=err.row, step=err.step, field=err.field, source=source
        ) from None


def load_definition_file(path: str | Path) -> SagaDefinition:
    """Read a TOML, YAML or JSON definition file."""
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise DefinitionError(
            f"unknown file type {suffix!r}: use .toml, .yaml, .yml or .json", source=source
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DefinitionError(f"cannot read file: {err.strerror}", source=source) from None
    except UnicodeDecodeError as err:
        raise DefinitionError(
            f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})",
            source=source,
        ) from None
    try:
        raw = _parse(suffix, text)
    except ValueError as err:
        reason = str(err).splitlines()[0]
        raise DefinitionError(f"malformed {suffix[1:].upper()}: {reason}", source=source) from None
    return definition_from_mapping(raw, source=source)


def _parse(suffix: str, text: str) -> Any:
    """The file's data; a ``ValueError`` (the parsers' own, or YAML's re-raised as one)
    when it is malformed. YAML is imported only for YAML files."""
    if suffix == ".toml":
        return tomllib.loads(text)
    if suffix == ".json":
        return json.loads(text)
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err)) from None


def load_definition(ref: str) -> SagaDefinition:
    """A definition from a file path, ``package.module:attribute``, or ``package.module``
    when that module holds exactly one ``SagaDefinition``."""
    if ref.lower().endswith(_FILE_SUFFIXES) or Path(ref).is_file():
        return load_definition_file(ref)
    if ":" in ref:
        value = resolve_reference(ref)
        if not isinstance(value, SagaDefinition):
            raise InvalidReference(f"{ref!r} is a {type(value).__name__}, not a SagaDefinition")
        return value
    if not re.match(r"^[A-Za-z_][\w.]*$", ref):
        raise InvalidReference(f"{ref!r} is neither a definition file nor a module reference")
    try:
        module = importlib.import_module(ref)
    except ImportError as err:
        raise InvalidReference(f"cannot import module {ref!r}: {err}") from None
    found = {id(v): v for v in vars(module).values() if isinstance(v, SagaDefinition)}
    if len(found) != 1:
        raise InvalidReference(
            f"module {ref!r} holds {len(found)} saga definitions; name one as {ref}:attribute"
        )
    return next(iter(found.values()))

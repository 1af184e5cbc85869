"""Child sagas: a step whose work is another saga definition, started as a child of the
saga that runs the step and waited for, durably and with no lease held.

The child's outcome is the step's: completed, the step succeeded (the child's final data,
or the keys ``output`` names, merged into the parent's); compensated, the step failed
for good (the child undid itself: nothing of the step is left to undo). Compensating the
parent compensates a completed child with the child's own compensations, which needs a
``reversible`` child definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from attrs import field, frozen

from saga_fsm._definition import _NAME, SagaDefinition, Step, StepKind, _positive
from saga_fsm._errors import DefinitionError

ChildInput: TypeAlias = Callable[[Mapping[str, Any]], Mapping[str, Any]] | tuple[str, ...] | None
DEFAULT_CHECK_EVERY = 30.0


def _input(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _output(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None or isinstance(value, str) else tuple(value)


def _keys_problem(value: Any) -> str | None:
    if not isinstance(value, tuple) or not all(isinstance(k, str) and k for k in value):
        return f"must be a list of data keys, got {value!r}"
    return None


@frozen
class ChildSaga(Step):
    """A step that starts ``definition`` as a child saga and waits for it to finish.

    ``definition`` is a ``SagaDefinition`` or the name of one the worker serves (its
    newest version). ``input`` makes the child's data from the parent's: a function of
    the parent's data, a list of keys to copy (those present), or None for all of it.
    ``output`` lists the keys of the child's final data merged into the parent's when it
    completes (None: all of it). While the child runs nobody holds the parent: the
    worker that finishes the child applies its outcome to the parent at once, and the
    parent looks at its child every ``check_every`` seconds as well, so an outcome whose
    notice was lost (a crash in between) is only late.

    A compensable ``ChildSaga`` (the default kind) needs a ``reversible`` child, whose
    compensations undo it after it completed; a pivot or retriable ``ChildSaga`` never is
    compensated and may start any definition.
    """

    definition: SagaDefinition | str = field(kw_only=True)
    input: ChildInput = field(default=None, kw_only=True, converter=_input)
    output: tuple[str, ...] | None = field(default=None, kw_only=True, converter=_output)
    check_every: float = field(default=DEFAULT_CHECK_EVERY, kw_only=True)

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"must start with a letter or '_' and hold only letters, digits, '_', '.', '-';"
                f" got {self.name!r}",
                field="name",
            )
        for name in ("action", "compensation", "command", "compensation_command"):
            if getattr(self, name) is not None:
                raise DefinitionError(
                    f"a child saga step runs its child definition: it takes no {name}",
                    field=name,
                )
        if self.transactional:
            raise DefinitionError(
                "a child saga step cannot be transactional: its child commits on its own",
                field="transactional",
            )
        for name in ("timeout", "compensation_timeout"):
            if getattr(self, name) is not None:
                raise DefinitionError(
                    f"a child saga step waits for its child to finish: {name} is not"
                    " supported (give the child's own steps timeouts)",
                    field=name,
                )
        if self.read_only:
            raise DefinitionError(
                "a child saga may act: it is not read_only (make the step a pivot or"
                " retriable when the child cannot be undone)",
                field="read_only",
            )
        definition = self.definition
        if isinstance(definition, str):
            if not _NAME.match(definition):
                raise DefinitionError(f"invalid saga name {definition!r}", field="definition")
        elif not isinstance(definition, SagaDefinition):
            raise DefinitionError(
                f"must be a SagaDefinition or the name of one, got {definition!r}",
                field="definition",
            )
        if self.input is not None and not callable(self.input):
            problem = _keys_problem(self.input)
            if problem is not None:
                raise DefinitionError(
                    problem.replace("must be", "must be a function of the parent's data or"),
                    field="input",
                )
        if self.output is not None:
            problem = _keys_problem(self.output)
            if problem is not None:
                raise DefinitionError(problem, field="output")
        _positive("step", "check_every", self.check_every, allow_none=False)
        if self.kind is StepKind.RETRIABLE and (
            self.retry.max_attempts is not None or self.retry.non_retryable
        ):
            raise DefinitionError(
                "a retriable step is retried until it succeeds: use RetryPolicy(max_attempts=None)",
                field="retry",
            )
        if isinstance(definition, SagaDefinition):
            problem = undo_problem(self, definition)
            if problem is not None:
                raise DefinitionError(problem, field="definition")

    def check_row(self, row: int, definition: SagaDefinition) -> None:
        child = self.definition
        if (isinstance(child, str) and child == definition.name) or child is definition:
            raise DefinitionError(
                "a saga cannot start itself as a child", row=row, step=self.name, field="definition"
            )

    @property
    def has_action(self) -> bool:
        return True

    @property
    def compensable(self) -> bool:
        """Compensable steps compensate their completed child (it is reversible)."""
        return self.kind is StepKind.COMPENSABLE

    @property
    def child_name(self) -> str:
        child = self.definition
        return child if isinstance(child, str) else child.name

    def child_data(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The child's data, made from the parent's (``input``)."""
        chosen = self.input
        if chosen is None:
            return dict(data)
        if isinstance(chosen, tuple):
            return {key: data[key] for key in chosen if key in data}
        made = chosen(data)
        if not isinstance(made, Mapping):
            raise TypeError(f"input of {self.name!r} returned {type(made).__name__}, not a mapping")
        return dict(made)

    def result_of(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """What of a completed child's data is merged into the parent's (``output``)."""
        if self.output is None:
            return dict(data)
        return {key: data[key] for key in self.output if key in data}


def undo_problem(step: ChildSaga, child: SagaDefinition) -> str | None:
    """Why ``step`` cannot run ``child`` (None: it can): a compensable step compensates
    its child after it completed, which only a ``reversible`` definition allows."""
    if step.kind is not StepKind.COMPENSABLE or child.reversible:
        return None
    why = (
        f"its pivot {child.steps[child.pivot_index].name!r} cannot be undone"
        if child.pivot_index is not None
        else "it is not marked reversible=True"
    )
    return (
        f"compensating this step compensates a completed child {child.name!r}, but {why}:"
        " make the child reversible, or make this step a pivot or retriable"
    )


def child_id(parent_id: str, step: str, attempt: int) -> str:
    """The saga id of the child that attempt ``attempt`` of ``step`` starts: derived, so
    a decision carried out twice (a crash, a lost race) starts one child."""
    return f"{parent_id}:{step}:{attempt}"

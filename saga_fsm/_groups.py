"""Parallel groups as rows of a state table: ``Parallel`` (named branches, each a
sequence of steps) and ``ForEach`` (one branch per item of a list in the saga data).

A group is a ``Step`` subclass, so it sits in ``SagaDefinition.steps`` like any row and
the saga-level flow names it (``running:reserve_all``, ``compensating:reserve_all``).
Each branch runs as a small flow of its own, compiled from a synthetic definition: the
branch's steps followed by the ``_join`` step, where a branch that reached the end
waits for the group to decide (see ``saga_fsm._parallel``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from attrs import field, frozen

from saga_fsm._child import ChildSaga
from saga_fsm._definition import SagaDefinition, Step, StepContext, StepKind, WaitFor
from saga_fsm._errors import DefinitionError
from saga_fsm._lifecycle import TransitionRow

JOIN = "_join"
"""The step each branch flow ends in: reached means the branch is done and waits for
the group; a group that compensates refuses it, which undoes the branch."""

_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def _arrived(_ctx: StepContext) -> None:  # pragma: no cover - never called
    return None


_JOIN_STEP = Step(JOIN, _arrived, compensation=_arrived)


def _branch_steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps) if not isinstance(steps, Step) else (steps,)


def _branches(value: Any) -> Any:
    """``{"a": [Step, ...], ...}`` (or its items) as a tuple of (name, steps) pairs,
    hashable like the rest of a definition. Anything else is kept as given, for
    validation to refuse with the group's name."""
    if isinstance(value, Mapping):
        value = list(value.items())
    if not isinstance(value, list | tuple):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, tuple) and len(item) == 2:
            key, steps = item
            if isinstance(steps, Iterable) and not isinstance(steps, str | Step):
                item = (key, tuple(steps))
        out.append(item)
    return tuple(out)


@frozen
class StepGroup(Step):
    """What ``Parallel`` and ``ForEach`` share: branches run concurrently, at most
    ``max_concurrency`` at a time (None: all at once)."""

    max_concurrency: int | None = field(default=None, kw_only=True)

    is_group: ClassVar[bool] = True

    @property
    def has_action(self) -> bool:
        return True

    @property
    def compensable(self) -> bool:
        # Its branches are undone when it fails or a later step does: the group always
        # has a compensating state, even when nothing in it turns out to need undoing.
        return True

    @property
    def needed(self) -> int | None:
        """How many branches must reach the join (None: all of them)."""
        return None

    def branch_keys(self) -> tuple[str, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    def steps_of(self, key: str) -> tuple[Step, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    def all_branch_steps(self) -> tuple[tuple[str, tuple[Step, ...]], ...]:
        """(branch, steps) of every branch as drawn and fingerprinted (``ForEach``: one
        template branch, ``*``)."""
        raise NotImplementedError  # pragma: no cover - overridden

    def branch_step(self, key: str, name: str) -> Step:
        for step in self.steps_of(key):
            if step.name == name:
                return step
        raise KeyError(f"{self.name}/{key}/{name}")

    def _validate(self) -> None:
        for name in ("action", "compensation", "command", "compensation_command"):
            if getattr(self, name) is not None:
                raise DefinitionError(
                    f"a group runs its branches' steps: it has no {name} of its own", field=name
                )
        if self.kind is not StepKind.COMPENSABLE:
            raise DefinitionError(
                f"a group cannot be a {self.kind.value} step: its branches are compensable",
                field="kind",
            )
        for name in ("timeout", "compensation_timeout"):
            if getattr(self, name) is not None:
                raise DefinitionError(
                    f"a group has no {name}: set timeouts on its branches' steps", field=name
                )
        if self.read_only or self.transactional:
            which = "read_only" if self.read_only else "transactional"
            raise DefinitionError(f"a group cannot be {which}", field=which)
        super()._validate()
        mc = self.max_concurrency
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            raise DefinitionError(
                f"must be a whole number >= 1 or None, got {mc!r}", field="max_concurrency"
            )

    def _check_branch(self, key: str, steps: tuple[Step, ...]) -> None:
        where = f"{self.name}/{key}"
        if not steps:
            raise DefinitionError(f"branch {key!r} has no steps", field="branches")
        seen: set[str] = set()
        for step in steps:
            if not isinstance(step, Step):
                raise DefinitionError(
                    f"branch {key!r}: must be a Step, got {step!r}", field="branches"
                )
            full = f"{where}/{getattr(step, 'name', '?')}"
            if step.is_group:
                raise DefinitionError(
                    "groups do not nest: a branch holds plain steps", step=full, field="branches"
                )
            if isinstance(step, ChildSaga):
                raise DefinitionError(
                    "a child saga may not sit inside a group: put it before or after the group",
                    step=full,
                    field="definition",
                )
            if isinstance(step, WaitFor):
                raise DefinitionError(
                    "a wait may not sit inside a group: put it before or after the group",
                    step=full,
                    field="events",
                )
            if step.kind is StepKind.PIVOT:
                raise DefinitionError(
                    "a pivot may not sit inside a group: when one branch fails the others are"
                    " compensated, and a pivot that succeeded can never be",
                    step=full,
                    field="kind",
                )
            if step.kind is not StepKind.COMPENSABLE:
                raise DefinitionError(
                    f"a {step.kind.value} step may not sit inside a group: its branches come"
                    " before the pivot, where every step can be compensated",
                    step=full,
                    field="kind",
                )
            if step.transactional:
                raise DefinitionError(
                    "transactional steps are not supported inside a group",
                    step=full,
                    field="transactional",
                )
            if step.name == JOIN:
                raise DefinitionError(
                    f"{JOIN!r} is reserved for the branch's join", step=full, field="name"
                )
            if step.name in seen:
                raise DefinitionError(
                    f"duplicate step name in branch {key!r}", step=full, field="name"
                )
            seen.add(step.name)

    def table(self) -> dict[str, Any]:
        """What a saga's fingerprint hashes of this group, besides its name and kind."""
        return {
            "branches": [
                [
                    key,
                    [
                        {
                            "name": s.name,
                            "compensable": s.compensable,
                            "read_only": s.read_only,
                            "type": type(s).__name__,
                        }
                        for s in steps
                    ],
                ]
                for key, steps in self.all_branch_steps()
            ],
            "join": self.needed if self.needed is not None else "all",
        }


@frozen
class Parallel(StepGroup):
    """Named branches that run concurrently, each a sequence of steps.

    ``join="all"``: the group succeeds once every branch reached its end, and fails as
    soon as one branch fails for good. ``join="any"`` (or a number k): it succeeds once
    one (k) branches reached their end; the branches still under way are then cancelled
    (each settles its step in flight, then is compensated) before the saga goes on. It
    fails once too few branches are left to get there.

    What a branch's steps return is merged into the branch's own data (later steps of
    the branch see it); the group's result, merged into the saga data when it
    succeeds, is every branch's data merged in branch order (``any``/k: the branches
    that reached the join).
    """

    branches: tuple[tuple[str, tuple[Step, ...]], ...] = field(kw_only=True, converter=_branches)
    join: str | int = field(default="all", kw_only=True)

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.branches, tuple):
            raise DefinitionError(
                f"must map branch names to lists of steps, got {self.branches!r}",
                field="branches",
            )
        if not self.branches:
            raise DefinitionError("a parallel group needs at least one branch", field="branches")
        keys: set[str] = set()
        for item in self.branches:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], tuple)):
                raise DefinitionError(
                    f"must map branch names to lists of steps, got {item!r}", field="branches"
                )
            key, steps = item
            if not isinstance(key, str) or not _KEY.match(key):
                raise DefinitionError(
                    f"branch names are letters, digits, '_', '.' and '-', got {key!r}",
                    field="branches",
                )
            if key in keys:
                raise DefinitionError(f"duplicate branch name {key!r}", field="branches")
            keys.add(key)
            self._check_branch(key, steps)
        join = self.join
        if join in ("all", "any"):
            return
        if isinstance(join, bool) or not isinstance(join, int):
            raise DefinitionError(
                f'must be "all", "any" or a number of branches, got {join!r}', field="join"
            )
        if not 1 <= join <= len(self.branches):
            raise DefinitionError(
                f"must be between 1 and the number of branches ({len(self.branches)}), got {join}",
                field="join",
            )

    @property
    def needed(self) -> int | None:
        if self.join == "all":
            return None
        return 1 if self.join == "any" else int(self.join)

    def branch_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.branches)

    def steps_of(self, key: str) -> tuple[Step, ...]:
        for name, steps in self.branches:
            if name == key:
                return steps
        raise KeyError(f"{self.name}/{key}")

    def all_branch_steps(self) -> tuple[tuple[str, tuple[Step, ...]], ...]:
        return self.branches


@frozen
class ForEach(StepGroup):
    """A map over the list ``data[items]``: one branch per item, keyed by its index
    (``"0"``, ``"1"``, ...), each running ``steps``, at most ``max_concurrency`` at a
    time. Every branch must reach its end (join "all").

    A branch's steps see the saga data with ``item`` (the list element) and
    ``item_index`` (its index) added, and what earlier steps of the same branch
    returned. The group's result is ``{name: [each branch's data, by index]}``. A
    missing or non-list ``data[items]`` fails the group (nothing ran, nothing to undo);
    an empty list succeeds at once.
    """

    items: str = field(kw_only=True)
    steps: tuple[Step, ...] = field(kw_only=True, converter=_branch_steps)

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.items, str) or not self.items:
            raise DefinitionError(
                f"must name a list in the saga data, got {self.items!r}", field="items"
            )
        self._check_branch("*", self.steps)

    def branch_keys(self) -> tuple[str, ...]:  # pragma: no cover - keys come from the data
        return ()

    def steps_of(self, key: str) -> tuple[Step, ...]:
        return self.steps

    def all_branch_steps(self) -> tuple[tuple[str, tuple[Step, ...]], ...]:
        return (("*", self.steps),)

    def table(self) -> dict[str, Any]:
        return {**super().table(), "items": self.items}


@functools.cache
def branch_definition(group: StepGroup, key: str) -> SagaDefinition:
    """The synthetic definition a branch's flow is compiled from: its steps, then the
    join. One per branch of a ``Parallel``; one for every item of a ``ForEach``."""
    suffix = "each" if isinstance(group, ForEach) else key
    return SagaDefinition(f"{group.name}.{suffix}", (*group.steps_of(key), _JOIN_STEP))


def group_rows(
    step: StepGroup,
    here: str,
    undoing: str,
    forward: str,
    forward_effect: str,
    undo_before: str,
    undo_before_effect: str,
    failed: str,
) -> list[TransitionRow]:
    """The saga-level rows of a group at ``here`` (``running:<group>``) and ``undoing``
    (``compensating:<group>``). Branch events are internal ``branch_progress``
    transitions; the group's outcome is fired as ``step_succeeded`` / ``step_failed``
    (which always compensates the group: something in it may have acted) and, while it
    is undone, ``compensation_succeeded`` / ``compensation_failed`` (a branch whose
    compensation gave up parks the saga there)."""
    return [
        TransitionRow(
            "step_succeeded",
            here,
            forward,
            unless=["cancel_requested"],
            effects=["record_success", forward_effect],
        ),
        TransitionRow(
            "step_failed",
            here,
            undoing,
            effects=["record_failure", "begin_compensation", "run_compensation"],
        ),
        TransitionRow("branch_progress", here, None, effects=["branch_progress"]),
        TransitionRow("cancel", here, None, effects=["request_cancel", "branch_progress"]),
        TransitionRow("branch_progress", undoing, None, effects=["branch_progress"]),
        TransitionRow(
            "compensation_succeeded",
            undoing,
            undo_before,
            effects=["record_compensated", undo_before_effect],
        ),
        TransitionRow(
            "compensation_failed", undoing, failed, effects=["record_compensation_failure", "park"]
        ),
        TransitionRow(
            "retry",
            failed,
            undoing,
            conditions=["parked_here"],
            effects=["resume_parked", "run_compensation"],
        ),
    ]

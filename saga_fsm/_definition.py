"""Saga definitions: the state table a user writes, validated when it is built."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from attrs import Factory, field, frozen

from saga_fsm._errors import DefinitionError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# The same rule as saga_fsm.messaging.check_channel (the core does not import messaging).
_CHANNEL = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class StepKind(StrEnum):
    """Garcia-Molina & Salem's kinds, as Richardson names them."""

    COMPENSABLE = "compensable"
    """Undone by its compensation when a later step fails."""
    PIVOT = "pivot"
    """The go/no-go step: once it succeeds the saga can only go forward."""
    RETRIABLE = "retriable"
    """After the pivot: retried until it succeeds, never compensated."""


@frozen
class StepContext:
    """What an action or compensation receives."""

    saga_id: str
    step: str
    attempt: int
    idempotency_key: str
    """``{saga_id}:{step}`` (``…:compensate`` for compensations): the same on every attempt."""
    correlation_id: str | None
    data: Mapping[str, Any]
    compensating: bool = False
    connection: Any = None
    """For a transactional step, the open transaction its writes join (a psycopg
    ``AsyncConnection`` on PostgreSQL, a ``sqlite3.Connection`` on SQLite): the same one
    that writes the step's transition. Never commit or roll back on it. Otherwise None."""


ActionResult: TypeAlias = Mapping[str, Any] | None
Action: TypeAlias = Callable[[StepContext], ActionResult | Awaitable[ActionResult]]


def _seconds(value: Any) -> Any:
    """A timeout as seconds: a ``timedelta`` is converted, anything else checked as given."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def _positive(owner: str, name: str, value: float | None, *, allow_none: bool) -> None:
    if value is None:
        if not allow_none:
            raise DefinitionError(f"{owner} must be set", field=name)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(f"must be a number, got {value!r}", field=name)
    if not math.isfinite(value) or value <= 0:
        raise DefinitionError(f"must be a positive finite number, got {value!r}", field=name)


@frozen
class RetryPolicy:
    """How often and how fast a step (or compensation) is retried after a transient failure.

    ``max_attempts=None`` retries without limit. The delay after attempt *n* is
    ``min(initial_interval * backoff_coefficient ** (n - 1), max_interval)``, shortened by
    up to ``jitter`` (a fraction) with a deterministic spread per saga, step and attempt.
    Exceptions of a ``non_retryable`` type are permanent failures.
    """

    max_attempts: int | None = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.0
    non_retryable: tuple[type[BaseException], ...] = field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None:
            if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
                raise DefinitionError(
                    f"must be a whole number or None, got {self.max_attempts!r}",
                    field="max_attempts",
                )
            if self.max_attempts < 1:
                raise DefinitionError(
                    f"must be at least 1, got {self.max_attempts!r}", field="max_attempts"
                )
        _positive("retry", "initial_interval", self.initial_interval, allow_none=False)
        _positive("retry", "max_interval", self.max_interval, allow_none=False)
        if not isinstance(self.backoff_coefficient, (int, float)) or self.backoff_coefficient < 1:
            raise DefinitionError(
                f"must be >= 1, got {self.backoff_coefficient!r}", field="backoff_coefficient"
            )
        if self.max_interval < self.initial_interval:
            raise DefinitionError(
                f"must be >= initial_interval ({self.initial_interval}), got {self.max_interval}",
                field="max_interval",
            )
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise DefinitionError(f"must be between 0 and 1, got {self.jitter!r}", field="jitter")
        for exc_type in self.non_retryable:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise DefinitionError(
                    f"must list exception types, got {exc_type!r}", field="non_retryable"
                )

    def allows_attempt(self, attempts_made: int) -> bool:
        return self.max_attempts is None or attempts_made < self.max_attempts

    def delay(self, attempt: int, salt: str) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based). Pure: no clock, no RNG."""
        base = min(
            self.initial_interval * self.backoff_coefficient ** (attempt - 1), self.max_interval
        )
        if not self.jitter:
            return base
        digest = hashlib.blake2b(f"{salt}:{attempt}".encode(), digest_size=8).digest()
        spread = int.from_bytes(digest, "big") / 2**64
        return base * (1 - self.jitter * spread)


DEFAULT_RETRY = RetryPolicy()
UNLIMITED_RETRY = RetryPolicy(max_attempts=None)
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5)


def _default_retry(step: Step) -> RetryPolicy:
    return UNLIMITED_RETRY if step.kind is StepKind.RETRIABLE else DEFAULT_RETRY


@frozen
class Step:
    """One row of the state table.

    A step may have no compensation only when it is ``read_only`` (nothing to undo), a
    pivot, or retriable. A step may have only a compensation (no action): the "create
    pending / reject" shape, where the forward work happened when the saga was started.

    A remote step names a ``command`` channel instead of an ``action`` (and a
    ``compensation_command`` instead of a ``compensation``): the command is sent through
    the saga store's outbox and the saga waits, durably and with no lease held, for the
    participant's reply until ``timeout`` (the compensation until
    ``compensation_timeout``, else ``timeout``). A remote step needs a timeout: a reply
    that never comes is a timeout, never a saga stuck for ever.
    """

    name: str
    action: Action | None = None
    compensation: Action | None = None
    kind: StepKind = field(default=StepKind.COMPENSABLE, converter=StepKind)
    retry: RetryPolicy = field(default=Factory(_default_retry, takes_self=True))
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    timeout: float | None = field(default=None, converter=_seconds)
    """Seconds (or a ``timedelta``) an attempt may take."""
    compensation_timeout: float | None = field(default=None, converter=_seconds)
    read_only: bool = False
    transactional: bool = False
    """The action and compensation are SQL in the saga store's own database: each runs
    inside the transaction that writes its outcome, so its writes commit exactly once,
    together with the transition, or not at all (see ``ctx.connection``)."""
    command: str | None = None
    compensation_command: str | None = None

    is_group: ClassVar[bool] = False
    """A parallel group (``Parallel``, ``ForEach``): a row whose work is its branches."""

    def __attrs_post_init__(self) -> None:
        try:
            self._validate()
        except DefinitionError as err:
            if err.step is not None:
                raise
            raise DefinitionError(err.reason, step=self.name, field=err.field) from None

    def _validate(self) -> None:
        _check_name(self.name)
        for name in ("action", "compensation"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise DefinitionError(f"must be callable, got {value!r}", field=name)
        for name in ("retry", "compensation_retry"):
            if not isinstance(getattr(self, name), RetryPolicy):
                raise DefinitionError("must be a RetryPolicy", field=name)
        if not isinstance(self.transactional, bool):
            raise DefinitionError(
                f"must be true or false, got {self.transactional!r}", field="transactional"
            )
        _positive("step", "timeout", self.timeout, allow_none=True)
        _positive("step", "compensation_timeout", self.compensation_timeout, allow_none=True)
        self._validate_remote()
        if not self.has_action and not self.compensable:
            raise DefinitionError("a step needs an action, a compensation, or both", field="action")
        if self.kind is StepKind.COMPENSABLE:
            if not self.compensable and not self.read_only:
                raise DefinitionError(
                    "a compensable step needs a compensation (set read_only=True when there is"
                    " nothing to undo)",
                    field="compensation",
                )
            if self.compensable and self.read_only:
                raise DefinitionError(
                    "a read_only step has nothing to undo, yet has a compensation",
                    field="compensation",
                )
        elif self.kind is StepKind.RETRIABLE and (
            self.retry.max_attempts is not None or self.retry.non_retryable
        ):
            bound = (
                f"max_attempts={self.retry.max_attempts}"
                if self.retry.max_attempts is not None
                else f"non_retryable={self.retry.non_retryable!r}"
            )
            raise DefinitionError(
                f"retriable step {self.name!r} is retried until it succeeds, yet its retry"
                f" policy has {bound}: use RetryPolicy(max_attempts=None) and no"
                " non_retryable types",
                step=self.name,
                field="retry",
            )
        if self.kind is not StepKind.COMPENSABLE and self.compensable:
            which = "compensation" if self.compensation is not None else "compensation_command"
            raise DefinitionError(
                f"a {self.kind.value} step is never compensated, so it cannot have a {which}",
                field=which,
            )
        if self.kind is not StepKind.COMPENSABLE and not self.has_action:
            raise DefinitionError(
                f"a {self.kind.value} step needs an action or a command", field="action"
            )

    def _validate_remote(self) -> None:
        for local, remote in (("action", "command"), ("compensation", "compensation_command")):
            channel = getattr(self, remote)
            if channel is None:
                continue
            if getattr(self, local) is not None:
                raise DefinitionError(
                    f"a step is either local ({local}) or remote ({remote}), not both",
                    field=remote,
                )
            if not isinstance(channel, str) or not _CHANNEL.match(channel) or len(channel) > 200:
                raise DefinitionError(
                    "must be a channel name: dot-separated tokens of letters, digits, '_'"
                    f" and '-', got {channel!r}",
                    field=remote,
                )
        if self.transactional and (self.command or self.compensation_command):
            raise DefinitionError(
                "a remote step cannot be transactional: its work commits in another service",
                field="transactional",
            )
        if self.command is not None and self.timeout is None:
            raise DefinitionError(
                "a remote step needs a timeout: a reply that never comes must time out",
                field="timeout",
            )
        if self.compensation_command is not None and self.remote_compensation_timeout is None:
            raise DefinitionError(
                "a remote compensation needs compensation_timeout (or timeout)",
                field="compensation_timeout",
            )

    def check_row(self, row: int, definition: SagaDefinition) -> None:
        """What only the table can tell about this row (a step type of its own may have
        something to say): raises ``DefinitionError``."""

    @property
    def has_action(self) -> bool:
        """Whether the step does something going forward (locally or remotely)."""
        return self.action is not None or self.command is not None

    @property
    def compensable(self) -> bool:
        return self.compensation is not None or self.compensation_command is not None

    @property
    def remote(self) -> bool:
        """Whether any part of the step runs in another service."""
        return self.command is not None or self.compensation_command is not None

    @property
    def remote_compensation_timeout(self) -> float | None:
        """How long a compensation waits: ``compensation_timeout``, and for a remote
        compensation ``timeout`` when that is not set (it must wait for something)."""
        if self.compensation_timeout is not None or self.compensation_command is None:
            return self.compensation_timeout
        return self.timeout


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"must start with a letter or '_' and hold only letters, digits, '_', '.', '-';"
            f" got {name!r}",
            field="name",
        )


class WaitOutcome(StrEnum):
    """What a wait does with an event (or with its timeout)."""

    CONTINUE = "continue"
    """The wait is over: the saga goes on to its next step (the event's data merged)."""
    FAIL = "fail"
    """The saga fails here: the steps before the wait are compensated."""


def _wait_events(
    value: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((name, outcome) for name, outcome in items)


@frozen
class WaitFor(Step):
    """A step that waits for a named external event: a manager's approval, a payment
    provider's webhook. Nothing runs and no lease is held while it waits; its deadline
    (``timeout``, required) is stored like a remote step's.

    ``events`` maps each event the wait accepts to what it does: ``"continue"`` (the
    event's data is merged into the saga data) or ``"fail"`` (the steps before the wait
    are compensated; a definite end, nothing of the wait to undo). ``on_timeout`` does
    the same for silence until the deadline. ``when`` names a boolean field of the saga
    data (given at start or set by an earlier step's result): the wait is skipped when
    that field is ``false``, and happens otherwise, a missing field included, so that a
    typo never skips an approval. (A field, not a function, so the table stays data and
    ``saga_fsm.testing`` can explore both ways.)
    Events arrive through ``SagaClient.signal`` / ``saga-fsm signal``; an unknown event,
    or one for a saga that is not waiting, is refused, and the same signal twice is
    accepted once.

    A wait after the pivot cannot fail the saga: each of its outcomes must be
    ``"continue"``.
    """

    events: tuple[tuple[str, str], ...] = field(default=(), kw_only=True, converter=_wait_events)
    on_timeout: str = field(default=WaitOutcome.FAIL, kw_only=True)
    when: str | None = field(default=None, kw_only=True)

    def _validate(self) -> None:
        _check_name(self.name)
        for name in ("action", "compensation", "command", "compensation_command"):
            if getattr(self, name) is not None:
                raise DefinitionError(f"a wait runs nothing, so it has no {name}", field=name)
        if self.kind is not StepKind.COMPENSABLE:
            raise DefinitionError(
                "a wait has no kind: it does nothing to undo, and is never the pivot",
                field="kind",
            )
        if self.read_only or self.transactional:
            which = "read_only" if self.read_only else "transactional"
            raise DefinitionError(f"a wait cannot be {which}", field=which)
        _positive("a wait's timeout", "timeout", self.timeout, allow_none=False)
        if self.compensation_timeout is not None:
            raise DefinitionError("a wait has nothing to compensate", field="compensation_timeout")
        if not self.events:
            raise DefinitionError(
                "a wait needs at least one event, e.g. events={'approved': 'continue'}",
                field="events",
            )
        for name, outcome in self.events:
            try:
                _check_name(name)
            except DefinitionError:
                raise DefinitionError(
                    f"event names follow the step-name rule; got {name!r}", field="events"
                ) from None
            if outcome not in set(WaitOutcome):
                raise DefinitionError(
                    f"event {name!r}: must be 'continue' or 'fail', got {outcome!r}",
                    field="events",
                )
        if len({name for name, _ in self.events}) != len(self.events):
            raise DefinitionError("an event is listed twice", field="events")
        if self.on_timeout not in set(WaitOutcome):
            raise DefinitionError(
                f"must be 'continue' or 'fail', got {self.on_timeout!r}", field="on_timeout"
            )
        if self.when is not None and (
            not isinstance(self.when, str) or not re.fullmatch(r"[A-Za-z_]\w*", self.when)
        ):
            raise DefinitionError(
                f"must name a field of the saga data, got {self.when!r}", field="when"
            )

    @property
    def has_action(self) -> bool:
        return True

    @property
    def outcomes(self) -> dict[str, WaitOutcome]:
        return {name: WaitOutcome(outcome) for name, outcome in self.events}

    @property
    def can_fail(self) -> bool:
        """Whether an event or the timeout ends the saga's forward path."""
        return WaitOutcome.FAIL in {*self.outcomes.values(), WaitOutcome(self.on_timeout)}

    def waits(self, data: Mapping[str, Any]) -> bool:
        """Whether the saga waits here, given its data: unless ``data[when]`` is false."""
        return self.when is None or data.get(self.when) is not False


def _steps_tuple(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


Callback: TypeAlias = Callable[[Any], object]
"""A transitions callback: called with the ``EventData`` of the transition."""

TRIGGERS: tuple[str, ...] = (
    "start",
    "step_succeeded",
    "step_failed",
    "step_timed_out",
    "retry_due",
    "cancel",
    "compensation_succeeded",
    "compensation_failed",
    "compensation_timed_out",
    "retry",
    "signal",
    "child_pending",
    "compensate",
)
"""Every trigger of a saga's Machine (the last two only in tables that use child sagas:
see ``saga_fsm.ChildSaga`` and ``SagaDefinition.reversible``)."""


def _callbacks(
    value: Mapping[str, Callback | Iterable[Callback]] | Iterable[tuple[str, Any]],
) -> tuple[tuple[str, tuple[Callback, ...]], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(
        (hook, (functions,) if callable(functions) else tuple(functions))
        for hook, functions in items
    )


@frozen
class SagaDefinition:
    """A named, versioned, ordered state table of steps. Immutable once built."""

    name: str
    steps: tuple[Step, ...] = field(converter=_steps_tuple)
    version: int = 1
    description: str = ""
    callbacks: tuple[tuple[str, tuple[Callback, ...]], ...] = field(
        default=(), converter=_callbacks
    )
    """transitions callbacks run inside every decision, keyed by transitions' names:
    ``on_enter_<state>``, ``on_exit_<state>``, ``before_state_change``,
    ``after_state_change``, ``before_<trigger>``, ``after_<trigger>``. Each gets the
    ``EventData``, may only record (its return is ignored), and an exception in it is a
    ``CallbackError``."""
    reversible: bool = False
    """A completed instance can still be compensated as a whole (its own compensations,
    last step first), as a parent saga's compensation does to a completed child
    (``ChildSaga``). Only a table that says so has the ``compensate`` transition out of
    ``completed``: a saga with a pivot cannot be reversible."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(f"invalid saga name {self.name!r}", field="name")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(
                f"must be a whole number >= 1, got {self.version!r}", field="version"
            )
        if not self.steps:
            raise DefinitionError("a saga needs at least one step", field="steps")
        seen: dict[str, int] = {}
        pivot: int | None = None
        for row, step in enumerate(self.steps):
            if not isinstance(step, Step):
                raise DefinitionError(f"must be a Step, got {step!r}", row=row, field="steps")
            if step.name in seen:
                raise DefinitionError(
                    f"duplicate step name (first used by step {seen[step.name]})",
                    row=row,
                    step=step.name,
                    field="name",
                )
            seen[step.name] = row
            step.check_row(row, self)
            if step.is_group and pivot is not None:
                raise DefinitionError(
                    "a parallel group cannot come after the pivot: its branches are undone"
                    " when one fails, and nothing after the pivot may be undone",
                    row=row,
                    step=step.name,
                    field="kind",
                )
            if step.kind is StepKind.PIVOT:
                if pivot is not None:
                    raise DefinitionError(
                        f"more than one pivot (step {pivot} {self.steps[pivot].name!r} is"
                        " already the pivot)",
                        row=row,
                        step=step.name,
                        field="kind",
                    )
                pivot = row
            elif step.kind is StepKind.RETRIABLE and pivot is None:
                raise DefinitionError(
                    "a retriable step must come after the pivot"
                    + ("" if any(s.kind is StepKind.PIVOT for s in self.steps) else " (no pivot)"),
                    row=row,
                    step=step.name,
                    field="kind",
                )
            elif isinstance(step, WaitFor) and pivot is not None:
                if step.can_fail:
                    raise DefinitionError(
                        "a wait after the pivot cannot fail the saga: every event and"
                        " on_timeout must be 'continue'",
                        row=row,
                        step=step.name,
                        field="events",
                    )
            elif step.kind is StepKind.COMPENSABLE and pivot is not None:
                raise DefinitionError(
                    "steps after the pivot can never be compensated: make them retriable",
                    row=row,
                    step=step.name,
                    field="kind",
                )

        if not isinstance(self.reversible, bool):
            raise DefinitionError(
                f"must be true or false, got {self.reversible!r}", field="reversible"
            )
        if self.reversible and pivot is not None:
            raise DefinitionError(
                "a reversible saga is compensated after it completed, but its pivot can"
                " never be undone",
                row=pivot,
                step=self.steps[pivot].name,
                field="reversible",
            )
        self._check_callbacks()

    def _check_callbacks(self) -> None:
        states = {
            "pending",
            "completed",
            "compensated",
            "failed",
            *(f"running:{s.name}" for s in self.steps),
            *(f"compensating:{s.name}" for s in self.steps if s.compensable),
        }
        for hook, functions in self.callbacks:
            when, _, target = hook.partition("_") if isinstance(hook, str) else ("", "", "")
            kind, _, state = target.partition("_")
            # A parallel group's branches move by the internal "branch_progress".
            triggers = (
                (*TRIGGERS, "branch_progress") if any(s.is_group for s in self.steps) else TRIGGERS
            )
            known = (
                hook in ("before_state_change", "after_state_change")
                or (when == "on" and kind in ("enter", "exit") and state in states)
                or (when in ("before", "after") and target in triggers)
            )
            if not known:
                raise DefinitionError(
                    f"unknown callback {hook!r}: use on_enter_<state>, on_exit_<state>,"
                    " before_state_change, after_state_change, before_<trigger> or"
                    " after_<trigger>",
                    field="callbacks",
                )
            for function in functions:
                if not callable(function):
                    raise DefinitionError(
                        f"callback {hook!r} must be callable, got {function!r}",
                        field="callbacks",
                    )

    @property
    def pivot_index(self) -> int | None:
        for row, step in enumerate(self.steps):
            if step.kind is StepKind.PIVOT:
                return row
        return None

    def index(self, step_name: str) -> int:
        for row, step in enumerate(self.steps):
            if step.name == step_name:
                return row
        raise KeyError(step_name)

    def step(self, step_name: str) -> Step:
        return self.steps[self.index(step_name)]

    def _repr_svg_(self) -> str | None:
        """Jupyter shows a definition as its state diagram, drawn from its Machine."""
        from saga_fsm.diagrams import definition_diagram

        return definition_diagram(self)._repr_svg_()


class SagaBuilder:
    """A small fluent way to write a state table in Python.

    >>> def reserve(ctx): return {"reservation_id": "r1"}
    >>> def release(ctx): return None
    >>> def charge(ctx): return None
    >>> def notify(ctx): return None
    >>> definition = (
    ...     SagaBuilder("order")
    ...     .step("reserve", reserve, compensation=release)
    ...     .pivot("charge", charge)
    ...     .retriable("notify", notify)
    ...     .build()
    ... )
    >>> [s.kind.value for s in definition.steps]
    ['compensable', 'pivot', 'retriable']
    """

    def __init__(self, name: str, *, version: int = 1, description: str = "") -> None:
        self._name = name
        self._version = version
        self._description = description
        self._steps: list[Step] = []

    def step(
        self,
        name: str,
        action: Action | None = None,
        *,
        compensation: Action | None = None,
        kind: StepKind | str = StepKind.COMPENSABLE,
        **options: Any,
    ) -> SagaBuilder:
        try:
            step = Step(name, action, compensation, kind=StepKind(kind), **options)
        except DefinitionError as err:
            raise DefinitionError(
                err.reason, row=len(self._steps), step=err.step, field=err.field
            ) from None
        except ValueError:
            raise DefinitionError(
                f"unknown kind {kind!r} (one of: {', '.join(k.value for k in StepKind)})",
                row=len(self._steps),
                step=name,
                field="kind",
            ) from None
        self._steps.append(step)
        return self

    def parallel(
        self,
        name: str,
        branches: Mapping[str, Iterable[Step]],
        *,
        join: str | int = "all",
        max_concurrency: int | None = None,
    ) -> SagaBuilder:
        """A ``Parallel`` group: ``branches`` run concurrently (see saga_fsm.Parallel)."""
        from saga_fsm._groups import Parallel

        return self._add(
            lambda: Parallel(name, branches=branches, join=join, max_concurrency=max_concurrency)
        )

    def for_each(
        self,
        name: str,
        items: str,
        steps: Iterable[Step],
        *,
        max_concurrency: int | None = None,
    ) -> SagaBuilder:
        """A ``ForEach`` group: ``steps`` once per item of ``data[items]``."""
        from saga_fsm._groups import ForEach

        return self._add(
            lambda: ForEach(name, items=items, steps=steps, max_concurrency=max_concurrency)
        )

    def _add(self, make: Callable[[], Step]) -> SagaBuilder:
        try:
            self._steps.append(make())
        except DefinitionError as err:
            raise DefinitionError(
                err.reason, row=len(self._steps), step=err.step, field=err.field
            ) from None
        return self

    def pivot(self, name: str, action: Action, **options: Any) -> SagaBuilder:
        return self.step(name, action, kind=StepKind.PIVOT, **options)

    def retriable(self, name: str, action: Action, **options: Any) -> SagaBuilder:
        return self.step(name, action, kind=StepKind.RETRIABLE, **options)

    def build(self) -> SagaDefinition:
        return SagaDefinition(
            self._name, tuple(self._steps), version=self._version, description=self._description
        )

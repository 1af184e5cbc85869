"""The generic saga and step lifecycles, as tables, and the transitions Machines built
from them. Guards and effects are named here; the model classes implement them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attrs import field, frozen
from transitions import Machine
from transitions.core import EventData

from saga_fsm._errors import CallbackError
from saga_fsm._snapshot import SagaStatus, StepStatus


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@frozen
class TransitionRow:
    """One row of a state table. ``dest=None`` is an internal transition (no state change).

    ``conditions``/``unless`` name pure predicates; ``effects`` name callbacks that only
    record commands. Diagrams, tests and the engine all read these rows.
    """

    trigger: str
    source: str
    dest: str | None
    conditions: tuple[str, ...] = field(default=(), converter=_names)
    unless: tuple[str, ...] = field(default=(), converter=_names)
    effects: tuple[str, ...] = field(default=(), converter=_names)


def build_machine(
    states: Sequence[str],
    rows: Iterable[TransitionRow],
    *,
    initial: str,
    name: str,
    callbacks: Iterable[tuple[str, tuple[Callable[[EventData], object], ...]]] = (),
) -> Machine:
    """A model-less Machine: models are passed per trigger, never registered, so nothing
    per instance is kept alive by the shared Machine.

    ``callbacks`` are a definition's own transitions callbacks, by transitions' names
    (``on_enter_<state>``, ``on_exit_<state>``, ``before_state_change``,
    ``after_state_change``, ``before_<trigger>``, ``after_<trigger>``); each runs inside
    the decision with the event data, its return ignored, an exception in it raised as a
    ``CallbackError`` naming it."""
    machine = Machine(
        model=None,
        states=list(states),
        transitions=[
            {
                "trigger": row.trigger,
                "source": row.source,
                "dest": row.dest,
                "conditions": list(row.conditions),
                "unless": list(row.unless),
                "after": list(row.effects),
            }
            for row in rows
        ],
        initial=initial,
        auto_transitions=False,
        send_event=True,
        name=name,
    )
    for hook, functions in callbacks:
        for function in functions:
            _attach(machine, hook, UserCallback(hook, function))
    return machine


def _attach(machine: Machine, hook: str, callback: UserCallback) -> None:
    if hook in ("before_state_change", "after_state_change"):
        getattr(machine, hook).append(callback)
        return
    when, _, target = hook.partition("_")
    if when == "on":
        kind, _, state = target.partition("_")
        machine.get_state(state).add_callback(kind, callback)
    else:
        machine.events[target].add_callback(when, callback)


class UserCallback:
    """A definition's callback as the Machine calls it: with the event data, its return
    ignored, any exception raised as a ``CallbackError`` naming it."""

    __slots__ = ("function", "hook")

    def __init__(self, hook: str, function: Callable[[EventData], object]) -> None:
        self.hook = hook
        self.function = function

    def __call__(self, event_data: EventData) -> None:
        try:
            self.function(event_data)
        except Exception as err:
            name = getattr(self.function, "__qualname__", repr(self.function))
            raise CallbackError(self.hook, name, err) from err


def fire(machine: Machine, model: Any, trigger: str) -> bool:
    """Fire ``trigger`` on an unregistered ``model`` through transitions' own trigger
    path (``Event.trigger``: guards, state change, callbacks). Returns False when every
    guard refused; raises ``KeyError`` when the state has no transition for the trigger."""
    event = machine.events.get(trigger)
    if event is None or model.state not in event.transitions:
        raise KeyError(trigger)
    return bool(event.trigger(model))


# -- saga lifecycle -------------------------------------------------------------------------

_R, _C = SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value
_P, _OK = SagaStatus.PENDING.value, SagaStatus.COMPLETED.value
_UNDONE, _FAILED = SagaStatus.COMPENSATED.value, SagaStatus.FAILED.value

SAGA_LIFECYCLE_STATES: tuple[str, ...] = tuple(s.value for s in SagaStatus)
SAGA_LIFECYCLE: tuple[TransitionRow, ...] = (
    TransitionRow("start", _P, _R),
    TransitionRow("cancel", _P, _UNDONE),
    TransitionRow("step_succeeded", _R, _R, unless=["cancel_requested"]),
    TransitionRow("step_succeeded", _R, _OK, unless=["cancel_requested"]),
    TransitionRow("step_succeeded", _R, _C, conditions=["cancel_requested"]),
    TransitionRow("step_succeeded", _R, _UNDONE, conditions=["cancel_requested"]),
    *(
        row
        for trigger in ("step_failed", "step_timed_out")
        for row in (
            TransitionRow(trigger, _R, _R, conditions=["may_retry"], unless=["cancel_requested"]),
            TransitionRow(trigger, _R, _R, conditions=["past_pivot"]),
            TransitionRow(trigger, _R, _R, conditions=["at_pivot", "may_retry"]),
            TransitionRow(trigger, _R, _C, unless=["past_pivot"]),
            TransitionRow(trigger, _R, _UNDONE, unless=["past_pivot"]),
            # The pivot may have acted and cannot be undone: an operator decides.
            TransitionRow(trigger, _R, _FAILED, conditions=["at_pivot"], unless=["refused"]),
        )
    ),
    TransitionRow("retry_due", _R, _R, conditions=["awaiting_retry"]),
    TransitionRow("cancel", _R, None, conditions=["in_flight"], unless=["past_pivot"]),
    TransitionRow("cancel", _R, None, conditions=["at_pivot"]),
    TransitionRow("cancel", _R, _C, unless=["in_flight", "past_pivot"]),
    TransitionRow("cancel", _R, _UNDONE, unless=["in_flight", "past_pivot"]),
    TransitionRow("compensation_succeeded", _C, _C),
    TransitionRow("compensation_succeeded", _C, _UNDONE),
    *(
        row
        for trigger in ("compensation_failed", "compensation_timed_out")
        for row in (
            TransitionRow(trigger, _C, _C, conditions=["compensation_may_retry"]),
            TransitionRow(trigger, _C, _FAILED),
        )
    ),
    TransitionRow("retry_due", _C, _C, conditions=["awaiting_retry"]),
    TransitionRow("retry", _FAILED, _C, conditions=["parked_here"]),
    TransitionRow("retry", _FAILED, _R, conditions=["parked_here", "at_pivot"]),
)

# -- step lifecycle -------------------------------------------------------------------------

_S = StepStatus
STEP_LIFECYCLE_STATES: tuple[str, ...] = tuple(s.value for s in StepStatus)
STEP_LIFECYCLE: tuple[TransitionRow, ...] = (
    TransitionRow("run", _S.PENDING.value, _S.RUNNING.value),
    TransitionRow("run", _S.FAILED.value, _S.RUNNING.value, conditions=["attempts_left"]),
    TransitionRow("run", _S.TIMED_OUT.value, _S.RUNNING.value, conditions=["attempts_left"]),
    # (An operator's retry of a parked pivot grants it one attempt.)
    TransitionRow("succeed", _S.RUNNING.value, _S.SUCCEEDED.value),
    TransitionRow("fail", _S.RUNNING.value, _S.FAILED.value),
    TransitionRow("time_out", _S.RUNNING.value, _S.TIMED_OUT.value),
    TransitionRow("skip", _S.PENDING.value, _S.SKIPPED.value),
    TransitionRow("compensate", _S.SUCCEEDED.value, _S.COMPENSATING.value),
    # A step whose last attempt failed transiently or timed out may have acted.
    TransitionRow("compensate", _S.FAILED.value, _S.COMPENSATING.value),
    TransitionRow("compensate", _S.TIMED_OUT.value, _S.COMPENSATING.value),
    TransitionRow(
        "compensate",
        _S.COMPENSATION_FAILED.value,
        _S.COMPENSATING.value,
        conditions=["attempts_left"],
    ),
    TransitionRow("compensation_succeed", _S.COMPENSATING.value, _S.COMPENSATED.value),
    TransitionRow("compensation_fail", _S.COMPENSATING.value, _S.COMPENSATION_FAILED.value),
)


class StepModel:
    """The model a step record is moved through the step Machine with."""

    __slots__ = ("attempts_left_flag", "state")

    def __init__(self, state: str, attempts_left: bool) -> None:
        self.state = state
        self.attempts_left_flag = attempts_left

    def attempts_left(self, _event: Any) -> bool:
        return self.attempts_left_flag


SAGA_LIFECYCLE_MACHINE = build_machine(
    SAGA_LIFECYCLE_STATES, SAGA_LIFECYCLE, initial=_P, name="saga"
)
STEP_LIFECYCLE_MACHINE = build_machine(
    STEP_LIFECYCLE_STATES, STEP_LIFECYCLE, initial=_S.PENDING.value, name="step"
)


def _step_table() -> dict[tuple[str, str, bool], StepStatus | None]:
    """Every answer the step Machine can give, asked of the Machine itself (fired through
    transitions) once: its one guard (``attempts_left``) is the only input besides the
    status and the trigger, so (status, trigger, attempts_left) -> new status (None:
    refused) is the Machine's decision, memoised. It has no callbacks to miss."""
    table: dict[tuple[str, str, bool], StepStatus | None] = {}
    for trigger, event in STEP_LIFECYCLE_MACHINE.events.items():
        for source in event.transitions:
            for attempts_left in (True, False):
                model = StepModel(source, attempts_left)
                moved = fire(STEP_LIFECYCLE_MACHINE, model, trigger)
                table[(source, trigger, attempts_left)] = StepStatus(model.state) if moved else None
    return table


_STEP_TABLE = _step_table()


def step_transition(status: StepStatus, trigger: str, *, attempts_left: bool = True) -> StepStatus:
    """Move one step status through the step Machine; raises ``KeyError`` if not allowed."""
    key = (status.value, trigger, attempts_left)
    if key not in _STEP_TABLE:
        raise KeyError(trigger)
    moved = _STEP_TABLE[key]
    if moved is None:
        raise KeyError(f"step {trigger!r} refused in {status.value!r}: no attempts left")
    return moved

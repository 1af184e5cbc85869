"""The generic saga and step lifecycles, as tables, and the transitions Machines built
from them. Guards and effects are named here; the model classes implement them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from attrs import field, frozen
from transitions import Machine
from transitions.core import EventData, Transition

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
    states: Sequence[str], rows: Iterable[TransitionRow], *, initial: str, name: str
) -> Machine:
    """A model-less Machine: models are passed per trigger, never registered, so nothing
    per instance is kept alive by the shared Machine."""
    return Machine(
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


def fire(machine: Machine, model: Any, trigger: str, **kwargs: Any) -> bool:
    """Fire ``trigger`` on an unregistered ``model`` through transitions' own trigger
    path. Returns False when a guard refused; raises ``KeyError`` when the state has no
    transition for the trigger at all. (The engine's hot path is ``Dispatch.fire``: the
    same choice, read from the same Machine, without the per-call machinery.)"""
    event = machine.events.get(trigger)
    if event is None or model.state not in event.transitions:
        raise KeyError(trigger)
    return bool(event.trigger(model, **kwargs))


@frozen
class _Candidate:
    """One of the Machine's ``Transition`` objects, with its guards and effects read out
    once: (name, wanted value) pairs and callback names, in the Machine's order."""

    transition: Transition
    dest: str | None
    guards: tuple[tuple[str, bool], ...]
    effects: tuple[str, ...]


class Dispatch:
    """The Machine's transitions indexed by (source, trigger), fired without the
    per-call machinery of ``Event.trigger`` (partials, callback resolution, debug
    logging, state objects), which costs more than the decision itself.

    Nothing is copied from the state table: the candidates are the Machine's own
    ``Transition`` objects, tried in the Machine's order, each passing only if every
    condition's value equals its target (``unless`` is a condition with target False),
    the first that passes moving the model to its ``dest`` (``None``: internal) and then
    calling its ``after`` callbacks: exactly ``Event._process``/``Transition.execute``
    for a Machine with ``send_event=True`` and no other callbacks. ``Dispatch.of``
    refuses any Machine that has other callbacks, so the two paths cannot disagree;
    tests/core/test_dispatch.py fires both on every (state, trigger, guard values).
    """

    __slots__ = ("_events", "_states", "machine", "table")

    def __init__(self, machine: Machine) -> None:
        _check_plain(machine)
        self.machine = machine
        self.table: dict[tuple[str, str], tuple[_Candidate, ...]] = {}
        self._events = dict(machine.events)
        self._states = dict(machine.states)
        for trigger, event in machine.events.items():
            for source, transitions in event.transitions.items():
                self.table[(source, trigger)] = tuple(
                    _Candidate(
                        t,
                        t.dest,
                        tuple((str(c.func), bool(c.target)) for c in t.conditions),
                        tuple(str(name) for name in t.after),
                    )
                    for t in transitions
                )

    def fire(self, model: Any, trigger: str) -> bool:
        """Like ``fire(machine, model, trigger)``: False when every guard refused,
        ``KeyError`` when the model's state has no transition for ``trigger``."""
        source = model.state
        candidates = self.table.get((source, trigger))
        if candidates is None:
            raise KeyError(trigger)
        event_data = EventData(
            self._states[source], self._events[trigger], self.machine, model, (), {}
        )
        for candidate in candidates:
            event_data.transition = candidate.transition
            for name, target in candidate.guards:
                guard = getattr(model, name)
                if (guard(event_data) if callable(guard) else guard) != target:
                    break
            else:
                if candidate.dest is not None:
                    model.state = candidate.dest
                for name in candidate.effects:
                    getattr(model, name)(event_data)
                event_data.result = True
                return True
        return False


def _check_plain(machine: Machine) -> None:
    """Refuse a Machine whose behaviour ``Dispatch`` would not reproduce."""
    problems = []
    if not machine.send_event:
        problems.append("send_event is off")
    if machine.has_queue:
        problems.append("it queues events")
    for hook in (
        "prepare_event",
        "before_state_change",
        "after_state_change",
        "finalize_event",
        "on_exception",
        "on_final",
    ):
        if getattr(machine, hook, None):
            problems.append(f"machine {hook} callbacks")
    for state in machine.states.values():
        if state.on_enter or state.on_exit or state.final:
            problems.append(f"state {state.name!r} callbacks")
    for event in machine.events.values():
        for transition in (t for ts in event.transitions.values() for t in ts):
            if transition.prepare or transition.before:
                problems.append(f"{event.name} prepare/before callbacks")
            callbacks = [c.func for c in transition.conditions] + list(transition.after)
            if not all(isinstance(c, str) for c in callbacks):
                problems.append(f"{event.name}: callbacks that are not names")
            if transition.dest is not None and transition.dest not in machine.states:
                problems.append(f"{event.name}: unknown dest {transition.dest!r}")
    if problems:
        raise ValueError("Dispatch cannot stand in for this Machine: " + "; ".join(problems))


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
            TransitionRow(trigger, _R, _C, unless=["past_pivot"]),
            TransitionRow(trigger, _R, _UNDONE, unless=["past_pivot"]),
        )
    ),
    TransitionRow("retry_due", _R, _R, conditions=["awaiting_retry"]),
    TransitionRow("cancel", _R, None, conditions=["in_flight"], unless=["past_pivot"]),
    TransitionRow("cancel", _R, _C, unless=["in_flight", "past_pivot"]),
    TransitionRow("cancel", _R, _UNDONE, unless=["in_flight", "past_pivot"]),
    TransitionRow("compensation_succeeded", _C, _C),
    TransitionRow("compensation_succeeded", _C, _UNDONE),
    *(
        row
        for trigger in ("compensation_failed", "compensation_timed_out")
        for row in (
            TransitionRow(trigger, _C, _C, conditions=["may_retry"]),
            TransitionRow(trigger, _C, _FAILED),
        )
    ),
    TransitionRow("retry_due", _C, _C, conditions=["awaiting_retry"]),
    TransitionRow("retry", _FAILED, _C, conditions=["parked_here"]),
)

# -- step lifecycle -------------------------------------------------------------------------

_S = StepStatus
STEP_LIFECYCLE_STATES: tuple[str, ...] = tuple(s.value for s in StepStatus)
STEP_LIFECYCLE: tuple[TransitionRow, ...] = (
    TransitionRow("run", _S.PENDING.value, _S.RUNNING.value),
    TransitionRow("run", _S.FAILED.value, _S.RUNNING.value, conditions=["attempts_left"]),
    TransitionRow("run", _S.TIMED_OUT.value, _S.RUNNING.value, conditions=["attempts_left"]),
    TransitionRow("succeed", _S.RUNNING.value, _S.SUCCEEDED.value),
    TransitionRow("fail", _S.RUNNING.value, _S.FAILED.value),
    TransitionRow("time_out", _S.RUNNING.value, _S.TIMED_OUT.value),
    TransitionRow("skip", _S.PENDING.value, _S.SKIPPED.value),
    TransitionRow("compensate", _S.SUCCEEDED.value, _S.COMPENSATING.value),
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


STEP_DISPATCH = Dispatch(STEP_LIFECYCLE_MACHINE)


def _step_table() -> dict[tuple[str, str, bool], StepStatus | None]:
    """Every answer the step Machine can give, asked of the Machine itself once: its one
    guard (``attempts_left``) is the only input besides the status and the trigger, so
    (status, trigger, attempts_left) -> new status (None: refused) is the Machine's
    decision, memoised."""
    table: dict[tuple[str, str, bool], StepStatus | None] = {}
    for source, trigger in STEP_DISPATCH.table:
        for attempts_left in (True, False):
            model = StepModel(source, attempts_left)
            moved = STEP_DISPATCH.fire(model, trigger)
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

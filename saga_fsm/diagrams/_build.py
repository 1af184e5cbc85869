"""Scenes for a compiled flow and for the two generic lifecycles, built from the Machines
themselves. The only things added here are presentation: each state's role (from the
step kinds on the definition) and which states sit side by side."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from attrs import evolve
from transitions import Machine

from saga_fsm._child import ChildSaga
from saga_fsm._definition import SagaDefinition, Step, StepKind, WaitFor, WaitOutcome
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._lifecycle import SAGA_LIFECYCLE_MACHINE, STEP_LIFECYCLE_MACHINE
from saga_fsm._snapshot import SagaStatus, StepStatus
from saga_fsm.diagrams._branches import group_clusters
from saga_fsm.diagrams._errors import DiagramError
from saga_fsm.diagrams._machine import merge_edges, read_transitions
from saga_fsm.diagrams._scene import EdgeKind, Role, Scene, SceneEdge, SceneNode, edge_kind

Lifecycle = Literal["saga", "step"]

# Forward edges first: dot lays out edges roughly in the order it reads them.
_EDGE_ORDER = {kind: n for n, kind in enumerate(EdgeKind)}

_SAGA_ROLES = {
    SagaStatus.PENDING: Role.INITIAL,
    SagaStatus.RUNNING: Role.STEP,
    SagaStatus.COMPENSATING: Role.COMPENSATING,
    SagaStatus.COMPLETED: Role.COMPLETED,
    SagaStatus.COMPENSATED: Role.COMPENSATED,
    SagaStatus.FAILED: Role.FAILED,
}
_STEP_ROLES = {
    StepStatus.PENDING: Role.INITIAL,
    StepStatus.RUNNING: Role.STEP,
    StepStatus.SUCCEEDED: Role.SUCCEEDED,
    StepStatus.FAILED: Role.ERROR,
    StepStatus.TIMED_OUT: Role.ERROR,
    StepStatus.COMPENSATING: Role.COMPENSATING,
    StepStatus.COMPENSATED: Role.COMPENSATED,
    StepStatus.COMPENSATION_FAILED: Role.ERROR,
    StepStatus.SKIPPED: Role.SKIPPED,
}


def _scene_edges(machine: Machine, roles: Mapping[str, Role]) -> tuple[SceneEdge, ...]:
    edges = [
        SceneEdge(
            edge.source,
            edge.dest,
            "\n".join(str(label) for label in edge.labels),
            edge_kind(roles[edge.source], roles[edge.dest], loop=edge.source == edge.dest),
        )
        for edge in merge_edges(read_transitions(machine))
    ]
    return tuple(sorted(edges, key=lambda e: _EDGE_ORDER[e.kind]))


def _present(groups: Iterable[Sequence[str]], states: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Layout hints restricted to states the Machine really has."""
    known = set(states)
    kept = (tuple(str(s) for s in group if s in known) for group in groups)
    return tuple(group for group in kept if group)


def _step_note(step: Step) -> str:
    if step.is_group:
        return "parallel group: branches beside"
    if isinstance(step, WaitFor):
        return _wait_note(step)
    # A remote step shows the channel its command goes to: what runs elsewhere; a child
    # saga step, the definition it starts.
    remote = "" if step.command is None else f"remote: {step.command}"
    if isinstance(step, ChildSaga):
        remote = f"child saga: {step.child_name}"
    if step.kind is StepKind.PIVOT:
        return _joined("pivot: only forward once it succeeds", remote)
    if step.kind is StepKind.RETRIABLE:
        return _joined("retriable: retried until it succeeds", remote)
    if not step.has_action:
        return "compensation only"
    if step.read_only:
        return _joined("read-only: nothing to undo", remote)
    return remote


def _wait_note(step: WaitFor) -> str:
    assert step.timeout is not None  # a wait always has one
    hours = step.timeout / 3600
    after = f"{hours:g} h" if hours >= 1 else f"{step.timeout:g} s"
    skipped = f"; skipped when {step.when} is false" if step.when else ""
    return f"waits for an event; after {after}: {step.on_timeout}{skipped}"


def _signal_label(step: WaitFor, line: str) -> str:
    """``signal [signal_continues] / record_signal`` -> ``signal approved``: the events
    each signal edge stands for, from the wait's own table."""
    if line == "step_succeeded":
        return f"skipped: {step.when} is false"
    if not line.startswith("signal"):
        return line
    outcome = WaitOutcome.CONTINUE if "signal_continues" in line else WaitOutcome.FAIL
    names = ", ".join(n for n, o in step.outcomes.items() if o is outcome)
    effects = [e for e in line.partition(" / ")[2].split(", ") if e and e != "record_signal"]
    return f"signal {names}" + (f" / {', '.join(effects)}" if effects else "")


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


_KIND_ROLE = {
    StepKind.COMPENSABLE: Role.STEP,
    StepKind.PIVOT: Role.PIVOT,
    StepKind.RETRIABLE: Role.RETRIABLE,
}


def flow_scene(definition: SagaDefinition | CompiledSaga) -> Scene:
    """The compiled flow: forward path down the left column, each step's compensation
    beside it, ``compensated`` at the top of that column (compensation runs upwards),
    ``completed`` and ``failed`` at the bottom."""
    compiled = definition if isinstance(definition, CompiledSaga) else compile_saga(definition)
    machine, steps = compiled.machine, compiled.definition.steps
    by_state: dict[str, tuple[Role, str]] = {}
    for state in machine.states:
        status, _, step_name = state.partition(":")
        if step_name:
            step = steps[compiled.step_index[step_name]]
            if status == SagaStatus.RUNNING:
                by_state[state] = (_KIND_ROLE[step.kind], _step_note(step))
                continue
            if step.compensation_command is not None:
                role = _SAGA_ROLES[SagaStatus(status)]
                by_state[state] = (role, f"remote: {step.compensation_command}")
                continue
        by_state[state] = (_SAGA_ROLES[SagaStatus(status)], "")
    roles = {state: role for state, (role, _) in by_state.items()}
    running = [f"{SagaStatus.RUNNING.value}:{s.name}" for s in steps]
    compensating = [f"{SagaStatus.COMPENSATING.value}:{s.name}" for s in steps]
    pending, done = SagaStatus.PENDING.value, SagaStatus.COMPLETED.value
    ranks: list[list[str]] = [
        [pending, SagaStatus.COMPENSATED.value],
        *(list(pair) for pair in zip(running, compensating, strict=True)),
        [done],
    ]
    # ``failed`` sits right of the last compensation, where every compensation can reach it.
    last = max((n for n, s in enumerate(steps) if s.compensable), default=None)
    ranks[1 + last if last is not None else -1].append(SagaStatus.FAILED.value)
    d = compiled.definition
    return Scene(
        name=d.name,
        title=f"{d.name} v{d.version}",
        nodes=tuple(
            SceneNode(state, state, role, note) for state, (role, note) in by_state.items()
        ),
        edges=tuple(_wait_edge(compiled, edge) for edge in _scene_edges(machine, roles)),
        ranks=_present(ranks, machine.states),
        chain=_present([[pending, *running, done]], machine.states)[0],
        initial=machine.initial,
        clusters=group_clusters(compiled),
    )


def _wait_edge(compiled: CompiledSaga, edge: SceneEdge) -> SceneEdge:
    name = edge.source.partition(":")[2]
    step = compiled.definition.steps[compiled.step_index[name]] if name else None
    if not isinstance(step, WaitFor):
        return edge
    label = "\n".join(_signal_label(step, line) for line in edge.label.split("\n"))
    return evolve(edge, label=label)


def lifecycle_scene(which: Lifecycle) -> Scene:
    """The generic saga or step lifecycle Machine every flow refines."""
    if which == "saga":
        machine = SAGA_LIFECYCLE_MACHINE
        roles: dict[str, Role] = {s.value: r for s, r in _SAGA_ROLES.items()}
        s = SagaStatus
        ranks: list[tuple[str, ...]] = [
            (s.PENDING, s.COMPENSATED),
            (s.RUNNING, s.COMPENSATING),
            (s.COMPLETED, s.FAILED),
        ]
        chain: list[str] = [s.PENDING, s.RUNNING, s.COMPLETED]
        title = "saga lifecycle"
    elif which == "step":
        machine = STEP_LIFECYCLE_MACHINE
        roles = {s.value: r for s, r in _STEP_ROLES.items()}
        t = StepStatus
        ranks = [
            (t.PENDING, t.SKIPPED),
            (t.SUCCEEDED, t.FAILED, t.TIMED_OUT),
            (t.COMPENSATED, t.COMPENSATION_FAILED),
        ]
        chain = [t.PENDING, t.RUNNING, t.SUCCEEDED, t.COMPENSATING, t.COMPENSATED]
        title = "step lifecycle"
    else:
        raise DiagramError(f"unknown lifecycle {which!r}: saga or step")
    return Scene(
        name=f"{which}_lifecycle",
        title=title,
        nodes=tuple(SceneNode(state, state, roles[state]) for state in machine.states),
        edges=_scene_edges(machine, roles),
        ranks=_present(ranks, machine.states),
        chain=_present([chain], machine.states)[0],
        initial=machine.initial,
    )

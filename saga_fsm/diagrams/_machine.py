"""Read a transitions Machine back into edges, so every diagram is drawn from the very
object the engine fires triggers on and never from a second description of the flow.

Transitions that share a source and a destination are merged into one edge whose label
lists each (triggers, guards, effects) group once: ``step_failed|step_timed_out`` instead
of two arrows on top of each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen
from transitions import Machine

# Effects that only do bookkeeping, or whose meaning the destination already shows
# (entering ``running:x`` runs x; entering a terminal state finishes): printing them on
# every arrow would bury the effects that matter.
IMPLIED_EFFECTS = frozenset(
    {
        "record_success",
        "record_failure",
        "record_timeout",
        "record_compensated",
        "record_compensation_failure",
        "record_compensation_timeout",
        "run_step",
        "run_compensation",
        "finish",
        "request_cancel",
    }
)
# Short verbs for the effects worth printing; anything unknown is printed by its name.
EFFECT_VERBS = {
    "schedule_retry": "retry",
    "schedule_compensation_retry": "retry",
    "begin_compensation": "compensate",
    "park": "park",
    "resume_parked": "resume",
}


@frozen
class Guard:
    """One condition of a transition: ``name`` must return ``expected``."""

    name: str
    expected: bool

    def __str__(self) -> str:
        return self.name if self.expected else f"!{self.name}"


@frozen
class MachineTransition:
    """One transition exactly as the Machine holds it. ``internal`` transitions change
    no state (``dest`` is then the source, so they draw as a loop)."""

    trigger: str
    source: str
    dest: str
    internal: bool
    guards: tuple[Guard, ...]
    effects: tuple[str, ...]


@frozen
class Label:
    """Triggers that share guards and shown effects on one edge."""

    triggers: tuple[str, ...]
    guards: tuple[Guard, ...]
    effects: tuple[str, ...]
    internal: bool

    def __str__(self) -> str:
        text = "|".join(self.triggers)
        if self.guards:
            text += " [" + ", ".join(map(str, self.guards)) + "]"
        if self.effects:
            text += " / " + ", ".join(self.effects)
        if self.internal:
            text += " (internal)"
        return text


@frozen
class Edge:
    """Every transition from ``source`` to ``dest``, merged."""

    source: str
    dest: str
    labels: tuple[Label, ...]

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(t for label in self.labels for t in label.triggers)


def _name(func: str | Callable[..., Any]) -> str:
    return func if isinstance(func, str) else getattr(func, "__name__", repr(func))


def read_transitions(machine: Machine) -> tuple[MachineTransition, ...]:
    """Every transition of ``machine``, in the order its events were added."""
    found: list[MachineTransition] = []
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                dest: str | None = transition.dest
                found.append(
                    MachineTransition(
                        trigger=trigger,
                        source=source,
                        dest=source if dest is None else dest,
                        internal=dest is None,
                        guards=tuple(
                            Guard(_name(c.func), bool(c.target)) for c in transition.conditions
                        ),
                        effects=tuple(_name(f) for f in transition.after),
                    )
                )
    return tuple(found)


def shown_effects(effects: Iterable[str]) -> tuple[str, ...]:
    return tuple(EFFECT_VERBS.get(e, e) for e in effects if e not in IMPLIED_EFFECTS)


def merge_edges(transitions: Iterable[MachineTransition]) -> tuple[Edge, ...]:
    """One edge per (source, dest), labels grouped by (guards, shown effects)."""
    groups: dict[tuple[str, str], dict[tuple[Any, ...], list[str]]] = {}
    for t in transitions:
        labels = groups.setdefault((t.source, t.dest), {})
        key = (t.guards, shown_effects(t.effects), t.internal)
        triggers = labels.setdefault(key, [])
        if t.trigger not in triggers:
            triggers.append(t.trigger)
    return tuple(
        Edge(
            source,
            dest,
            tuple(
                Label(tuple(triggers), guards, effects, internal)
                for (guards, effects, internal), triggers in labels.items()
            ),
        )
        for (source, dest), labels in groups.items()
    )

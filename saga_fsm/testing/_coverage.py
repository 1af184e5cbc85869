"""Transition coverage: which rows of a definition's compiled Machine a run took, out of
the rows that can be taken at all (see ``_reachability``: computed, not assumed).

Rows no event sequence reaches (a ``*_timed_out`` row of a step without a timeout, any
row of a step without an action but its success) are reported as unreachable, with
why, and left out of the percentage: 100% means every transition the engine can make
under the harness's faults was made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from attrs import define, field

from saga_fsm._definition import SagaDefinition
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._lifecycle import TransitionRow
from saga_fsm._snapshot import HistoryEntry
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._reachability import edge_of_entry, reachability, row_edges


def _why_unreachable(compiled: CompiledSaga, row: TransitionRow, reached: set[str]) -> str:
    status, _, step_name = row.source.partition(":")
    if row.source not in reached:
        return f"state {row.source} is never entered"
    if step_name and step_name in compiled.child_steps and row.trigger != "cancel":
        return (
            "a child saga step ends as its child does (completed, or compensated for good):"
            " never retried, timed out or parked"
        )
    if step_name and step_name in compiled.child_steps:
        return "a child saga step is in flight until its child ends"
    if status == "running" and not compiled.definition.step(step_name).has_action:
        return "the step has no action: it succeeds in the same decision that starts it"
    if row.trigger.endswith("_timed_out") and step_name:
        step = compiled.definition.step(step_name)
        if row.trigger.startswith("compensation_") and step.remote_compensation_timeout is None:
            return "the compensation has no compensation_timeout"
        if row.trigger.startswith("step_") and step.timeout is None:
            return "the step has no timeout"
    guards = [*row.conditions, *(f"not {name}" for name in row.unless)]
    return "its guards never hold here" + (f" ({', '.join(guards)})" if guards else "")


def describe_row(row: TransitionRow) -> str:
    guards = [*row.conditions, *(f"!{name}" for name in row.unless)]
    where = f"  [{', '.join(guards)}]" if guards else ""
    dest = row.dest if row.dest is not None else f"{row.source} (internal)"
    return f"{row.trigger}: {row.source} -> {dest}{where}"


@define
class TransitionCoverage:
    """Rows of one definition's flow table taken by a run, against the reachable ones."""

    definition: SagaDefinition
    reachable: frozenset[int]
    exact: bool = True
    """False when the state space was too large to enumerate: every row then counts."""
    taken: Counter[int] = field(factory=Counter)

    @classmethod
    def for_definition(
        cls,
        definition: SagaDefinition,
        faults: tuple[Fault, ...] = tuple(Fault),
        operator_retry: bool = True,
        data: str | None = None,
    ) -> TransitionCoverage:
        found = reachability(definition, faults, operator_retry, data)
        return cls(definition, found.rows, exact=found.exact)

    @property
    def rows(self) -> tuple[TransitionRow, ...]:
        return compile_saga(self.definition).rows

    def record(self, history: Iterable[HistoryEntry]) -> None:
        edges = row_edges(compile_saga(self.definition))
        for entry in history:
            self.taken.update(edges.get(edge_of_entry(entry), ()))

    @property
    def countable(self) -> frozenset[int]:
        """Reachable rows, plus any the user's own code reached that injection cannot."""
        return self.reachable | frozenset(self.taken)

    @property
    def missed(self) -> tuple[TransitionRow, ...]:
        """Reachable rows this run never took."""
        return tuple(self.rows[i] for i in sorted(self.countable - set(self.taken)))

    @property
    def unreachable(self) -> tuple[TransitionRow, ...]:
        return tuple(self.rows[i] for i in range(len(self.rows)) if i not in self.countable)

    @property
    def ratio(self) -> float:
        total = len(self.countable)
        return 1.0 if total == 0 else len(set(self.taken)) / total

    def summary(self) -> str:
        """``41/41 reachable transitions taken (100%)``."""
        taken, total = len(set(self.taken)), len(self.countable)
        percent = int(self.ratio * 100) if taken < total else 100
        return f"{taken}/{total} reachable transitions taken ({percent}%)"

    def format(self) -> str:
        """The summary, the missed rows, and the unreachable rows with why."""
        lines = [f"transition coverage: {self.summary()}"]
        if not self.exact:
            lines.append("  (too many states to prove reachability: every row counted)")
        if self.missed:
            lines.append("  never taken:")
            lines.extend(f"    {describe_row(row)}" for row in self.missed)
        unreachable = self.unreachable
        if unreachable:
            compiled = compile_saga(self.definition)
            reached = {row.source for i, row in enumerate(self.rows) if i in self.countable}
            reached |= {
                row.dest for i, row in enumerate(self.rows) if i in self.countable and row.dest
            }
            lines.append(f"  {len(unreachable)} row(s) unreachable by construction:")
            lines.extend(
                f"    {describe_row(row)}: {_why_unreachable(compiled, row, reached)}"
                for row in unreachable
            )
        return "\n".join(lines)

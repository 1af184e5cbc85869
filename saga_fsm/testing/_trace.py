"""What the harness did to one saga, step by step, and how to say it in one line.

A counterexample is only useful if a person can read it; the trace is also the record
the invariants judge (which functions really ran, with which fault around them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from attrs import field, frozen

from saga_fsm.testing._faults import Fault

TraceKind = Literal[
    "start", "step", "compensation", "wake", "cancel", "retry", "signal", "deadline"
]

_AFTER_CALL = {
    Fault.OK: "ok",
    Fault.TRANSIENT: "ran, reply lost",
    Fault.TIMEOUT: "timed out",
    Fault.CRASH_AFTER: "ran, then crash",
    Fault.LOST: "delayed, timed out",
}
_AFTER_RAISE = {
    Fault.OK: "",
    Fault.TRANSIENT: ", reply lost",
    Fault.TIMEOUT: ", too late",
    Fault.CRASH_AFTER: ", then crash",
    Fault.LOST: ", delayed",
}


@frozen
class TraceEntry:
    """One thing the harness did to a saga: an engine event it fed, or a call of a real
    action (``step``) or compensation (``compensation``) with the fault around it."""

    kind: TraceKind
    state_before: str
    state_after: str
    label: str = ""
    """The step's name; for a compensation, the compensation function's name."""
    step: str | None = None
    attempt: int | None = None
    idempotency_key: str | None = None
    fault: Fault | None = None
    called: bool = False
    """Whether the real function ran (False under ``simulate=True``)."""
    returned: Any = field(default=None, eq=False)
    raised: Exception | None = field(default=None, eq=False)
    problem: str | None = None
    """Why the returned value was rejected (not a mapping, not JSON), if it was."""
    refused: bool = False
    """For ``cancel``/``retry``: the engine refused it (the snapshot did not change)."""
    deadline_passed: bool = False
    """The command's deadline had passed before it ran: the engine saw a timeout."""
    late: str = ""
    """A remote step's delayed command or reply arriving at a later move: what became
    of it (its own move did not make it, so it is not replayed as one)."""
    repeated: bool = False
    """For ``signal``: a wait took this very signal before, so it changed nothing."""

    @property
    def is_call(self) -> bool:
        return self.kind in ("step", "compensation")

    def describe(self) -> str:
        """This entry in words, or "" for bookkeeping a reader does not need."""
        if self.late:
            return f"{self.label} {self.late}"
        if self.kind in ("start", "wake"):
            return ""
        if self.kind == "cancel":
            return self._describe_cancel()
        if self.kind == "retry":
            return "operator retry (refused)" if self.refused else "operator retry"
        if self.kind == "signal":
            note = " (refused)" if self.refused else " (again: no change)" if self.repeated else ""
            return f"signal {self.label}{note}"
        if self.kind == "deadline":
            return f"{self.step}: no event by the deadline"
        return self._describe_call()

    def _describe_cancel(self) -> str:
        if self.refused:
            return "cancel (refused)"
        status, _, step = self.state_before.partition(":")
        if status == "pending":
            return "cancel before start"
        if self.state_after == self.state_before and step:
            return f"cancel while {step} runs"
        return "cancel"

    def _describe_call(self) -> str:
        name = self.label
        if self.deadline_passed:
            return f"{name} deadline passed before it ran"
        if self.fault is Fault.CRASH_BEFORE:
            return f"crash before {name}"
        if self.fault is Fault.PERMANENT:
            return f"{name} refused (permanent)"
        if self.fault is Fault.LOST:
            return f"{name} lost before it arrived"
        fault = self.fault or Fault.OK
        if self.raised is not None:
            return f"{name} raised {self.raised!r}{_AFTER_RAISE[fault]}"
        if self.problem is not None:
            return f"{name} returned {self.returned!r} ({self.problem})"
        return f"{name} {_AFTER_CALL[fault]}"


def render_path(entries: Iterable[TraceEntry]) -> str:
    """``reserve ok -> charge timed out -> release raised KeyError('id')``."""
    words = [w for w in (e.describe() for e in entries) if w]
    return " -> ".join(words) if words else "(nothing happened)"

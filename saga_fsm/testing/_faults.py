"""What can go wrong around one call of an action or compensation.

The harness calls the user's real functions and injects faults *around* them, at the
participant boundary or in the engine's process, never instead of the function when the
function would have run. Each fault says precisely whether the real function is called
and what the engine is told:

============  ==================  ==========================================================
fault         real function       the engine sees
============  ==================  ==========================================================
ok            called              its real outcome (return value or exception)
transient     called              a retryable failure: the effect happened, the reply was lost
permanent     not called          a permanent failure: the participant refused before acting
                                  (only before it saw the call's idempotency key)
timeout       called              ``*_timed_out`` at the deadline: the reply came too late
                                  (only where a timeout is configured, as in production)
crash_before  not called          nothing: the process died after persisting ``running``;
                                  recovery re-issues the same command from the snapshot
crash_after   called              nothing: the process died after the effect, before the
                                  write; recovery calls it again with the same
                                  idempotency key and attempt number
lost          not called          a retryable failure: the request never arrived, so there is
                                  nothing to undo, yet the engine cannot tell it from a lost
                                  reply and compensates the step (an empty compensation)
============  ==================  ==========================================================

``transient``, ``timeout`` and ``crash_after`` leave the participant's effect in place,
so a participant that does not deduplicate on ``ctx.idempotency_key`` acts twice.
"""

from __future__ import annotations

from enum import StrEnum

from saga_fsm._errors import InvalidArgument, InvalidArgumentType
from saga_fsm._snapshot import ErrorInfo


class Fault(StrEnum):
    """One injected outcome of one call; ``OK`` first, so hypothesis shrinks towards it."""

    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    TIMEOUT = "timeout"
    CRASH_BEFORE = "crash_before"
    CRASH_AFTER = "crash_after"
    LOST = "lost"

    @property
    def calls(self) -> bool:
        """Whether the real function runs under this fault."""
        return self not in (Fault.PERMANENT, Fault.CRASH_BEFORE, Fault.LOST)

    @property
    def crashes(self) -> bool:
        return self in (Fault.CRASH_BEFORE, Fault.CRASH_AFTER)


ALL_FAULTS: tuple[Fault, ...] = tuple(Fault)

INJECTED = "saga_fsm.testing.InjectedFault"
REPLY_LOST = ErrorInfo(INJECTED, "reply lost (injected transient failure)", retryable=True)
REQUEST_LOST = ErrorInfo(INJECTED, "request lost (injected transient failure)", retryable=True)
REFUSED = ErrorInfo(INJECTED, "refused (injected permanent failure)", retryable=False)
CHILD_REFUSED = ErrorInfo(
    "ChildCompensated", "the child saga compensated (its first call refused)", retryable=False
)
"""What a child saga step fails with when its child compensated itself: for good."""


def normalise_faults(faults: object) -> tuple[Fault, ...]:
    """The faults to explore, in ``Fault`` order, always including ``OK``."""
    if faults is None:
        return ALL_FAULTS
    if isinstance(faults, (str, Fault)):
        faults = (faults,)
    if not isinstance(faults, (list, tuple, set, frozenset)):
        raise InvalidArgumentType(f"faults must be a collection of Fault values, got {faults!r}")
    try:
        chosen = {Fault(f) for f in faults}
    except ValueError as err:
        names = ", ".join(f.value for f in Fault)
        raise InvalidArgument(f"{err} (faults are: {names})") from None
    chosen.add(Fault.OK)
    return tuple(f for f in Fault if f in chosen)

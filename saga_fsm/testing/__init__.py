"""Property-based tests of your own sagas: every path, every fault, real actions.

``check`` explores a definition with hypothesis: each step of each saga succeeds,
loses its reply (transient failure), is refused (permanent failure), times out, or the
process crashes before or after its effect; operators cancel at any point and retry
parked sagas; compensations fail the same ways. Your real actions and compensations
run (faults are injected around them, see ``Fault``), every transition goes through
the pure core and a store, and invariants are checked after every event: the built-in
saga contract (``BUILTIN_INVARIANTS``) and yours. A failure is shrunk and told as a
scenario; transition coverage says which rows of the Machine were taken.

>>> from saga_fsm import SagaBuilder
>>> from saga_fsm.testing import check, compensation, saga_invariant, scenario, step
>>> released = []                     # a fake participant: what was released, by saga
>>> def fresh_world():                # the setup hook: a clean fake for every example
...     released.clear()
...     return released
>>> def reserve(ctx): return {"reservation_id": f"r-{ctx.saga_id}"}
>>> def release(ctx): released.append(ctx.saga_id)      # not idempotent: a bug
>>> def charge(ctx): return None
>>> order = SagaBuilder("order").step("reserve", reserve, compensation=release).pivot(
...     "charge", charge).build()
>>> @saga_invariant
... def released_at_most_once(ctx):
...     assert ctx.world.count(ctx.saga_id) <= 1, "released twice"
>>> report = check(order, invariants=[released_at_most_once], setup=fresh_world,
...                max_examples=20, seed=1)
>>> report.ok
False
>>> report.counterexample.invariant, report.counterexample.reason
('released_at_most_once', 'released twice')
>>> "release ran" in report.counterexample.path     # it ran again: released twice
True
>>> print(report.counterexample.path)  # doctest: +SKIP
reserve ok -> charge refused (permanent) -> release ran, reply lost -> release ok

Scripted scenarios pin one path down:

>>> result = scenario(order).when(
...     step("charge").fails(permanent=True), compensation("reserve").succeeds()
... ).expect(state="compensated", compensations=["reserve"])
>>> result.run
'reserve ok -> charge refused (permanent) -> release ok'

In pytest, ``TestOrder = saga_test_case(order, invariants=[...])`` is the whole test,
and the plugin provides ``saga_clock`` and ``saga_store_memory``/``_sqlite``/``_postgres``.

A choreography is checked the same way (``check(choreography)``,
``saga_test_case(choreography)``, ``choreography_state_machine``): the real tracker
follows events that are lost, duplicated, reordered and late (``EventFault``), with
tracker restarts, and every instance must end completed, compensated or stuck naming
the event it awaits (``ChoreographyOptions`` says what to explore).
"""

from saga_fsm.testing import _requirements  # noqa: F401 (first: says what is missing)
from saga_fsm.testing._choreo_coverage import ChoreographyCoverage
from saga_fsm.testing._choreo_machine import (
    ChoreographyOptions,
    ChoreographyReport,
    ChoreographyStateMachine,
    choreography_state_machine,
)
from saga_fsm.testing._choreo_world import EventFault
from saga_fsm.testing._coverage import TransitionCoverage
from saga_fsm.testing._driver import CallDidNotReturn
from saga_fsm.testing._explore import CheckReport, Counterexample, check
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._fixtures import StoreFactory
from saga_fsm.testing._invariants import (
    BUILTIN_INVARIANTS,
    Invariant,
    InvariantContext,
    InvariantViolation,
    saga_invariant,
)
from saga_fsm.testing._lock import assert_definitions_locked
from saga_fsm.testing._machine import SagaStateMachine, saga_state_machine
from saga_fsm.testing._options import ExploreOptions
from saga_fsm.testing._scenario import (
    Directive,
    Scenario,
    ScenarioMismatch,
    ScenarioResult,
    cancel,
    compensation,
    operator_retry,
    scenario,
    signal,
    step,
)
from saga_fsm.testing._testcase import saga_test_case
from saga_fsm.testing._trace import TraceEntry

__all__ = [
    "BUILTIN_INVARIANTS",
    "CallDidNotReturn",
    "CheckReport",
    "ChoreographyCoverage",
    "ChoreographyOptions",
    "ChoreographyReport",
    "ChoreographyStateMachine",
    "Counterexample",
    "Directive",
    "EventFault",
    "ExploreOptions",
    "Fault",
    "Invariant",
    "InvariantContext",
    "InvariantViolation",
    "SagaStateMachine",
    "Scenario",
    "ScenarioMismatch",
    "ScenarioResult",
    "StoreFactory",
    "TraceEntry",
    "TransitionCoverage",
    "assert_definitions_locked",
    "cancel",
    "check",
    "choreography_state_machine",
    "compensation",
    "operator_retry",
    "saga_invariant",
    "saga_state_machine",
    "saga_test_case",
    "scenario",
    "signal",
    "step",
]

# Errors are shown under their public names (``saga_fsm.testing.InvariantViolation``).
CallDidNotReturn.__module__ = InvariantViolation.__module__ = __name__
ScenarioMismatch.__module__ = __name__

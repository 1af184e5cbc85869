"""Random success / transient / permanent / timeout / cancel sequences through both
examples, persisted in the in-memory store, checked after every rule and at the end."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from saga_fsm import (
    ErrorInfo,
    Event,
    Finish,
    MemoryStore,
    RunCompensation,
    RunStep,
    SagaDefinition,
    ScheduleWake,
    Snapshot,
    StepKind,
    StepStatus,
    TransitionNotAllowed,
    compile_saga,
    decide,
    new_snapshot,
    outcome_event,
    outstanding,
)
from saga_fsm._codec import snapshot_from_json, snapshot_to_json
from saga_fsm.examples import order_fulfillment, travel_booking

DEFINITIONS = {d.name: d for d in (order_fulfillment.definition, travel_booking.definition)}
OUTCOMES = ("success", "transient", "permanent", "timeout")
MAX_SAGAS = 4


class ExamplePaths(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryStore()
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.sagas: dict[str, Snapshot] = {}
        # Per saga, the effects that really happened, in order: ("do"|"undo", step).
        self.effects: dict[str, list[tuple[str, str]]] = {}

    def teardown(self) -> None:
        self.loop.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _tick(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def _definition(self, snapshot: Snapshot) -> SagaDefinition:
        return DEFINITIONS[snapshot.definition]

    def _apply(self, saga_id: str, event: Event) -> None:
        before = self.sagas[saga_id]
        decision = decide(self._definition(before), before, event)
        # What decide() asks for is exactly what recovery would rebuild from the snapshot.
        pending = tuple(c for c in decision.commands if not isinstance(c, Finish))
        if pending:
            assert outstanding(self._definition(before), decision.snapshot) == pending
        saved = self._run(
            self.store.save(decision.snapshot, decision.history, expected_version=before.version)
        )
        self.sagas[saga_id] = saved

    def _live(self) -> list[str]:
        return sorted(k for k, s in self.sagas.items() if not s.is_terminal)

    # -- rules ------------------------------------------------------------------------------
    @precondition(lambda self: len(self.sagas) < MAX_SAGAS)
    @rule(name=st.sampled_from(sorted(DEFINITIONS)))
    def start(self, name: str) -> None:
        definition = DEFINITIONS[name]
        saga_id = f"saga-{len(self.sagas)}"
        snapshot, created = self._run(
            self.store.create(new_snapshot(definition, saga_id, {"n": 1}, self._tick()))
        )
        assert created
        self.sagas[saga_id] = snapshot
        self.effects[saga_id] = []
        self._apply(saga_id, Event.start(self._tick()))

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def step_outcome(self, data: st.DataObject, outcome: str) -> None:
        saga_id = data.draw(st.sampled_from(self._live()))
        self._advance(saga_id, outcome)

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        saga_id = data.draw(st.sampled_from(self._live()))
        before = self.sagas[saga_id]
        try:
            self._apply(saga_id, Event.cancel(self._tick()))
        except TransitionNotAllowed:
            assert self.sagas[saga_id] == before
            assert self._run(self.store.load(saga_id)) == before
            definition = self._definition(before)
            step = before.current_step
            assert before.status.value == "compensating" or (
                step is not None and definition.step(step).kind is StepKind.RETRIABLE
            )

    @precondition(lambda self: bool(self._parked()))
    @rule(data=st.data())
    def operator_retry(self, data: st.DataObject) -> None:
        saga_id = data.draw(st.sampled_from(self._parked()))
        self._apply(saga_id, Event.retry(self._tick()))

    def _parked(self) -> list[str]:
        return sorted(k for k, s in self.sagas.items() if s.parked_at is not None)

    @precondition(lambda self: bool(self.sagas))
    @rule(data=st.data())
    def history_is_a_path_of_the_machine(self, data: st.DataObject) -> None:
        saga_id = data.draw(st.sampled_from(sorted(self.sagas)))
        rows = compile_saga(self._definition(self.sagas[saga_id])).rows
        edges = {(r.trigger, r.source, r.dest or r.source) for r in rows}
        state = "pending"
        for entry in self._run(self.store.history(saga_id)):
            assert entry.from_state == state
            assert (entry.trigger, entry.from_state, entry.to_state) in edges, entry
            state = entry.to_state
        assert state == self.sagas[saga_id].state

    def _advance(self, saga_id: str, outcome: str) -> None:
        snapshot = self.sagas[saga_id]
        commands = outstanding(self._definition(snapshot), snapshot)
        assert len(commands) == 1, commands
        command = commands[0]
        at = self._tick()
        if isinstance(command, ScheduleWake):
            self.now = max(self.now, command.at)
            self._apply(saga_id, Event.retry_due(self.now))
            return
        assert isinstance(command, RunStep | RunCompensation)
        forward = isinstance(command, RunStep)
        if outcome == "success":
            self.effects[saga_id].append(("do" if forward else "undo", command.step))
            event = outcome_event(command, "succeeded", at)
        elif outcome == "timeout":
            event = outcome_event(command, "timed_out", at)
        else:
            error = ErrorInfo("Boom", outcome, retryable=outcome == "transient")
            event = outcome_event(command, "failed", at, error=error)
        if forward and outcome != "success":
            # A refusal did nothing; otherwise the participant may have acted.
            kind = "refused" if outcome == "permanent" else "maybe"
            self.effects[saga_id].append((kind, command.step))
        self._apply(saga_id, event)

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def states_are_machine_states(self) -> None:
        for snapshot in self.sagas.values():
            assert snapshot.state in compile_saga(self._definition(snapshot)).machine.states

    @invariant()
    def store_holds_exactly_what_was_decided(self) -> None:
        for saga_id, snapshot in self.sagas.items():
            assert self._run(self.store.load(saga_id)) == snapshot
            # (the version is the store's column, not in the JSON)
            decoded = snapshot_from_json(snapshot_to_json(snapshot))
            assert decoded.with_version(snapshot.version) == snapshot

    @invariant()
    def nothing_after_the_pivot_is_compensated(self) -> None:
        for saga_id, snapshot in self.sagas.items():
            definition = self._definition(snapshot)
            pivot = definition.pivot_index
            assert pivot is not None
            undone = {step for kind, step in self.effects[saga_id] if kind == "undo"}
            assert not undone & {s.name for s in definition.steps[pivot:]}

    def teardown_checks(self) -> None:
        # Drive every live saga to its end with successes (bounded), then check outcomes.
        for saga_id in self._live():
            for _ in range(200):
                if self.sagas[saga_id].is_terminal:
                    break
                self._advance(saga_id, "success")
        for saga_id, snapshot in self.sagas.items():
            self._check_final(saga_id, snapshot)

    def _check_final(self, saga_id: str, snapshot: Snapshot) -> None:
        assert snapshot.state in ("completed", "compensated", "failed"), snapshot.state
        definition = self._definition(snapshot)
        done = [step for kind, step in self.effects[saga_id] if kind == "do"]
        undone = [step for kind, step in self.effects[saga_id] if kind == "undo"]
        # A step may have acted if it succeeded or its last outcome was ambiguous.
        last = {step: kind for kind, step in self.effects[saga_id] if kind != "undo"}
        maybe = [s.name for s in definition.steps if last.get(s.name) in ("do", "maybe")]
        compensable_done = [s for s in maybe if definition.step(s).compensable]
        pivot = definition.steps[definition.pivot_index or 0].name
        if snapshot.state == "failed" and snapshot.parked_at == f"running:{pivot}":
            # A pivot whose last attempt may have acted: nothing was compensated.
            assert snapshot.failure is not None and undone == []
            assert last[pivot] == "maybe"
            record = snapshot.step(pivot)
            assert record.status in (StepStatus.FAILED, StepStatus.TIMED_OUT)
        elif snapshot.state == "failed":
            # Otherwise only a compensation that gave up parks a saga, with the cause.
            assert snapshot.parked_at is not None and snapshot.parked_at.startswith("compensating:")
            assert snapshot.failure is not None
            record = snapshot.step(snapshot.parked_at.partition(":")[2])
            assert record.status is StepStatus.COMPENSATION_FAILED
        elif snapshot.state == "compensated":
            # Exactly the compensable steps that may have acted, each once, in reverse order.
            assert undone == list(reversed(compensable_done))
        else:
            assert undone == []
            assert done == [s.name for s in definition.steps if s.action is not None]
        assert len(undone) == len(set(undone))
        assert set(undone) <= set(compensable_done)


class _WithFinalChecks(ExamplePaths):
    def teardown(self) -> None:
        try:
            self.teardown_checks()
        finally:
            super().teardown()


# Settings go on the class pytest collects: set on ExamplePaths.TestCase they would not
# reach this one (each .TestCase is a new class).
TestExamplePaths = _WithFinalChecks.TestCase
TestExamplePaths.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def test_the_collected_state_machine_runs_with_its_settings() -> None:
    chosen = TestExamplePaths.settings
    assert (chosen.max_examples, chosen.stateful_step_count, chosen.deadline) == (100, 30, None)

"""The public surface is deliberate: this list changes only on purpose."""

from __future__ import annotations

import saga_fsm

EXPECTED = [
    "Action",
    "Clock",
    "Command",
    "CompiledSaga",
    "ConcurrencyConflict",
    "DEFAULT_STORE_URL",
    "Decision",
    "DefinitionError",
    "ErrorInfo",
    "Event",
    "FakeClock",
    "Finish",
    "HistoryEntry",
    "InvalidArgument",
    "InvalidReference",
    "InvalidStoreURL",
    "MemoryStore",
    "Orchestrator",
    "PostgresStore",
    "RetryPolicy",
    "RunCompensation",
    "RunStep",
    "SagaBuilder",
    "SagaDefinition",
    "SagaError",
    "SagaLeased",
    "SagaNotFound",
    "SagaStatus",
    "ScheduleWake",
    "Snapshot",
    "SnapshotDecodeError",
    "SnapshotStore",
    "SqliteStore",
    "Step",
    "StepContext",
    "StepFailed",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "StoreError",
    "SystemClock",
    "TransitionNotAllowed",
    "TransitionRow",
    "UnknownDefinition",
    "Worker",
    "compile_saga",
    "decide",
    "idempotency_key",
    "load_definition",
    "load_definition_file",
    "new_snapshot",
    "open_store",
    "outstanding",
    "resolve_reference",
    "run_sync",
]


def test_all_is_sorted_and_pinned() -> None:
    assert saga_fsm.__all__ == sorted(saga_fsm.__all__)
    assert saga_fsm.__all__ == EXPECTED
    for name in saga_fsm.__all__:
        assert hasattr(saga_fsm, name), name


def test_every_error_derives_from_saga_error() -> None:
    errors = [
        v for v in vars(saga_fsm).values() if isinstance(v, type) and issubclass(v, Exception)
    ]
    assert errors and all(issubclass(e, saga_fsm.SagaError) for e in errors)
    assert issubclass(saga_fsm.DefinitionError, ValueError)
    assert issubclass(saga_fsm.InvalidReference, TypeError)


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("saga_fsm").joinpath("py.typed").is_file()

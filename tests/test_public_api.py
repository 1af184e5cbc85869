"""The public surface is deliberate: this list changes only on purpose."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest

import saga_fsm
from saga_fsm import testing

EXPECTED = [
    "Action",
    "BranchRecord",
    "CallbackError",
    "ChildSaga",
    "Clock",
    "Command",
    "CompiledSaga",
    "ConcurrencyConflict",
    "DEFAULT_STORE_URL",
    "Decision",
    "DefinitionError",
    "Definitions",
    "DefinitionsNotLocked",
    "ErrorInfo",
    "Event",
    "FakeClock",
    "Finish",
    "ForEach",
    "HistoryEntry",
    "IdempotencyKeyReused",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidReference",
    "InvalidSagaData",
    "InvalidStoreURL",
    "Lease",
    "MemoryStore",
    "Migrated",
    "MigrationRefused",
    "NotQuarantined",
    "Observer",
    "Orchestrator",
    "Parallel",
    "PostgresStore",
    "QuarantinedSaga",
    "RetryPolicy",
    "RunCompensation",
    "RunStep",
    "SagaBuilder",
    "SagaClient",
    "SagaDefinition",
    "SagaError",
    "SagaExecutor",
    "SagaLeased",
    "SagaNotFound",
    "SagaStatus",
    "SagaStore",
    "ScheduleWake",
    "SignalRefused",
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
    "TableChanged",
    "TransitionNotAllowed",
    "TransitionRow",
    "UnknownDefinition",
    "Unrunnable",
    "WaitFor",
    "WaitOutcome",
    "Worker",
    "WorkerLeases",
    "compile_saga",
    "decide",
    "definition_fingerprint",
    "find_unrunnable",
    "idempotency_key",
    "load_definition",
    "load_definition_file",
    "migrate_sagas",
    "new_snapshot",
    "open_store",
    "outcome_event",
    "outstanding",
    "resolve_reference",
    "run_sync",
    "signal_message",
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


def test_import_saga_fsm_leaves_the_heavy_optional_parts_unimported() -> None:
    heavy = ("psycopg", "psycopg_pool", "graphviz", "click", "rich", "yaml", "hypothesis")
    code = (
        "import sys, saga_fsm; "
        f"print([m for m in {heavy!r} if m in sys.modules]); "
        "saga_fsm.PostgresStore; print('psycopg' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


def test_misuse_raises_saga_errors_that_are_also_value_or_type_errors() -> None:
    with pytest.raises(saga_fsm.InvalidArgument) as caught:
        saga_fsm.Orchestrator(saga_fsm.MemoryStore(), lease_seconds=0)
    assert isinstance(caught.value, ValueError | saga_fsm.SagaError)
    assert issubclass(saga_fsm.InvalidArgument, ValueError)
    assert issubclass(saga_fsm.InvalidArgumentType, TypeError)
    orchestrator = saga_fsm.Orchestrator(saga_fsm.MemoryStore())
    definition = saga_fsm.SagaBuilder("d").pivot("only", lambda ctx: None).build()
    with pytest.raises(saga_fsm.InvalidArgumentType, match="JSON"):
        asyncio.run(orchestrator.start(definition, {"x": object()}))
    with pytest.raises(saga_fsm.InvalidArgument):
        testing.check(definition, sagas=0)
    with pytest.raises(saga_fsm.InvalidArgument, match="faults are"):
        testing.check(definition, faults=["nope"])


def test_store_and_worker_misuse_raises_saga_errors() -> None:
    from saga_fsm.stores.sqlite import _statements

    store = saga_fsm.MemoryStore()
    with pytest.raises(saga_fsm.InvalidArgument, match="limit must be >= 0"):
        asyncio.run(store.list(limit=-1))
    with pytest.raises(saga_fsm.InvalidArgumentType, match="collection of saga ids"):
        asyncio.run(store.renew_leases("s-1", "w", expires_at=datetime.now(UTC)))
    with pytest.raises(saga_fsm.InvalidArgumentType, match="pairs"):
        asyncio.run(
            store.claim_due("w", now=datetime.now(UTC), lease_seconds=1, limit=1, definitions="d")
        )
    with pytest.raises(saga_fsm.InvalidArgument, match="incomplete SQL statement"):
        list(_statements("SELECT 'never closed"))
    definition = saga_fsm.SagaBuilder("d").pivot("only", lambda ctx: None).build()
    with pytest.raises(saga_fsm.InvalidArgument, match="concurrency"):
        saga_fsm.Worker(saga_fsm.Orchestrator(store, [definition]), concurrency=0)
    with pytest.raises(saga_fsm.InvalidArgument, match="definitions it serves"):
        saga_fsm.Worker(saga_fsm.Orchestrator(store))
    with pytest.raises(saga_fsm.InvalidArgument, match="idempotency keys"):
        orchestrator = saga_fsm.Orchestrator(store)
        asyncio.run(orchestrator.start_many(definition, [{}], idempotency_keys=[]))


def test_every_error_of_the_subpackages_derives_from_saga_error_under_its_public_name() -> None:
    from saga_fsm import diagrams

    for module in (testing, diagrams):
        errors = [
            v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseException)
        ]
        assert errors
        for error in errors:
            assert issubclass(error, saga_fsm.SagaError), error
            assert error.__module__ == module.__name__, error
    assert saga_fsm.UnknownDefinition.__module__ == "saga_fsm"
    assert issubclass(saga_fsm.UnknownDefinition, saga_fsm.SagaError)

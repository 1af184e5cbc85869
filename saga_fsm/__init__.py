"""saga_fsm: sagas as explicit state machines.

A saga is a state table of steps (action, compensation, kind, retry policy, timeout).
Each definition compiles once into a ``transitions`` Machine that every instance shares;
the pure core decides, the asyncio ``Orchestrator`` acts, and every transition is
persisted as a snapshot (memory, SQLite or PostgreSQL) before the next side effect.
"""

from typing import TYPE_CHECKING, Any

from saga_fsm._child import ChildSaga
from saga_fsm._client import SagaClient
from saga_fsm._clock import Clock, FakeClock, SystemClock
from saga_fsm._core import (
    Command,
    Decision,
    Event,
    Finish,
    RunCompensation,
    RunStep,
    ScheduleWake,
    decide,
    idempotency_key,
    new_snapshot,
    outcome_event,
    outstanding,
)
from saga_fsm._definition import (
    Action,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    Step,
    StepContext,
    StepKind,
    WaitFor,
    WaitOutcome,
)
from saga_fsm._errors import (
    CallbackError,
    ConcurrencyConflict,
    DefinitionError,
    DefinitionsNotLocked,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidArgumentType,
    InvalidReference,
    InvalidSagaData,
    InvalidStoreURL,
    MigrationRefused,
    NotQuarantined,
    SagaError,
    SagaLeased,
    SagaNotFound,
    SignalRefused,
    SnapshotDecodeError,
    StepFailed,
    StoreError,
    TableChanged,
    TransitionNotAllowed,
    UnknownDefinition,
)
from saga_fsm._executor import SagaExecutor
from saga_fsm._fingerprint import definition_fingerprint
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._groups import ForEach, Parallel
from saga_fsm._lifecycle import TransitionRow
from saga_fsm._loading import load_definition, load_definition_file, resolve_reference
from saga_fsm._orchestrator import Orchestrator, run_sync
from saga_fsm._registry import Definitions
from saga_fsm._remote import signal_message
from saga_fsm._snapshot import (
    BranchRecord,
    ErrorInfo,
    HistoryEntry,
    SagaStatus,
    Snapshot,
    StepRecord,
    StepStatus,
)
from saga_fsm._versions import Migrated, Unrunnable, find_unrunnable, migrate_sagas
from saga_fsm._worker import Worker
from saga_fsm.observability._observer import Observer
from saga_fsm.stores import (
    DEFAULT_STORE_URL,
    Lease,
    MemoryStore,
    QuarantinedSaga,
    SagaStore,
    SnapshotStore,
    SqliteStore,
    WorkerLeases,
    open_store,
)

if TYPE_CHECKING:
    from saga_fsm.stores.postgres import PostgresStore

__all__ = [
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

# Errors are raised to users under their public names (``saga_fsm.StepFailed``).
for _name in __all__:
    _value = globals().get(_name)
    if isinstance(_value, type) and issubclass(_value, BaseException):
        _value.__module__ = "saga_fsm"
del _name, _value


def __getattr__(name: str) -> Any:
    # psycopg is imported when PostgresStore is first used, not by ``import saga_fsm``.
    if name == "PostgresStore":
        from saga_fsm.stores.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

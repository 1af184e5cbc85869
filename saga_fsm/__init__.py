"""saga_fsm: sagas as explicit state machines.

A saga is a state table of steps (action, compensation, kind, retry policy, timeout).
Each definition compiles once into a ``transitions`` Machine that every instance shares;
the pure core decides, the asyncio ``Orchestrator`` acts, and every transition is
persisted as a snapshot (memory, SQLite or PostgreSQL) before the next side effect.
"""

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
)
from saga_fsm._errors import (
    ConcurrencyConflict,
    DefinitionError,
    InvalidArgument,
    InvalidReference,
    InvalidStoreURL,
    SagaError,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
    StepFailed,
    StoreError,
    TransitionNotAllowed,
)
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._lifecycle import TransitionRow
from saga_fsm._loading import load_definition, load_definition_file, resolve_reference
from saga_fsm._orchestrator import Orchestrator, UnknownDefinition, run_sync
from saga_fsm._snapshot import (
    ErrorInfo,
    HistoryEntry,
    SagaStatus,
    Snapshot,
    StepRecord,
    StepStatus,
)
from saga_fsm._worker import Worker
from saga_fsm.stores import (
    DEFAULT_STORE_URL,
    MemoryStore,
    PostgresStore,
    SnapshotStore,
    SqliteStore,
    open_store,
)

__all__ = [
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

# Errors are raised to users under their public names (``saga_fsm.StepFailed``).
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and issubclass(_value, BaseException):
        _value.__module__ = "saga_fsm"
del _name, _value

"""The one exception hierarchy: everything saga_fsm raises derives from SagaError."""

from __future__ import annotations

from datetime import UTC, datetime


class SagaError(Exception):
    """Base of every error saga_fsm raises on purpose."""


class InvalidArgument(SagaError, ValueError):
    """A saga_fsm function was called with a value it cannot accept: NaN, infinite, out
    of range. ``name`` says which argument, when one is to blame, ``value`` what it was."""

    def __init__(self, message: str, *, name: str | None = None, value: object = None) -> None:
        self.name = name
        self.value = value
        super().__init__(message)


class InvalidArgumentType(SagaError, TypeError):
    """A saga_fsm function was called with a value of the wrong kind."""


class DefinitionError(SagaError, ValueError):
    """A saga definition is invalid. Raised when it is built, never when it runs.

    ``row`` is the 0-based step index (None for saga-level fields), ``step`` the
    step's name when known, ``field`` the offending field, ``reason`` why.
    """

    def __init__(
        self,
        reason: str,
        *,
        row: int | None = None,
        step: str | None = None,
        field: str | None = None,
        source: str | None = None,
    ) -> None:
        self.reason = reason
        self.row = row
        self.step = step
        self.field = field
        self.source = source
        where = []
        if source is not None:
            where.append(source)
        if row is not None:
            where.append(f"step {row}" + (f" {step!r}" if step else ""))
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class InvalidReference(DefinitionError, TypeError):
    """A ``package.module:attribute`` reference cannot be imported or is the wrong kind."""


class TransitionNotAllowed(SagaError):
    """The saga's current state has no transition for this trigger (or every guard said no)."""

    def __init__(self, saga_id: str, state: str, trigger: str, reason: str = "") -> None:
        self.saga_id = saga_id
        self.state = state
        self.trigger = trigger
        self.reason = reason
        msg = f"saga {saga_id}: {trigger!r} is not allowed in state {state!r}"
        super().__init__(f"{msg}: {reason}" if reason else msg)


class SignalRefused(TransitionNotAllowed):
    """A signal that cannot end the saga's wait: the saga is not waiting, waits for other
    events, or already got another one. Nothing was changed."""

    def __init__(self, saga_id: str, state: str, signal: str, reason: str) -> None:
        self.signal = signal
        super().__init__(saga_id, state, "signal", reason)


class StepFailed(SagaError):
    """Raised by an action (or recorded by the engine) when a step fails.

    ``retryable=False`` marks a permanent failure: the participant refused and changed
    nothing. Before the pivot the retry policy is skipped and the saga compensates at
    once; after the pivot there is no way back, so the step is retried regardless.
    From a compensation it parks the saga in ``failed`` for an operator.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class ConcurrencyConflict(SagaError):
    """Another writer saved this saga first: the optimistic version did not match."""

    def __init__(self, saga_id: str, expected_version: int, actual_version: int | None) -> None:
        self.saga_id = saga_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"saga {saga_id}: expected version {expected_version}, store has {actual_version}"
        )


class SnapshotDecodeError(SagaError):
    """A stored snapshot is corrupt or has a schema version this release cannot read."""

    def __init__(self, saga_id: str | None, reason: str) -> None:
        self.saga_id = saga_id
        self.reason = reason
        super().__init__(f"saga {saga_id}: cannot decode snapshot: {reason}")


class SagaNotFound(SagaError, KeyError):
    """No saga with this id exists in the store."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(saga_id)

    def __str__(self) -> str:
        return f"no saga with id {self.saga_id!r}"


class SagaLeased(SagaError):
    """Another worker holds this saga's lease: it is being driven elsewhere."""

    def __init__(self, saga_id: str, owner: str, until: object) -> None:
        self.saga_id = saga_id
        self.owner = owner
        self.until = until
        when = str(until)
        if isinstance(until, datetime):
            left = max(0.0, (until - datetime.now(UTC)).total_seconds())
            when = f"{until.astimezone(UTC).isoformat(timespec='seconds')} (in {left:.0f}s)"
        super().__init__(
            f"saga {saga_id} is held by worker {owner!r} until {when};"
            " if that worker is dead, resume it after then"
        )


class StoreError(SagaError):
    """The store could not be reached or refused an operation (wraps driver errors)."""


class InvalidStoreURL(StoreError, ValueError):
    """A store URL has an unknown scheme or a malformed path."""


class CallbackError(SagaError):
    """A definition's own transitions callback raised inside a decision; nothing was
    decided. ``hook`` is where it was attached (``on_enter_<state>``, ...), ``callback``
    the function's name, ``error`` what it raised."""

    def __init__(self, hook: str, callback: str, error: BaseException) -> None:
        self.hook = hook
        self.callback = callback
        self.error = error
        super().__init__(f"callback {callback} ({hook}) raised {error!r}")


class UnknownDefinition(SagaError, LookupError):
    """A snapshot names a definition (name, version) this orchestrator cannot find."""

    def __init__(self, name: str, version: int, why: str = "") -> None:
        self.name = name
        self.version = version
        super().__init__(
            f"no definition {name!r} version {version} is registered" + (f": {why}" if why else "")
        )


class TableChanged(UnknownDefinition):
    """A saga is pinned to a table (its ``definition_fingerprint``) other than the one
    registered under its (name, version): it is never run on that one. Register the
    definition it started with, or move it with ``saga-fsm migrate``."""

    def __init__(self, name: str, version: int, saga_id: str, pinned: str, registered: str) -> None:
        self.name = name
        self.version = version
        self.saga_id = saga_id
        self.pinned = pinned
        self.registered = registered
        SagaError.__init__(
            self,
            f"saga {saga_id} is pinned to table {pinned[:12]} of {name!r} version {version},"
            f" but the registered one is {registered[:12]}: the definition changed without a"
            " version bump; register the one it started with, or migrate it",
        )


class MigrationRefused(SagaError):
    """A migration to another version was refused and wrote nothing. ``reasons`` maps
    each saga id to why (``""`` as the key: a reason that concerns them all)."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = dict(reasons)
        lines = [f"{saga_id}: {why}" if saga_id else why for saga_id, why in reasons.items()]
        super().__init__("migration refused, nothing was changed:\n  " + "\n  ".join(lines))


class DefinitionsNotLocked(SagaError, AssertionError):
    """Released definitions whose table changed without a version bump (or that the lock
    file does not hold yet). ``problems`` holds one line per definition."""

    def __init__(self, lock: str, problems: list[str]) -> None:
        self.lock = lock
        self.problems = list(problems)
        super().__init__(f"{lock}:\n  " + "\n  ".join(problems))


class InvalidSagaData(InvalidArgument, InvalidArgumentType):
    """Saga data (or an action's result) that JSON cannot hold exactly: NaN, Infinity,
    a number too large for a float (``1e999``), a key that is not a string, a value of
    another type. ``path`` names the field (``data.order.lines[0].qty``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class IdempotencyKeyReused(SagaError, ValueError):
    """An idempotency key already started saga ``saga_id`` with another definition or
    other data: the same key must mean the same request."""

    def __init__(self, key: str, saga_id: str) -> None:
        self.key = key
        self.saga_id = saga_id
        super().__init__(
            f"idempotency key {key!r} already started saga {saga_id} with another definition"
            " or other data; use a new key for a new request"
        )


class NotQuarantined(SagaError):
    """``unquarantine`` of a saga that is not quarantined."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"saga {saga_id} is not quarantined")

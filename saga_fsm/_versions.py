"""Versioned definitions at the edges: which sagas no registered table can run, the lock
file of released fingerprints, and moving sagas to another version."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from attrs import frozen

from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import (
    DefinitionsNotLocked,
    InvalidArgument,
    MigrationRefused,
    SagaError,
    UnknownDefinition,
)
from saga_fsm._fingerprint import accepted, fingerprint, short
from saga_fsm._flow import compile_saga
from saga_fsm._registry import Definitions, registry
from saga_fsm._snapshot import (
    HistoryEntry,
    SagaStatus,
    Snapshot,
    StepRecord,
    StepStatus,
    replace,
    split_state,
)
from saga_fsm.stores._protocol import SagaStore, SnapshotStore

# -- unrunnable sagas ----------------------------------------------------------------------


@frozen
class Unrunnable:
    """A saga that none of the definitions given can run, and why."""

    snapshot: Snapshot
    reason: str


async def find_unrunnable(
    store: SnapshotStore,
    definitions: Definitions | Iterable[SagaDefinition],
    *,
    names: Collection[str] | None = None,
    limit: int | None = None,
) -> list[Unrunnable]:
    """The unfinished or parked sagas (of ``names`` only, when given) whose (name,
    version, fingerprint) none of ``definitions`` serves: no worker with these
    definitions runs them (nor an operator's retry). Oldest first. ``limit`` bounds
    how many of the newest unfinished, and of the newest parked, sagas of each name are
    looked at. Rows that cannot be decoded are the quarantine's business, not listed."""
    known = registry(definitions)
    found: dict[str, Unrunnable] = {}
    wanted: list[str | None] = [*sorted(names)] if names is not None else [None]
    for name in wanted:
        for state in (None, SagaStatus.FAILED.value):
            rows = await store.list(
                definition=name,
                state=state,
                unfinished=state is None,
                limit=limit,
                newest_first=True,
            )
            for snapshot in rows:
                if not isinstance(snapshot, Snapshot):
                    continue
                try:
                    known.compiled_for(snapshot)
                except UnknownDefinition as err:
                    found[snapshot.saga_id] = Unrunnable(snapshot, str(err))
    return sorted(found.values(), key=lambda u: (u.snapshot.created_at, u.snapshot.saga_id))


# -- the lock file of released fingerprints ------------------------------------------------

LOCK_FORMAT = 1


def lock_entries(definitions: Iterable[SagaDefinition]) -> dict[tuple[str, int], str]:
    """(name, version) -> fingerprint of each definition."""
    return {(d.name, d.version): fingerprint(compile_saga(d)) for d in definitions}


def read_lock(path: Path) -> dict[tuple[str, int], str]:
    """The lock file's entries; a file that is not one is refused naming what is wrong."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("format") != LOCK_FORMAT:
            raise ValueError(f"format {body.get('format')!r}, expected {LOCK_FORMAT}")
        return {
            (str(e["name"]), int(e["version"])): str(e["fingerprint"]) for e in body["definitions"]
        }
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InvalidArgument(f"{path} is not a saga definitions lock file: {err}") from None


def write_lock(path: Path, entries: Mapping[tuple[str, int], str]) -> None:
    rows = [
        {"name": name, "version": version, "fingerprint": entries[(name, version)]}
        for name, version in sorted(entries)
    ]
    text = json.dumps({"format": LOCK_FORMAT, "definitions": rows}, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")


def changed_tables(
    definitions: Iterable[SagaDefinition], locked: Mapping[tuple[str, int], str]
) -> list[str]:
    """One line per released (locked) version whose table changed without a bump."""
    compiled = {(d.name, d.version): compile_saga(d) for d in definitions}
    return [
        f"{name} version {version}: fingerprint {locked[(name, version)]} is now {table}"
        " (a released version changed: bump its version, or run with --update)"
        for (name, version), table in sorted(
            lock_entries(compiled[k].definition for k in compiled).items()
        )
        if (name, version) in locked
        # A table an upgrade of saga_fsm changed under the same definition still runs it.
        and locked[(name, version)] not in accepted(compiled[(name, version)])
    ]


def assert_definitions_locked(
    definitions: Iterable[SagaDefinition] | Definitions, lock_path: str | Path
) -> None:
    """Fail (``DefinitionsNotLocked``, an ``AssertionError``) when a definition's table
    differs from the fingerprint ``lock_path`` holds for its (name, version), or when the
    lock does not hold it yet (``saga-fsm check-definitions REF... --lock PATH`` adds it).
    For a test suite: a released version must never change under running sagas."""
    given = (
        [registry(definitions).get(n, v) for n, v in definitions.served]
        if isinstance(definitions, Definitions)
        else list(definitions)
    )
    path = Path(lock_path)
    if not path.exists():
        raise DefinitionsNotLocked(
            str(path), ["no lock file: create it with saga-fsm check-definitions --lock"]
        )
    locked = read_lock(path)
    problems = changed_tables(given, locked)
    problems += [
        f"{d.name} version {d.version}: not in the lock (fingerprint"
        f" {fingerprint(compile_saga(d))}): add it with saga-fsm check-definitions --lock"
        for d in given
        if (d.name, d.version) not in locked
    ]
    if problems:
        raise DefinitionsNotLocked(str(path), problems)


# -- migrating sagas to another version ----------------------------------------------------


@frozen
class Migrated:
    """What ``migrate`` did: the sagas it moved (as stored), and those of the version it
    left, with why (given no ids: sagas in flight or held by a live worker)."""

    migrated: tuple[Snapshot, ...]
    left: tuple[tuple[str, str], ...]


def _parse_mapping(state_map: Mapping[str, str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for old, new in state_map.items():
        for side in (old, new):
            try:
                split_state(side)
            except ValueError:
                raise MigrationRefused(
                    {"": f"--state {old}={new}: {side!r} is not a saga state"}
                ) from None
        mapping[old] = new
    return mapping


def _step_renames(mapping: Mapping[str, str]) -> dict[str, str]:
    """Step renames the state mapping implies (``running:a=running:b``: a is b)."""
    renames: dict[str, str] = {}
    for old, new in mapping.items():
        old_step, new_step = split_state(old)[1], split_state(new)[1]
        if old_step is None or new_step is None:
            continue
        if renames.get(old_step, new_step) != new_step:
            raise MigrationRefused(
                {"": f"step {old_step!r} is mapped to both {renames[old_step]!r} and {new_step!r}"}
            )
        renames[old_step] = new_step
    return renames


def _moved(
    snapshot: Snapshot,
    target: SagaDefinition,
    table: str,
    mapping: Mapping[str, str],
    renames: Mapping[str, str],
    now: datetime,
) -> tuple[Snapshot, HistoryEntry] | str:
    """The snapshot on ``target``'s table, or why it cannot be moved."""
    compiled = compile_saga(target)
    state = mapping.get(snapshot.state, snapshot.state)
    if state not in compiled.states:
        return (
            f"state {state!r} does not exist in version {target.version}"
            f" (map it with --state {snapshot.state}=STATE)"
        )
    parked_at = snapshot.parked_at
    if parked_at is not None:
        parked_at = mapping.get(parked_at, parked_at)
        if parked_at not in compiled.states:
            return (
                f"it was parked at {parked_at!r}, which does not exist in version"
                f" {target.version} (map it with --state {snapshot.parked_at}=STATE)"
            )
    names = {step.name for step in target.steps}
    records: dict[str, StepRecord] = {}
    for record in snapshot.steps:
        name = renames.get(record.name, record.name)
        if name not in names:
            if record.status in (StepStatus.PENDING, StepStatus.SKIPPED):
                continue  # never ran: nothing of it to carry over or undo
            return (
                f"step {record.name!r} is {record.status.value} and version {target.version}"
                f" has no step {name!r}: map it with --state running:{record.name}=running:STEP"
            )
        if name in records:
            return f"steps {records[name].name!r} and {record.name!r} both become {name!r}"
        records[name] = replace(record, name=name) if name != record.name else record
    steps = tuple(records.get(step.name, StepRecord(step.name)) for step in target.steps)
    status, current = split_state(state)
    if status is SagaStatus.RUNNING and current is not None:
        for step, record in zip(target.steps, steps, strict=True):
            if step.name == current:
                break
            if record.status is not StepStatus.SUCCEEDED:
                return (
                    f"step {step.name!r} comes before {current!r} in version"
                    f" {target.version} but is {record.status.value}, not succeeded"
                )
    moved = replace(
        snapshot,
        definition_version=target.version,
        definition_fingerprint=table,
        state=state,
        steps=steps,
        parked_at=parked_at,
        updated_at=now,
    )
    entry = HistoryEntry(
        snapshot.state,
        state,
        "migrate",
        now,
        {
            "from_version": snapshot.definition_version,
            "to_version": target.version,
            "from_fingerprint": snapshot.definition_fingerprint,
            "to_fingerprint": table,
            "steps": {old: new for old, new in renames.items() if old != new},
        },
    )
    return moved, entry


def _why_not_movable(snapshot: Snapshot, lease_live: bool) -> str | None:
    if lease_live:
        return "a live worker holds its lease: stop it, or wait for it to hand the saga back"
    status, step = snapshot.status, snapshot.current_step
    if status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
        return f"it is {status.value}: nothing to move"
    if step is not None and snapshot.step(step).status in (
        StepStatus.RUNNING,
        StepStatus.COMPENSATING,
    ):
        return f"step {step!r} is in flight (it may be acting now): resume it first"
    return None


async def migrate_sagas(
    store: SagaStore,
    definitions: Definitions | Iterable[SagaDefinition],
    name: str,
    *,
    from_version: int,
    to_version: int,
    state_map: Mapping[str, str] | None = None,
    ids: Sequence[str] | None = None,
    now: datetime,
) -> Migrated:
    """Move the sagas of ``name`` ``from_version`` that wait (pending, parked in
    ``failed``, or between attempts) to ``to_version``'s table (which ``definitions``
    must hold), their states renamed by ``state_map`` (``{"running:charge":
    "running:charge_card"}``: the step record ``charge`` becomes ``charge_card``) and
    each move recorded in their history (trigger ``migrate``).

    Every saga is checked before anything is written: one that cannot be moved (a state
    the target lacks, a step that acted and has no counterpart, a step in flight, a
    live lease) refuses the whole migration (``MigrationRefused``, with every reason).
    Given no ``ids``, sagas in flight or under a live lease are left and reported
    instead. Each move is one write guarded by the saga's version: a worker that claims
    a saga meanwhile wins, and that saga is reported as left."""
    if from_version == to_version:
        raise InvalidArgument(f"--from and --to are both {from_version}")
    target = registry(definitions).get(name, to_version)
    table = fingerprint(compile_saga(target))
    mapping = _parse_mapping(state_map or {})
    renames = _step_renames(mapping)
    if ids is not None:
        chosen = [await store.load(saga_id) for saga_id in dict.fromkeys(ids)]
    else:
        chosen = [
            s
            for s in await store.list(definition=name)
            if isinstance(s, Snapshot)
            and s.definition_version == from_version
            and (not s.is_terminal or s.status is SagaStatus.FAILED)
        ]
    refused: dict[str, str] = {}
    left: list[tuple[str, str]] = []
    moves: list[tuple[Snapshot, Snapshot, HistoryEntry]] = []
    for snapshot in chosen:
        if (snapshot.definition, snapshot.definition_version) != (name, from_version):
            refused[snapshot.saga_id] = (
                f"it is {snapshot.definition!r} version {snapshot.definition_version},"
                f" not {name!r} version {from_version}"
            )
            continue
        lease = await store.lease(snapshot.saga_id)
        why = _why_not_movable(snapshot, lease is not None and lease.live(now))
        if why is not None:
            if ids is not None:
                refused[snapshot.saga_id] = why  # asked for by id: refused, not skipped
            else:
                left.append((snapshot.saga_id, why))
            continue
        result = _moved(snapshot, target, table, mapping, renames, now)
        if isinstance(result, str):
            refused[snapshot.saga_id] = result
        else:
            moves.append((snapshot, *result))
    if refused:
        raise MigrationRefused(refused)
    migrated: list[Snapshot] = []
    for old, new, entry in moves:
        try:
            migrated.append(await store.save(new, [entry], expected_version=old.version))
        except SagaError as err:
            left.append((old.saga_id, f"not moved: {err}"))
    return Migrated(tuple(migrated), tuple(left))


def describe(unrunnable: Unrunnable) -> str:
    """One line for ``ls --unrunnable``."""
    s = unrunnable.snapshot
    return (
        f"{s.saga_id}  {s.definition} v{s.definition_version}"
        f" table {short(s.definition_fingerprint)}  {s.state}  {unrunnable.reason}"
    )

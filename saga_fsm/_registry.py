"""The definitions a process knows: what its client may start and its executor drives."""

from __future__ import annotations

from collections.abc import Iterable

from saga_fsm._child import ChildSaga
from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import SagaError, TableChanged, UnknownDefinition
from saga_fsm._fingerprint import accepted, fingerprint
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._snapshot import Snapshot


class Definitions:
    """Registered saga definitions, compiled once, by (name, version). Several versions
    of a name live side by side: each instance runs on the one it started with."""

    def __init__(self, definitions: Iterable[SagaDefinition] = ()) -> None:
        self._compiled: dict[tuple[str, int], CompiledSaga] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: SagaDefinition) -> CompiledSaga:
        """Compile and keep ``definition``; a different one under a (name, version)
        already registered is refused: a changed definition needs a new version."""
        key = (definition.name, definition.version)
        known = self._compiled.get(key)
        if known is not None and known.definition is definition:
            return known  # the common case, every run(): no deep comparison, no hashing
        if known is not None and known.definition != definition:
            raise SagaError(
                f"a different definition {definition.name!r} version {definition.version}"
                " is already registered: bump the version when a definition changes"
            )
        compiled = compile_saga(definition)
        self._compiled[key] = compiled
        for step in definition.steps:
            # A worker that serves a parent serves the children it starts by definition.
            if isinstance(step, ChildSaga) and isinstance(step.definition, SagaDefinition):
                self.register(step.definition)
        return compiled

    @property
    def served(self) -> tuple[tuple[str, int], ...]:
        """The (name, version) of every registered definition."""
        return tuple(self._compiled)

    @property
    def claimable(self) -> tuple[tuple[str, int, str], ...]:
        """(name, version, fingerprint) of every registered definition: what a worker
        claims. A saga pinned to another table of the same (name, version) is left."""
        return tuple((n, v, table) for (n, v), c in self._compiled.items() for table in accepted(c))

    def get(self, name: str, version: int | None = None) -> SagaDefinition:
        """The definition registered as ``name`` ``version``; without a version, the
        newest registered version of ``name`` (what new starts use)."""
        if version is not None:
            compiled = self._compiled.get((name, version))
            if compiled is None:
                raise UnknownDefinition(name, version, self._versions_of(name))
            return compiled.definition
        versions = [v for n, v in self._compiled if n == name]
        if not versions:
            raise UnknownDefinition(name, 0, "no version of it is registered")
        return self._compiled[(name, max(versions))].definition

    def _versions_of(self, name: str) -> str:
        versions = sorted(v for n, v in self._compiled if n == name)
        if not versions:
            return "no version of it is registered"
        return "registered versions: " + ", ".join(str(v) for v in versions)

    def compiled_for(self, snapshot: Snapshot) -> CompiledSaga:
        """The registered definition of a snapshot, refused (``TableChanged``) when the
        snapshot is pinned to another table. Never one loaded from what the row says
        (``definition_ref``): whoever can write a row must not choose the code a worker
        imports."""
        key = (snapshot.definition, snapshot.definition_version)
        compiled = self._compiled.get(key)
        if compiled is None:
            raise UnknownDefinition(*key, "register it with this orchestrator")
        pinned = snapshot.definition_fingerprint
        if pinned is None:
            # Started before fingerprints: runs on the registered table, unless its step
            # records show that it started on another one.
            if len(snapshot.steps) != len(compiled.step_index) or any(
                record.name not in compiled.step_index for record in snapshot.steps
            ):
                steps = ", ".join(record.name for record in snapshot.steps)
                raise UnknownDefinition(
                    *key,
                    f"saga {snapshot.saga_id} (unpinned) has the steps {steps}, not those of"
                    " the registered table: register the one it started with, or migrate it",
                )
        elif pinned not in accepted(compiled):
            raise TableChanged(*key, snapshot.saga_id, pinned, fingerprint(compiled))
        return compiled


def registry(definitions: Definitions | Iterable[SagaDefinition]) -> Definitions:
    """``definitions`` as a registry: shared when it is one, else a new one."""
    return definitions if isinstance(definitions, Definitions) else Definitions(definitions)

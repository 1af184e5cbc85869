"""The definitions a process knows: what its client may start and its executor drives."""

from __future__ import annotations

from collections.abc import Iterable

from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import SagaError, UnknownDefinition
from saga_fsm._flow import CompiledSaga, compile_saga
from saga_fsm._snapshot import Snapshot


class Definitions:
    """Registered saga definitions, compiled once, by (name, version)."""

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
        return compiled

    @property
    def served(self) -> tuple[tuple[str, int], ...]:
        """The (name, version) of every registered definition: what a worker claims."""
        return tuple(self._compiled)

    def compiled_for(self, snapshot: Snapshot) -> CompiledSaga:
        """The registered definition of a snapshot. Never one loaded from what the row
        says (``definition_ref``): whoever can write a row must not choose the code a
        worker imports."""
        key = (snapshot.definition, snapshot.definition_version)
        compiled = self._compiled.get(key)
        if compiled is None:
            raise UnknownDefinition(*key, "register it with this orchestrator")
        return compiled


def registry(definitions: Definitions | Iterable[SagaDefinition]) -> Definitions:
    """``definitions`` as a registry: shared when it is one, else a new one."""
    return definitions if isinstance(definitions, Definitions) else Definitions(definitions)

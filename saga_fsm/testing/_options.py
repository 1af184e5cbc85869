"""How ``saga_fsm.testing`` explores a definition: one value shared by ``check``,
``saga_test_case`` and ``saga_state_machine`` (each also takes its fields as keywords)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from attrs import field, frozen

from saga_fsm._errors import InvalidArgument, InvalidArgumentType
from saga_fsm.participant import Participant
from saga_fsm.stores import SnapshotStore
from saga_fsm.testing._faults import Fault, normalise_faults
from saga_fsm.testing._fixtures import DataSource, Setup, StoreFactory
from saga_fsm.testing._invariants import Invariant, InvariantFunction, as_invariant


def _invariants(values: Iterable[Invariant | InvariantFunction]) -> tuple[Invariant, ...]:
    return tuple(as_invariant(v) for v in values)


def _faults(values: Iterable[Fault | str] | None) -> tuple[Fault, ...]:
    return normalise_faults(values)


def _whole(_instance: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"sagas must be a whole number >= 1, got {value!r}")


@frozen
class ExploreOptions:
    """What to explore and check. ``faults`` are the faults hypothesis may inject
    (all by default); ``sagas`` how many sagas may be live at once; ``simulate`` never
    calls the real functions; ``directed_paths`` takes a shortest path to every
    reachable transition random exploration missed (``check`` and ``saga_test_case``);
    ``participants`` answer remote steps (see ``saga_fsm.testing._remote``)."""

    invariants: tuple[Invariant, ...] = field(default=(), converter=_invariants)
    data: DataSource = None
    setup: Setup | None = None
    store: SnapshotStore | StoreFactory | str | None = None
    faults: tuple[Fault, ...] = field(default=None, converter=_faults)
    sagas: int = field(default=1, validator=_whole)
    simulate: bool = False
    operator_retry: bool = True
    builtin_invariants: bool = True
    directed_paths: bool = True
    participants: tuple[Participant, ...] = field(default=(), converter=tuple)
    """Who answers remote steps' commands, with their real handlers and inbox; a
    channel none of them handles is answered by an ideal participant."""

    def with_changes(self, changes: Mapping[str, Any]) -> ExploreOptions:
        """These options with ``changes`` (field name -> value) applied."""
        names = [a.name for a in attrs.fields(ExploreOptions)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise InvalidArgumentType(
                f"unknown option {', '.join(map(repr, unknown))} (options are: {', '.join(names)})"
            )
        return attrs.evolve(self, **changes) if changes else self


def explore_options(options: ExploreOptions | None, keywords: Mapping[str, Any]) -> ExploreOptions:
    """``options`` (default: the defaults) with the caller's keyword options applied."""
    if options is not None and not isinstance(options, ExploreOptions):
        raise InvalidArgumentType(f"options must be an ExploreOptions, got {options!r}")
    return (options or ExploreOptions()).with_changes(keywords)

"""``saga_test_case``: one line turns a definition into a pytest test class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saga_fsm._definition import SagaDefinition
from saga_fsm.choreography._definition import Choreography
from saga_fsm.stores import SnapshotStore
from saga_fsm.testing._explore import DEFAULT_STEPS, check
from saga_fsm.testing._fixtures import StoreFactory
from saga_fsm.testing._machine import class_name
from saga_fsm.testing._options import explore_options

if TYPE_CHECKING:
    import pytest

_STORE_FIXTURES = {"memory", "sqlite", "postgres"}


def _resolve_store(
    request: pytest.FixtureRequest, store: SnapshotStore | StoreFactory | str | None
) -> SnapshotStore | StoreFactory | str | None:
    """``"memory"``/``"sqlite"``/``"postgres"`` name the plugin's store fixtures, any
    other plain name a fixture of yours; a URL or a store object is used as it is."""
    if not isinstance(store, str) or "://" in store:
        return store
    name = f"saga_store_{store}" if store in _STORE_FIXTURES else store
    value: SnapshotStore | StoreFactory = request.getfixturevalue(name)
    return value


def saga_test_case(
    definition: SagaDefinition | Choreography,
    options: Any = None,
    *,
    max_examples: int | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    min_coverage: float | None = None,
    **keywords: Any,
) -> type:
    """A pytest test class checking ``definition``: ``TestOrder = saga_test_case(order)``.

    Its one test runs ``check`` with these options and fails with the shrunk
    counterexample (the path in words, the invariant that broke, the seed to replay
    it). ``store`` is ``"memory"`` (default), ``"sqlite"`` or ``"postgres"`` (the
    plugin's fixtures), the name of a fixture of yours, a URL or a store. Coverage is
    listed in pytest's terminal summary; with ``min_coverage`` (0..1) too little of it
    fails the test. ``options`` (an ``ExploreOptions``), or its fields as keywords,
    say what to explore. A ``Choreography`` gets ``choreography_test_case``'s class.
    """
    if isinstance(definition, Choreography):
        from saga_fsm.testing._choreo_machine import choreography_test_case

        return choreography_test_case(
            definition,
            options,
            max_examples=max_examples,
            steps=steps,
            seed=seed,
            min_coverage=min_coverage,
            **keywords,
        )
    chosen = explore_options(options, keywords)  # a bad option fails here, not in the test
    settings: dict[str, Any] = {"max_examples": max_examples, "steps": steps, "seed": seed}

    def test_saga_properties(self: object, request: pytest.FixtureRequest) -> None:
        from saga_fsm.testing.pytest_plugin import record_report

        store = chosen.store if chosen.store is not None else "memory"
        resolved = chosen.with_changes({"store": _resolve_store(request, store)})
        report = check(definition, resolved, **settings)
        record_report(request.config, request.node.nodeid, report)
        report.raise_for_failure()
        if min_coverage is not None and report.coverage.ratio < min_coverage:
            raise AssertionError(
                f"transition coverage below {min_coverage:.0%}:\n{report.coverage.format()}"
            )

    name = f"Test{class_name(definition)}"
    test_saga_properties.__doc__ = f"Every path of {definition.name}: saga_fsm properties hold."
    return type(
        name,
        (),
        {
            "__doc__": f"Property tests of the {definition.name} saga (saga_fsm.testing).",
            "__qualname__": name,
            "definition": definition,
            "test_saga_properties": test_saga_properties,
        },
    )

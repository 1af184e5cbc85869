"""The pytest plugin, as a user meets it: its fixtures and the one-line test class,
loaded through the ``pytest11`` entry point in a separate pytest session."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

ORDER = """
from saga_fsm import SagaBuilder

def reserve(ctx): return {"reservation": ctx.idempotency_key}
def release(ctx): return None
async def ship(ctx): return {"tracking": "t-1"}

order = SagaBuilder("order").step("reserve", reserve, compensation=release).pivot(
    "ship", ship).build()
"""


def test_the_fixtures_and_the_one_liner(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        shop=ORDER,
        test_user="""
        from saga_fsm import FakeClock, Orchestrator
        from saga_fsm.testing import StoreFactory, saga_test_case
        from shop import order

        TestOrder = saga_test_case(order, max_examples=10, seed=1)
        TestOrderOnSqlite = saga_test_case(order, store="sqlite", max_examples=5, seed=1)

        def test_clock(saga_clock):
            start = saga_clock.now()
            saga_clock.advance(5)
            assert isinstance(saga_clock, FakeClock)
            assert (saga_clock.now() - start).total_seconds() == 5

        def test_stores(saga_store_memory, saga_store_sqlite, saga_clock):
            for factory in (saga_store_memory, saga_store_sqlite):
                assert isinstance(factory, StoreFactory)

                async def run(store):
                    engine = Orchestrator(store, [order], clock=saga_clock)
                    return (await engine.run(order, {})).state

                async def count(store):
                    return len(await store.list())

                assert factory.run(run) == "completed"
                assert factory.run(count) == 1  # the same data on every open
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*saga_fsm transition coverage*",
            "test_user.py::TestOrder::test_saga_properties: order",
            "*reachable transitions taken (100%)",
            "test_user.py::TestOrderOnSqlite::test_saga_properties: order",
        ]
    )


def test_a_broken_saga_fails_with_its_counterexample(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_broken="""
        from saga_fsm import SagaBuilder, StepFailed
        from saga_fsm.testing import saga_test_case

        def reserve(ctx): return None
        def release(ctx): raise StepFailed("no", retryable=False)
        def ship(ctx): return None

        broken = SagaBuilder("broken").step("reserve", reserve, compensation=release).pivot(
            "ship", ship).build()
        TestBroken = saga_test_case(broken, max_examples=20, seed=3)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*InvariantViolation: invariant 'compensations_do_not_fail_on_their_own' broken*",
            "*path: *release raised StepFailed('no')",
            "*saga_fsm.testing: broken, found after * examples, seed 3*",
        ]
    )


def test_the_postgres_fixture_uses_the_test_dsn(
    pytester: pytest.Pytester, postgres_server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGA_FSM_TEST_DSN", postgres_server_dsn)
    pytester.makepyfile(
        shop=ORDER,
        test_pg="""
        from saga_fsm import Orchestrator
        from saga_fsm.testing import saga_test_case
        from shop import order

        TestOrderOnPostgres = saga_test_case(order, store="postgres", max_examples=5, seed=2)

        def test_a_fresh_schema(saga_store_postgres, saga_clock):
            async def run(store):
                assert await store.list() == []
                return (await Orchestrator(store, [order], clock=saga_clock).run(order, {})).state

            assert saga_store_postgres.run(run) == "completed"
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("ci", ["", "true"])
def test_an_unreachable_server_skips_or_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("SAGA_FSM_TEST_DSN", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_pg="def test_it(saga_store_postgres): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    if ci:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*CI=true: not skipping*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(
            ["*PostgreSQL at postgresql://nobody@127.0.0.1:1/none is unreachable*"]
        )

"""The SagaQueries contract (pages and counts for a console), run against every store:
memory, SQLite and PostgreSQL give the same answers."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from attrs import evolve

from saga_fsm._snapshot import Snapshot
from saga_fsm.stores import SagaQueries
from saga_fsm.stores._queries import (
    MAX_PAGE,
    PageKey,
    SagaFilter,
    SagaRow,
    StateCount,
)
from tests.stores.test_contract import ORDER, REFUND, T0, Harness, harness, started

__all__ = ["harness"]  # the fixture, shared with the SnapshotStore contract

# (id, definition, state, minutes after T0 it was created, minutes it last moved after that)
SAGAS = [
    ("a-01", ORDER, "completed", 0, 1),
    ("a-02", ORDER, "compensated", 1, 1),
    ("b-03", ORDER, "running:charge", 2, 0),
    ("b-04", REFUND, "running:credit", 2, 30),  # same created_at as b-03: the id breaks ties
    ("b-05", ORDER, "failed", 3, 0),
    ("c-06", REFUND, "compensated", 4, 2),
    ("c-07", ORDER, "compensating:reserve", 5, 0),
    ("c-08", ORDER, "pending", 6, 0),
    ("d-09", REFUND, "completed", 7, 0),
    ("d-10", ORDER, "running:reserve", 8, 40),
]
LIVE = {"pending", "running", "compensating"}


def snapshot_of(saga_id: str, definition: object, state: str, created: int, moved: int) -> Snapshot:
    base, _ = started(saga_id, definition=definition, at=T0 + timedelta(minutes=created))  # type: ignore[arg-type]
    return evolve(base, state=state, updated_at=base.created_at + timedelta(minutes=moved))


def fill(h: Harness) -> list[Snapshot]:
    snapshots = [snapshot_of(*row) for row in SAGAS]
    for snapshot in snapshots:
        h.run(h.store.create(snapshot))
    return snapshots


def newest_first(snapshots: list[Snapshot]) -> list[str]:
    return [
        s.saga_id for s in sorted(snapshots, key=lambda s: (s.created_at, s.saga_id), reverse=True)
    ]


def all_pages(h: Harness, where: SagaFilter, limit: int) -> list[SagaRow]:
    assert isinstance(h.store, SagaQueries)
    rows: list[SagaRow] = []
    after: PageKey | None = None
    for _ in range(50):
        page = h.run(h.store.page(where, after=after, limit=limit))
        assert len(page.rows) <= limit
        rows.extend(page.rows)
        if page.next is None:
            return rows
        assert page.next == page.rows[-1].key
        after = PageKey.from_token(page.next.token())  # as a URL carries it
    raise AssertionError("pages never ended")


def test_every_store_answers_the_queries(harness: Harness) -> None:
    assert isinstance(harness.store, SagaQueries)


@pytest.mark.parametrize("limit", [1, 3, 10, 11])
def test_pages_walk_every_saga_newest_first_once(harness: Harness, limit: int) -> None:
    snapshots = fill(harness)
    rows = all_pages(harness, SagaFilter(), limit)
    assert [r.saga_id for r in rows] == newest_first(snapshots)
    by_id = {s.saga_id: s for s in snapshots}
    for row in rows:
        original = by_id[row.saga_id]
        assert (row.state, row.definition) == (original.state, original.definition)
        assert row.created_at == original.created_at and row.updated_at == original.updated_at
        assert row.snapshot == original.with_version(1) and row.error is None


FILTERS = [
    (SagaFilter(state="compensated"), lambda s, c, m: s[2] == "compensated"),
    (SagaFilter(state="running"), lambda s, c, m: s[2].startswith("running:")),
    (SagaFilter(state="running:charge"), lambda s, c, m: s[2] == "running:charge"),
    (SagaFilter(state="runn"), lambda s, c, m: False),
    (SagaFilter(definition="refund"), lambda s, c, m: s[1] is REFUND),
    (SagaFilter(id_prefix="b-"), lambda s, c, m: s[0].startswith("b-")),
    (SagaFilter(id_prefix="B-"), lambda s, c, m: False),  # case matters
    (SagaFilter(id_prefix="%"), lambda s, c, m: False),  # no wildcard
    (
        SagaFilter(
            created_from=T0 + timedelta(minutes=2), created_before=T0 + timedelta(minutes=5)
        ),
        lambda s, c, m: 2 <= c < 5,
    ),
    (SagaFilter(updated_from=T0 + timedelta(minutes=30)), lambda s, c, m: c + m >= 30),
    (
        SagaFilter(stuck_before=T0 + timedelta(minutes=6)),
        lambda s, c, m: s[2].partition(":")[0] in LIVE and c + m < 6,
    ),
    (
        SagaFilter(state="running", definition="order", id_prefix="d"),
        lambda s, c, m: s[0] == "d-10",
    ),
]


@pytest.mark.parametrize(("where", "expected"), FILTERS, ids=[repr(f) for f, _ in FILTERS])
def test_filters_page_and_count_the_same_sagas(
    harness: Harness, where: SagaFilter, expected
) -> None:  # type: ignore[no-untyped-def]
    snapshots = fill(harness)
    wanted = [s for s, row in zip(snapshots, SAGAS, strict=True) if expected(row, row[3], row[4])]
    assert [r.saga_id for r in all_pages(harness, where, 2)] == newest_first(wanted)
    counted = harness.run(harness.store.counts(where))  # type: ignore[attr-defined]
    assert sum(c.count for c in counted) == len(wanted)
    assert counted == sorted(counted)


def test_counts_are_per_definition_and_whole_state(harness: Harness) -> None:
    fill(harness)
    counted = harness.run(harness.store.counts())  # type: ignore[attr-defined]
    assert StateCount("order", "compensated", 1) in counted
    assert StateCount("refund", "compensated", 1) in counted
    assert StateCount("order", "running:charge", 1) in counted
    assert sum(c.count for c in counted) == len(SAGAS)
    assert harness.run(harness.store.counts(SagaFilter(definition="nope"))) == []  # type: ignore[attr-defined]


def test_naive_times_are_utc(harness: Harness) -> None:
    fill(harness)
    naive = SagaFilter(created_from=(T0 + timedelta(minutes=7)).replace(tzinfo=None))
    page = harness.run(harness.store.page(naive))  # type: ignore[attr-defined]
    assert [r.saga_id for r in page.rows] == ["d-10", "d-09"]
    after = PageKey(datetime(2024, 5, 1, 12, 7), "d-09")
    page = harness.run(harness.store.page(SagaFilter(), after=after, limit=1))  # type: ignore[attr-defined]
    assert [r.saga_id for r in page.rows] == ["c-08"]


def test_an_undecodable_row_is_listed_with_its_error(harness: Harness) -> None:
    fill(harness)
    harness.write_raw("c-06", '{"schema_version": 99, "saga_id": "c-06"}')
    rows = all_pages(harness, SagaFilter(), 4)
    assert len(rows) == len(SAGAS)
    (broken,) = [r for r in rows if r.error is not None]
    assert broken.saga_id == "c-06" and broken.snapshot is None
    assert (broken.state, broken.definition) == ("compensated", "refund")
    assert "schema_version 99" in str(broken.error)
    assert all(r.snapshot is not None for r in rows if r is not broken)


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE + 1])
def test_a_limit_out_of_range_is_refused(harness: Harness, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        harness.run(harness.store.page(SagaFilter(), limit=limit))  # type: ignore[attr-defined]


def test_a_page_key_survives_a_url_and_refuses_garbage() -> None:
    key = PageKey(T0, "id|with|bars")
    assert PageKey.from_token(key.token()) == key
    with pytest.raises(ValueError, match="not a page position"):
        PageKey.from_token("garbage!")


def test_quarantined_sagas_are_a_filter_with_their_reason(harness: Harness) -> None:
    fill(harness)
    at = T0 + timedelta(hours=1)
    harness.run(harness.store.quarantine("b-04", "undecodable: schema_version 99", now=at))
    harness.run(harness.store.quarantine("d-10", "undecodable: bad json", now=at))
    set_aside = all_pages(harness, SagaFilter(quarantined=True), 1)
    assert [r.saga_id for r in set_aside] == ["d-10", "b-04"]
    others = all_pages(harness, SagaFilter(quarantined=False), 3)
    assert len(others) == len(SAGAS) - 2 and {"b-04", "d-10"}.isdisjoint(r.saga_id for r in others)
    both = SagaFilter(quarantined=True, definition="refund")
    assert harness.run(harness.store.counts(both)) == [StateCount("refund", "running:credit", 1)]  # type: ignore[attr-defined]
    found = harness.run(harness.store.quarantine_of("b-04"))  # type: ignore[attr-defined]
    assert (found.saga_id, found.reason, found.quarantined_at) == (
        "b-04",
        "undecodable: schema_version 99",
        at,
    )
    assert harness.run(harness.store.quarantine_of("a-01")) is None  # type: ignore[attr-defined]
    assert harness.run(harness.store.quarantine_of("nope")) is None  # type: ignore[attr-defined]
    harness.run(harness.store.unquarantine("b-04"))
    assert [r.saga_id for r in all_pages(harness, SagaFilter(quarantined=True), 5)] == ["d-10"]

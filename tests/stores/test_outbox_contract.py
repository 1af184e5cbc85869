"""The outbox half of every store (memory, SQLite, PostgreSQL): rows written with the
transition, claimed under a lease, one saga's rows in order, marked published."""

from __future__ import annotations

from datetime import timedelta

import pytest

from saga_fsm._errors import ConcurrencyConflict, InvalidArgument
from saga_fsm.stores._outbox import OutboxMessage, OutboxStore
from tests.stores.test_contract import T0, Harness, advanced, harness, started

__all__ = ["harness"]


def message(saga_id: str, n: int) -> OutboxMessage:
    return OutboxMessage(saga_id, "inventory.reserve", f"{saga_id}-m{n}", f'{{"n": {n}}}')


def outbox_of(h: Harness) -> OutboxStore:
    assert isinstance(h.store, OutboxStore)
    return h.store


def test_rows_are_written_with_the_transition_and_only_with_it(harness: Harness) -> None:
    store = outbox_of(harness)
    snapshot, history = started("s-1")
    stored, created = harness.run(store.create(snapshot, history, outbox=[message("s-1", 1)]))
    assert created
    nxt, more = advanced(stored)
    # A save that loses its race writes no outbox row either.
    with pytest.raises(ConcurrencyConflict):
        harness.run(
            store.save(nxt, more, expected_version=stored.version + 7, outbox=[message("s-1", 2)])
        )
    harness.run(store.save(nxt, more, expected_version=stored.version, outbox=[message("s-1", 3)]))
    rows = harness.run(store.outbox(saga_id="s-1"))
    assert [r.message.message_id for r in rows] == ["s-1-m1", "s-1-m3"]
    assert rows[0].message == message("s-1", 1)
    assert all(r.published_at is None for r in rows)
    # A create that finds its idempotency key taken writes no row.
    again, _ = started("s-2", key="k")
    harness.run(store.create(again, ()))
    other, _ = started("s-3", key="k")
    _, created = harness.run(store.create(other, (), outbox=[message("s-3", 1)]))
    assert not created
    assert harness.run(store.outbox(saga_id="s-3")) == []


def test_one_saga_at_a_time_in_order_under_a_lease(harness: Harness) -> None:
    store = outbox_of(harness)
    for saga_id in ("a", "b"):
        snapshot, history = started(saga_id)
        harness.run(
            store.create(snapshot, history, outbox=[message(saga_id, 1), message(saga_id, 2)])
        )
    first = harness.run(store.claim_outbox("r1", now=T0, lease_seconds=10, limit=10))
    # The oldest row of each saga only: the second waits for the first to be published.
    assert [e.message.message_id for e in first] == ["a-m1", "b-m1"]
    # Claimed rows are not handed to another relay while the lease lives...
    assert harness.run(store.claim_outbox("r2", now=T0, lease_seconds=10, limit=10)) == []
    # ...nor a marking by a relay that does not hold them.
    assert harness.run(store.mark_published([first[0].seq], "r2", now=T0)) == []
    marked = harness.run(store.mark_published([first[0].seq], "r1", now=T0))
    assert marked == [first[0].seq]
    later = T0 + timedelta(seconds=11)
    # r1 died holding b-m1: its lease ran out, so r2 gets it again, with a's next row.
    second = harness.run(store.claim_outbox("r2", now=later, lease_seconds=10, limit=10))
    assert [e.message.message_id for e in second] == ["a-m2", "b-m1"]
    assert harness.run(store.mark_published([e.seq for e in second], "r2", now=later)) == sorted(
        e.seq for e in second
    )
    third = harness.run(store.claim_outbox("r2", now=later, lease_seconds=10, limit=10))
    assert [e.message.message_id for e in third] == ["b-m2"]
    assert [e.message.message_id for e in harness.run(store.outbox(unpublished=True))] == ["b-m2"]
    published = [e for e in harness.run(store.outbox()) if e.published_at is not None]
    assert len(published) == 3


def test_the_same_message_id_is_stored_once(harness: Harness) -> None:
    store = outbox_of(harness)
    snapshot, history = started("s-1")
    stored, _ = harness.run(store.create(snapshot, history, outbox=[message("s-1", 1)]))
    nxt, more = advanced(stored)
    harness.run(store.save(nxt, more, expected_version=stored.version, outbox=[message("s-1", 1)]))
    assert len(harness.run(store.outbox())) == 1


def test_claims_refuse_nonsense(harness: Harness) -> None:
    store = outbox_of(harness)
    with pytest.raises(InvalidArgument):
        harness.run(store.claim_outbox("r", now=T0, lease_seconds=0, limit=1))
    with pytest.raises(InvalidArgument):
        harness.run(store.claim_outbox("r", now=T0, lease_seconds=1, limit=0))

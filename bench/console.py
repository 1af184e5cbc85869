"""The console's list page on PostgreSQL at 10k and 1M sagas: p50/p99 per view.

Each size: the sagas table is emptied and filled by COPY with snapshot JSON written by
saga_fsm's own codec (order_fulfillment sagas run for real against the demo's flaky
fake services, then copied under new ids and creation times, one per second), then
ANALYZEd. Every view is requested through the console's ASGI app (routing, the keyset
query, decoding, the Jinja2 page) as a browser would ask for it, ``--requests`` times:

    unfiltered     /sagas                          the newest 50
    compensated    /sagas?state=compensated        a common status
    failed         /sagas?state=failed             a rare status (the operator's inbox)
    definition     /sagas?definition=order_fulfillment
    deep           /sagas?after=<key half-way>     a page in the middle of the table
    id_prefix      /sagas?id=<first 6 characters>
    overview       /                               counts by definition and state

The plan of each list query is printed to stderr (EXPLAIN): the unfiltered and deep
pages walk saga_fsm_sagas_created_idx backwards, a status walks
saga_fsm_sagas_status_created_idx (migration 5).

    python bench/console.py                       # 10k and 1M, ~2-4 min
    python bench/console.py --sizes 2000 --requests 20 --store postgresql://...
    python bench/console.py --sizes 1000000 --reuse   # measure again, no refill
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_APP_DSN, emit, note, percentile_ms

from saga_fsm import MemoryStore, Orchestrator, PostgresStore, Snapshot
from saga_fsm._codec import snapshot_to_json
from saga_fsm._snapshot import replace
from saga_fsm.console import create_app
from saga_fsm.examples import order_fulfillment
from saga_fsm.examples._fakes import services
from saga_fsm.stores import PageKey, SagaFilter
from saga_fsm.stores._queries import sql_conditions
from saga_fsm.stores.postgres import _QUERY_SQL

SCHEMA = "saga_fsm_bench_console"
COLUMNS = (
    "saga_id, definition, definition_version, state, version, snapshot, correlation_id,"
    " wake_at, due_at, lease_owner, lease_expires_at, created_at, updated_at"
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def saga_id(n: int) -> str:
    """A random-looking UUID, the same for ``n`` on every run."""
    return str(uuid.UUID(bytes=hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()))


async def templates(count: int) -> list[Snapshot]:
    """Real order_fulfillment sagas: completed, compensated, parked in failed, and a few
    started but not run, from the demo's fake services failing one call in five."""
    services.configure(fail_rate=0.2, seed=11)
    store = MemoryStore()
    orchestrator = Orchestrator(store, [order_fulfillment.definition])
    made = []
    for n in range(count):
        order = {"order_id": f"order-{n}", "amount": 10 + n % 90, "quantity": 1 + n % 3}
        if n % 25 == 0:
            made.append(await orchestrator.start(order_fulfillment.definition, order))
        else:
            made.append(await orchestrator.run(order_fulfillment.definition, order))
    return made


def fill(dsn: str, size: int, shapes: list[Snapshot]) -> float:
    """Empty the table and COPY ``size`` sagas in; returns the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE saga_fsm_sagas, saga_fsm_history")
        with conn.cursor() as cur, cur.copy(f"COPY saga_fsm_sagas ({COLUMNS}) FROM STDIN") as copy:
            for n in range(size):
                shape = shapes[n % len(shapes)]
                created = T0 + timedelta(seconds=n)
                snapshot = replace(
                    shape,
                    saga_id=saga_id(n),
                    created_at=created,
                    updated_at=created + (shape.updated_at - shape.created_at),
                )
                copy.write_row(
                    (
                        snapshot.saga_id,
                        snapshot.definition,
                        snapshot.definition_version,
                        snapshot.state,
                        snapshot.version,
                        snapshot_to_json(snapshot),
                        snapshot.correlation_id,
                        snapshot.wake_at,
                        snapshot.due_at,
                        None,
                        None,
                        snapshot.created_at,
                        snapshot.updated_at,
                    )
                )
        conn.execute("ANALYZE saga_fsm_sagas")
    return time.perf_counter() - started


def explain(dsn: str, where: SagaFilter) -> str:
    """The plan of the page query the store sends for ``where`` (its own SQL)."""
    conditions, params = sql_conditions(where, None, _QUERY_SQL, lambda value: value)
    query = (
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)"
        " SELECT saga_id, definition, state, created_at, updated_at, snapshot::text"
        f" FROM saga_fsm_sagas WHERE {conditions}"
        ' ORDER BY created_at DESC, saga_id COLLATE "C" DESC LIMIT 51'
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        return "\n".join(row[0] for row in conn.execute(query, params).fetchall())


async def measure(dsn: str, size: int, requests: int) -> None:
    prefix = saga_id(size // 3)[:6]
    store = await PostgresStore.open(dsn, max_size=2)
    try:
        app = create_app(store=store, definitions=[order_fulfillment.definition])
        middle = PageKey(T0 + timedelta(seconds=size // 2), "~").token()
        views = {
            "unfiltered": "/sagas",
            "compensated": "/sagas?state=compensated",
            "failed": "/sagas?state=failed",
            "definition": "/sagas?definition=order_fulfillment",
            "deep": f"/sagas?after={middle}",
            "id_prefix": f"/sagas?id={prefix}",
            "overview": "/",
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            for view, path in views.items():
                rows = (await client.get(path)).text.count('class="saga-link"')
                samples: list[float] = []
                failures = 0
                while len(samples) < (requests if view != "overview" else max(3, requests // 10)):
                    began = time.perf_counter()
                    response = await client.get(path)
                    if response.status_code == 200:
                        samples.append(time.perf_counter() - began)
                        continue
                    # A shared server may restart under us: wait for it, count nothing.
                    failures += 1
                    assert failures <= 30, (path, response.status_code, response.text[:300])
                    note(f"{path}: {response.status_code}, retrying")
                    await asyncio.sleep(1)
                emit(
                    bench="console_list",
                    sagas=size,
                    view=view,
                    rows=rows,
                    requests=len(samples),
                    p50_ms=percentile_ms(samples, 50),
                    p99_ms=percentile_ms(samples, 99),
                )
    finally:
        await store.close()
    for name, where in (
        ("unfiltered", SagaFilter()),
        ("id_prefix", SagaFilter(id_prefix=prefix)),
        ("failed", SagaFilter(state="failed")),
        ("compensated", SagaFilter(state="compensated")),
    ):
        note(f"-- EXPLAIN {name} at {size} sagas\n{explain(dsn, where)}")


def bench_dsn(store: str | None, *, fresh: bool) -> str:
    """The given store, else a (new, unless ``fresh`` is false) schema of its own on the
    default server."""
    if store is not None:
        return store
    with psycopg.connect(DEFAULT_APP_DSN, autocommit=True) as conn:
        if fresh:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    params = conninfo_to_dict(DEFAULT_APP_DSN)
    return make_conninfo(**params, options=f"-csearch_path={SCHEMA}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="postgresql://... (default: own schema)")
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--shapes", type=int, default=200, help="real sagas to copy from")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the schema as the last run left it"
    )
    args = parser.parse_args()
    dsn = bench_dsn(args.store, fresh=not args.reuse)

    async def prepare() -> list[Snapshot]:
        migrated = await PostgresStore.open(dsn, max_size=1)  # creates the schema's tables
        await migrated.close()
        return await templates(args.shapes)

    shapes = asyncio.run(prepare())
    for size in (int(s) for s in args.sizes.split(",")):
        if not args.reuse:
            seconds = fill(dsn, size, shapes)
            note(f"filled {size} sagas in {seconds:.1f}s")
        asyncio.run(measure(dsn, size, args.requests))


if __name__ == "__main__":
    main()

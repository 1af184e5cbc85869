"""A long kill -9 campaign against real worker processes on PostgreSQL.

    python bench/chaos.py --dsn postgresql://postgres@127.0.0.1:5432/test [--kills 1000]

Three ``saga-fsm worker`` processes drive sagas whose participants record every call
and effect in the same database (tests/durability/participants.py: effects under a
unique key, an append-only attempt log, a persistence-order probe). At random moments a
worker is killed with SIGKILL and replaced; every ``--stall-every``-th fault stalls one
instead (SIGSTOP until another worker has taken over its sagas, then SIGCONT: a zombie
with stale leases). New sagas are started as others finish, so the workers are never
idle. At the end it waits for every saga to finish and prints one JSON line; every
figure in it is counted from the tables, none is assumed. ``correct`` says whether the
world is right (nothing lost, no wrong saga, no compensation without its forward step,
no ordering fault, no overlapping call outside a stall, re-runs within the sagas the
faults caught in flight). Progress goes to stderr. Runs in a schema of its own, dropped
at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from saga_fsm import SagaError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import _pg  # noqa: E402
from tests.durability.harness import (  # noqa: E402
    TERMINAL,
    Workers,
    measure,
    prepare,
    run,
    start_sagas,
    states,
    wait_until_finished,
)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def campaign(conninfo: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)

    def batch(count: int) -> list[dict[str, Any]]:
        failures = [None] * 6 + ["reserve", "charge", "ship"]
        return [{"delay": args.step_delay, "fail_at": rng.choice(failures)} for _ in range(count)]

    prepare(conninfo)
    total = len(run(start_sagas(conninfo, batch(args.backlog))))
    pool = Workers(conninfo, lease_seconds=args.lease_seconds, concurrency=args.concurrency)
    for _ in range(args.workers):
        pool.spawn(logs)
    kills = stalls = in_flight_at_faults = kills_in_flight = 0
    stalled: set[str] = set()
    began = time.monotonic()
    try:
        while kills < args.kills:
            time.sleep(rng.uniform(args.min_gap, args.max_gap))
            if total - sum(n for s, n in states(conninfo).items() if s in TERMINAL) < args.backlog:
                try:
                    total += len(run(start_sagas(conninfo, batch(args.backlog))))
                except (SagaError, psycopg.Error) as err:  # a server restart: next time
                    note(f"could not start more sagas: {err}")
            stall = args.stall_every and (kills + stalls + 1) % args.stall_every == 0
            candidates = pool.alive()
            if stall:  # a stall is only a stall while the worker holds sagas
                candidates = [w for w in candidates if pool.held_by(conninfo, w)] or candidates
            victim = rng.choice(candidates)
            held = pool.held_by(conninfo, victim)
            if stall and held:
                pool.pause(victim)
                deadline = time.monotonic() + 10 * args.lease_seconds
                while pool.held_by(conninfo, victim) and time.monotonic() < deadline:
                    time.sleep(0.05)
                pool.resume(victim)
                stalled.add(victim)
                stalls += 1
            else:
                pool.kill9(victim)
                pool.spawn(logs)
                kills += 1
                kills_in_flight += bool(held)
            in_flight_at_faults += len(held)
            if (kills + stalls) % 50 == 0:
                note(f"{kills} kills, {stalls} stalls, {total} sagas, {states(conninfo)}")
        total = sum(states(conninfo).values())  # a start cut short by an outage may have begun
        counts = wait_until_finished(conninfo, total, timeout=args.finish_timeout)
    finally:
        codes = pool.stop_all()
    wall = time.monotonic() - began
    world = measure(conninfo, stalled)
    log_text = "".join(p.read_text(errors="replace") for p in logs.glob("w*.log"))
    correct = (
        world["lost"] == 0
        and world["wrong_sagas"] == 0
        and world["compensations_without_forward"] == 0
        and world["order_violations"] == 0
        and world["overlapping_attempts"] == 0
        and world["reruns"] <= in_flight_at_faults
        and world["calls_without_lease"] <= in_flight_at_faults
        and sum(counts.values()) == total
    )
    return {
        "kills": kills,
        "kills_of_a_worker_holding_sagas": kills_in_flight,
        "stalls": stalls,
        "sagas": total,
        "states": counts,
        "lost": world["lost"],
        "wrong_sagas": world["wrong_sagas"],
        "duplicate_effects_absorbed_by_key": world["duplicates_absorbed_by_key"],
        "duplicate_effects_reaching_non_dedup": world["duplicates_reaching_non_dedup"],
        "duplicate_compensations": world["duplicate_compensations"],
        "compensations_without_forward": world["compensations_without_forward"],
        "order_violations": world["order_violations"],
        "overlapping_attempts": world["overlapping_attempts"],
        "overlaps_with_a_stalled_worker": world["overlaps_with_a_stalled_worker"],
        "calls_without_lease": world["calls_without_lease"],
        "reruns": world["reruns"],
        "sagas_in_flight_at_faults": in_flight_at_faults,
        "late_writes_refused": log_text.count("lease lost to"),
        "worker_exit_codes_nonzero": sum(1 for code in codes.values() if code != 0),
        "wall_s": round(wall, 1),
        "correct": correct,
        "examples": world["examples"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=_pg.configured_dsn(), help="a PostgreSQL server")
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--stall-every", type=int, default=20, help="0: never stall")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease-seconds", type=float, default=1.5)
    parser.add_argument("--backlog", type=int, default=40, help="unfinished sagas kept")
    parser.add_argument("--step-delay", type=float, default=0.1, help="longest step, seconds")
    parser.add_argument("--min-gap", type=float, default=0.3, help="seconds between faults")
    parser.add_argument("--max-gap", type=float, default=1.2)
    parser.add_argument("--finish-timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("kills", "workers", "concurrency", "backlog"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.stall_every < 0 or not 0 < args.min_gap <= args.max_gap:
        parser.error("--stall-every must be >= 0 and 0 < --min-gap <= --max-gap")
    with _pg.fresh_schema(args.dsn) as conninfo, tempfile.TemporaryDirectory() as logs:
        result = campaign(conninfo, args, Path(logs))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

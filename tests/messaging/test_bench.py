"""bench/messaging.py runs, at a tiny size, on every transport; speed is never asserted
(bench/README.md holds the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.messaging._brokers import Broker

ROOT = Path(__file__).resolve().parents[2]


def test_the_round_trip_bench_runs_against_its_floor(broker: Broker) -> None:
    script = str(ROOT / "bench" / "messaging.py")
    done = subprocess.run(
        [
            sys.executable,
            script,
            "--broker",
            broker.url,
            "--round-trips",
            "20",
            "--concurrency",
            "4",
            "--sagas",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    with_floor = broker.kind in ("postgresql", "amqp", "nats")
    engines = ["floor", "transport", "saga"][not with_floor :]
    assert [line["engine"] for line in lines] == engines
    *trips, sagas = lines
    assert all(line["round_trips"] == 20 and line["round_trips_per_s"] > 0 for line in trips)
    assert ("ratio_to_floor" in trips[-1]) == with_floor
    assert sagas["sagas"] == 4 and sagas["sagas_per_s"] > 0
    assert ("ratio_to_floor" in sagas) == with_floor

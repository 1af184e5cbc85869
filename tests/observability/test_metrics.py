"""Prometheus metrics: counted from what the engine reports, on the caller's registry;
and a real scrape of a running ``saga-fsm worker --metrics-port``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from saga_fsm import MemoryStore, Orchestrator, Worker, decide
from saga_fsm._core import Event
from saga_fsm.observability import Observers, ParkedAlert
from saga_fsm.observability.metrics import METRIC_NAMES, SagaMetrics
from tests.observability.sagas import ORDERS, order

ROOT = Path(__file__).resolve().parents[2]


def expected_order_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the eight ORDERS give, name and labels -> value."""
    o = (("definition", "order"),)
    return {
        ("saga_fsm_sagas_finished_total", (*o, ("outcome", "completed"))): 5,
        ("saga_fsm_sagas_finished_total", (*o, ("outcome", "compensated"))): 2,
        ("saga_fsm_sagas_finished_total", (*o, ("outcome", "failed"))): 1,
        ("saga_fsm_saga_duration_seconds_count", (*o, ("outcome", "completed"))): 5,
        ("saga_fsm_step_attempts_total", (*o, ("step", "charge"), ("outcome", "succeeded"))): 5,
        ("saga_fsm_step_attempts_total", (*o, ("step", "charge"), ("outcome", "failed"))): 5,
        ("saga_fsm_step_attempts_total", (*o, ("step", "ship"), ("outcome", "succeeded"))): 5,
        ("saga_fsm_step_retries_total", (*o, ("step", "charge"), ("phase", "forward"))): 2,
        (
            "saga_fsm_compensation_attempts_total",
            (*o, ("step", "reserve"), ("outcome", "succeeded")),
        ): 2,
        (
            "saga_fsm_compensation_attempts_total",
            (*o, ("step", "reserve"), ("outcome", "failed")),
        ): 1,
        ("saga_fsm_compensation_failures_total", (*o, ("step", "reserve"))): 1,
        (
            "saga_fsm_step_duration_seconds_count",
            (*o, ("step", "reserve"), ("phase", "forward")),
        ): 8,
        (
            "saga_fsm_step_duration_seconds_count",
            (*o, ("step", "reserve"), ("phase", "compensate")),
        ): 3,
    }


def test_metrics_count_what_happened_on_the_callers_registry() -> None:
    registry = CollectorRegistry()
    metrics = SagaMetrics(registry)
    posted: list[str] = []
    store = MemoryStore()

    async def go() -> None:
        orchestrator = Orchestrator(
            store, [order], observer=Observers(metrics, ParkedAlert(posted.append))
        )
        await orchestrator.start_many(order, ORDERS)
        cancelled = await orchestrator.start(order, {"pay": "ok"})
        await orchestrator.cancel(cancelled.saga_id)
        stop = asyncio.Event()
        worker = Worker(orchestrator, poll_interval=0.01)
        serving = asyncio.create_task(worker.run(stop))
        while any(not s.is_terminal for s in await store.list()):
            await asyncio.sleep(0.01)
        await metrics.refresh_from_store(store, orchestrator.clock.now())
        stop.set()
        await serving

    asyncio.run(go())
    for (name, labels), value in expected_order_samples().items():
        assert registry.get_sample_value(name, dict(labels)) == value, (name, labels)
    assert registry.get_sample_value("saga_fsm_sagas_started_total", {"definition": "order"}) == 9
    cancelled = {"definition": "order", "outcome": "cancelled"}
    assert registry.get_sample_value("saga_fsm_sagas_finished_total", cancelled) == 1
    assert registry.get_sample_value("saga_fsm_sagas_stuck") == 0
    # Nothing in flight any more: the gauges of the states seen in flight are back to 0.
    in_flight = [
        s for f in registry.collect() if f.name == "saga_fsm_sagas_in_flight" for s in f.samples
    ]
    assert all(s.value == 0 for s in in_flight)
    # The alert posted once, for the one saga that parked.
    assert len(posted) == 1 and "parked in failed at compensating:reserve" in posted[0]
    assert "warehouse offline" in posted[0]


def test_the_store_gauges_count_sagas_in_flight_and_stuck() -> None:
    registry = CollectorRegistry()
    metrics = SagaMetrics(registry, stuck_after=60)
    store = MemoryStore()

    async def go() -> None:
        orchestrator = Orchestrator(store, [order])
        await orchestrator.start_many(order, ORDERS[:3])
        later = orchestrator.clock.now().replace(year=2999)
        await metrics.refresh_from_store(store, later)

    asyncio.run(go())
    pending = {"definition": "order", "state": "pending"}
    assert registry.get_sample_value("saga_fsm_sagas_in_flight", pending) == 3
    assert registry.get_sample_value("saga_fsm_sagas_stuck") == 3


def test_metric_names_are_the_ones_exposed() -> None:
    registry = CollectorRegistry()
    SagaMetrics(registry)
    exposed = {sample.name for family in registry.collect() for sample in family.samples} | {
        family.name for family in registry.collect()
    }
    for name in METRIC_NAMES:
        assert (
            name in exposed or f"{name}_count" in exposed or name.removesuffix("_total") in exposed
        ), name


# -- a real scrape -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _saga_fsm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_running_worker_serves_metrics_with_the_known_outcomes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(o) + "\n" for o in ORDERS))
    started = _saga_fsm(
        tmp_path,
        "start",
        "tests.observability.sagas:order",
        "--data-file",
        str(data),
        "--store",
        url,
    )
    assert started.returncode == 0, started.stderr
    port = _free_port()
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", "worker", "tests.observability.sagas:order",
         "--store", url, "--poll-interval", "0.05", "--metrics-port", str(port), "--tracing"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        expected = {
            (n, tuple(sorted(labels))): v for (n, labels), v in expected_order_samples().items()
        }
        deadline = time.monotonic() + 60
        while True:
            try:
                scraped = _scrape(port)
            except OSError:
                scraped = {}
            if all(scraped.get(key) == value for key, value in expected.items()):
                break
            assert time.monotonic() < deadline, (
                {k: (scraped.get(k), v) for k, v in expected.items()},
                log.read_text(),
            )
            time.sleep(0.2)
        # The store's gauges follow (refreshed every 5 s): nothing in flight, none stuck.
        assert scraped[("saga_fsm_sagas_stuck", ())] == 0
        assert scraped[("saga_fsm_snapshot_decode_failures_total", ())] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()


def test_metrics_port_without_the_extra_or_taken_is_one_line_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _saga_fsm(tmp_path, "worker", "tests.observability.sagas:order", "--store",
                        f"sqlite:///{tmp_path}/m.db", "--metrics-port", str(port))  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"--metrics-port {port}" in out.stderr, out.stderr


def test_taking_over_an_attempt_in_flight_counts_a_lease_takeover() -> None:
    registry = CollectorRegistry()
    store = MemoryStore()

    async def go() -> None:
        dead = Orchestrator(store, [order], worker_id="dead")
        snapshot = await dead.start(order, {"pay": "ok"})
        # The dead worker persisted "running:reserve" (attempt 1), then died.
        decision = decide(order, await store.load(snapshot.saga_id), Event.start(dead.clock.now()))
        await store.save(decision.snapshot, decision.history, expected_version=snapshot.version)
        worker = Orchestrator(store, [order], observer=SagaMetrics(registry))
        await worker.resume(snapshot.saga_id)
        # A pending saga claimed for the first time is no takeover.
        fresh = await dead.start(order, {"pay": "ok"})
        await worker.resume(fresh.saga_id)

    asyncio.run(go())
    assert registry.get_sample_value("saga_fsm_lease_takeovers_total", {"definition": "order"}) == 1


def test_a_participant_process_serves_its_metrics(tmp_path: Path) -> None:
    """``saga-fsm participant --metrics-port``: a command delivered again (same
    idempotency key) is answered from the inbox and counted as a duplicate."""
    from tests.cli.test_participant import MODULE, ask, command, serving

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sqlite:///{tmp_path}/broker.db"
    cli = ["saga-fsm", "participant", f"{MODULE}:inventory", "--broker", url]
    with serving([*cli, "--metrics-port", str(port), "--tracing"], tmp_path):

        def reserve() -> Any:  # a new message each time, under the same idempotency key
            return command("inventory.reserve", "o-1", {"order_id": "o-1"}, "replies")

        first = asyncio.run(ask(url, [reserve()], "replies"))
        again = asyncio.run(ask(url, [reserve()], "replies"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    assert first == again
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    key = (
        "saga_fsm_inbox_duplicates_total",
        (("channel", "inventory.reserve"), ("participant", "inventory")),
    )
    assert samples[key] == 1.0

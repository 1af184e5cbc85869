"""The benchmark scripts run, at a tiny size, on every store, and report a correct world
afterwards. Speed is never asserted here: bench/README.md holds the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.durability.harness import store_url

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr[-3000:]
    return lines


def assert_correct(
    lines: list[dict[str, Any]], ran_sagas: Callable[[dict[str, Any]], bool] = lambda _: True
) -> None:
    """Every line that reports a run of sagas (all of them, unless ``ran_sagas`` says
    otherwise) says the world it left is correct: a missing ``correct`` fails too."""
    runs = [line for line in lines if ran_sagas(line)]
    assert runs, lines
    for line in runs:
        assert line.get("correct") is True, line


def not_claim(line: dict[str, Any]) -> bool:
    return bool(line["bench"] != "claim")  # claim lines time claims of synthetic rows


TINY = ("--sagas", "20", "--concurrency", "4", "--seed", "3")


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_throughput_runs_on_the_embedded_stores(store: str, tmp_path: Path) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path}/bench.db"
    lines = run("throughput.py", "--store", url, *TINY, "--app", "in-process")
    assert [(line["engine"], line["mode"]) for line in lines] == [
        ("saga_fsm", "sequential"),
        ("saga_fsm", "concurrent"),
    ]
    assert_correct(lines)


def test_throughput_runs_on_postgres_against_the_floor(postgres_dsn: str) -> None:
    lines = run("throughput.py", "--store", store_url(postgres_dsn), *TINY)
    assert [(line["engine"], line["mode"]) for line in lines] == [
        ("floor", "sequential"),
        ("saga_fsm", "sequential"),
        ("floor", "concurrent"),
        ("saga_fsm", "concurrent"),
    ]
    for line in lines:
        assert line["commits_per_saga"] is not None
        assert ("ratio_to_floor" in line) == (line["engine"] == "saga_fsm")
    assert_correct(lines)


def test_throughput_runs_transactional_steps_on_postgres(postgres_dsn: str) -> None:
    lines = run(
        "throughput.py",
        "--store",
        store_url(postgres_dsn),
        *TINY,
        "--transactional",
        "--modes",
        "concurrent",
    )
    assert [(line["engine"], line.get("transactional")) for line in lines] == [
        ("floor", None),
        ("saga_fsm", True),
    ]
    assert lines[1]["db_wal_kb_per_saga"] is not None
    assert_correct(lines)


def test_throughput_keeps_application_tables_in_postgres_beside_sqlite(
    postgres_dsn: str, tmp_path: Path
) -> None:
    lines = run(
        "throughput.py",
        "--store",
        f"sqlite:///{tmp_path}/bench.db",
        "--app-dsn",
        store_url(postgres_dsn),
        *TINY,
    )
    assert {line["app"] for line in lines} == {"postgres"}
    assert all("ratio_to_floor" not in line for line in lines)
    assert_correct(lines)


SCALE = ("--sizes", "200,400", "--live", "60", "--claims", "3", "--in-flight", "20")


def test_scale_runs_on_sqlite_and_memory(tmp_path: Path) -> None:
    lines = run("scale.py", "--store", f"sqlite:///{tmp_path}/scale.db", *SCALE)
    assert [line["bench"] for line in lines] == ["claim", "claim", "in_flight_memory"]
    assert all(line["claimed"] > 0 for line in lines if line["bench"] == "claim")
    assert_correct(lines, not_claim)
    assert_correct(run("scale.py", "--store", "memory://", *SCALE), not_claim)


def test_scale_runs_on_postgres(postgres_dsn: str) -> None:
    lines = run("scale.py", "--store", store_url(postgres_dsn), *SCALE)
    assert [line["bench"] for line in lines] == ["claim", "claim", "in_flight_memory"]
    assert all(line["claimed"] > 0 for line in lines if line["bench"] == "claim")
    assert_correct(lines, not_claim)


def test_scale_ls_runs_on_sqlite(tmp_path: Path) -> None:
    lines = run(
        "scale.py", "--store", f"sqlite:///{tmp_path}/scale.db", "--only", "ls",
        "--ls-rows", "200", "--ls-runs", "1",
    )  # fmt: skip
    assert [line["bench"] for line in lines] == ["ls_limit_1", "ls_stuck_limit_1"]
    assert all(line["wall_s_p50"] > 0 and line["peak_rss_mb"] > 0 for line in lines)


def test_console_bench_runs_on_postgres(postgres_dsn: str) -> None:
    lines = run(
        "console.py", "--store", postgres_dsn, "--sizes", "300", "--requests", "3", "--shapes", "30"
    )
    assert [line["view"] for line in lines] == [
        "unfiltered",
        "compensated",
        "failed",
        "definition",
        "deep",
        "id_prefix",
        "overview",
    ]
    assert all(line["sagas"] == 300 and line["p50_ms"] > 0 for line in lines)
    by_view = {line["view"]: line["rows"] for line in lines}
    assert by_view["unfiltered"] == by_view["deep"] == 50 and by_view["id_prefix"] == 1


def test_demo_memory_reports_the_peak_of_each_size() -> None:
    lines = run("demo_memory.py", "--sagas", "10,30", "--concurrency", "4")
    assert [line["sagas"] for line in lines] == [10, 30]
    assert all(line["finished"] is True and line["peak_rss_mb"] > 0 for line in lines)


@pytest.mark.slow
def test_chaos_survives_fifty_kills_and_some_stalls(postgres_server_dsn: str) -> None:
    (line,) = run("chaos.py", "--dsn", postgres_server_dsn, "--kills", "50", "--stall-every", "8")
    assert line["kills"] == 50 and line["stalls"] >= 1, line
    assert line["kills_of_a_worker_holding_sagas"] > 0, line
    assert line["duplicate_effects_absorbed_by_key"] == line["duplicate_effects_reaching_non_dedup"]
    assert_correct([line])


def test_throughput_measures_tracing_and_metrics_off_and_on() -> None:
    lines = run("throughput.py", "--store", "memory://", *TINY, "--app", "in-process",
                "--modes", "sequential", "--observe", "both")  # fmt: skip
    assert [(line["engine"], line.get("observe")) for line in lines] == [
        ("saga_fsm", "off"),
        ("saga_fsm", "on"),
        ("observe_overhead", None),
    ]
    assert_correct(lines, lambda line: line["engine"] != "observe_overhead")
    assert {"client_cpu_ms_per_saga_off", "client_cpu_ms_per_saga_on", "overhead_pct"} <= set(
        lines[-1]
    )


@pytest.mark.parametrize("transport", ["memory", "sqlite"])
def test_the_choreography_bench_runs_tracker_and_floor_on_the_same_events(
    transport: str, tmp_path: Path
) -> None:
    url = "memory://" if transport == "memory" else f"sqlite:///{tmp_path}/bench.db"
    lines = run("choreography.py", "--broker", url, "--store", url, "--orders", "12")
    assert [line["engine"] for line in lines] == ["floor", "tracker"]
    assert lines[0]["events"] == lines[1]["events"] > 12

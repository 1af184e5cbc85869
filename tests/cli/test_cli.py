"""The saga-fsm command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def saga_fsm(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_demo_then_ls_show_history_on_the_default_sqlite_store(tmp_path: Path) -> None:
    demo = saga_fsm("demo", "--sagas", "20", "--seed", "3", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "final state" in demo.stdout and "20 sagas in" in demo.stdout
    assert (tmp_path / "saga_fsm.db").exists()

    listed = json.loads(saga_fsm("ls", "--json", cwd=tmp_path).stdout)
    assert len(listed) == 20
    assert {row["state"] for row in listed} <= {"completed", "compensated"}
    assert {"id", "definition", "state"} <= set(listed[0])

    compensated = json.loads(
        saga_fsm("ls", "--json", "--state", "compensated", cwd=tmp_path).stdout
    )
    assert all(row["state"] == "compensated" for row in compensated)

    saga_id = listed[0]["id"]
    shown = json.loads(saga_fsm("show", saga_id, "--json", cwd=tmp_path).stdout)
    assert shown["id"] == saga_id and shown["schema_version"] == 2
    # The store's columns beside the snapshot: a finished saga has no lease left.
    assert shown["version"] >= 2 and (shown["lease_owner"], shown["lease_expires_at"]) == (
        None,
        None,
    )
    history = json.loads(saga_fsm("history", saga_id, "--json", cwd=tmp_path).stdout)
    assert history["id"] == saga_id
    history = history["transitions"]
    assert history[0]["from_state"] == "pending"
    assert history[-1]["to_state"] == listed[0]["state"]
    assert saga_id in saga_fsm("show", saga_id, cwd=tmp_path).stdout


def test_store_comes_from_the_environment(tmp_path: Path) -> None:
    env = {"SAGA_FSM_STORE": f"sqlite:///{tmp_path}/elsewhere.db"}
    assert saga_fsm("demo", "--sagas", "3", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "saga_fsm.db").exists()


def test_run_a_module_reference_and_a_file(tmp_path: Path) -> None:
    ran = saga_fsm(
        "run",
        "saga_fsm.examples.travel_booking",
        "--data",
        '{"trip": "t1"}',
        "--json",
        "--store",
        "memory://",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    final = json.loads(ran.stdout)
    assert final["state"] == "completed" and final["data"]["trip"] == "t1"

    toml = Path(__file__).parents[2] / "saga_fsm" / "examples" / "order_fulfillment.toml"
    ran = saga_fsm("run", str(toml), "--data", "{}", "--store", "memory://", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "completed" in ran.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "no_such_module_xyz", "--data", "{}"], "cannot import"),
        (
            ["run", "saga_fsm.examples.order_fulfillment", "--data", "{bad"],
            "--data is not valid JSON",
        ),
        (["run", "saga_fsm.examples.order_fulfillment", "--data", "[1]"], "JSON object"),
        (["run", "broken.toml", "--data", "{}"], "malformed TOML"),
        (["ls", "--store", "mysql://nope"], "mysql://nope"),
        (["show", "no-such-id", "--store", "memory://"], "no-such-id"),
        (["history", "no-such-id"], "no such store file 'saga_fsm.db'"),
        (["ls", "--store", "postgresql://postgres@127.0.0.1:1/none"], "127.0.0.1"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "broken.toml").write_text("name = [")
    result = saga_fsm(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saga-fsm: error:") and words in lines[0]
    assert "Traceback" not in result.stderr

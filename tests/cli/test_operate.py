"""start, worker, cancel, retry, resume and ls --stuck, as an operator uses them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_cli import saga_fsm

ROOT = Path(__file__).resolve().parents[2]
COMPLETES = "tests.cli.sagas:completes"
PARKS = "tests.cli.sagas:parks"


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"SAGA_FSM_STORE": f"sqlite:///{tmp_path}/ops.db", "PYTHONPATH": str(ROOT), **extra}


def cli(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return saga_fsm(*args, cwd=tmp_path, env=env(tmp_path, **extra))


def state_of(tmp_path: Path, saga_id: str) -> str:
    shown = cli(tmp_path, "show", saga_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["state"])


def test_start_persists_without_running_and_dedupes_on_the_key(tmp_path: Path) -> None:
    first = cli(tmp_path, "start", COMPLETES, "--data", '{"n": 1}', "--idempotency-key", "k1")
    again = cli(tmp_path, "start", COMPLETES, "--data", '{"n": 1}', "--idempotency-key", "k1")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout and len(first.stdout.split()) == 1
    assert state_of(tmp_path, first.stdout.strip()) == "pending"

    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"n": 1}\n\n{"n": 2}\n{"n": 3}\n')
    batch = cli(tmp_path, "start", COMPLETES, "--data-file", str(lines), "--idempotency-key", "b")
    assert batch.returncode == 0, batch.stderr
    assert len(set(batch.stdout.split())) == 3
    rerun = cli(tmp_path, "start", COMPLETES, "--data-file", str(lines), "--idempotency-key", "b")
    assert rerun.stdout == batch.stdout
    listed = json.loads(cli(tmp_path, "ls", "--json").stdout)
    assert len(listed) == 4 and {r["state"] for r in listed} == {"pending"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["start", COMPLETES], "exactly one of --data and --data-file"),
        (["start", COMPLETES, "--data", "{}", "--data-file", "x.jsonl"], "exactly one"),
        (["start", COMPLETES, "--data-file", "missing.jsonl"], "cannot read"),
        (["ls", "--stuck", "--older-than", "soon"], "not a duration"),
    ],
)
def test_bad_operator_input_exits_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = cli(tmp_path, *args)
    assert result.returncode == 2 and words in result.stderr, result.stderr


def test_worker_runs_started_sagas_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    ids = [
        cli(tmp_path, "start", COMPLETES, "--data", f'{{"n": {n}}}').stdout.strip()
        for n in range(5)
    ]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saga_fsm.cli",
            "worker",
            COMPLETES,
            "--poll-interval",
            "0.05",
            "--id",
            "w-test",
        ],
        cwd=tmp_path,
        env={**__import__("os").environ, **env(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(state_of(tmp_path, i) == "completed" for i in ids):
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, worker.stderr.read() if worker.stderr else ""
    assert [state_of(tmp_path, i) for i in ids] == ["completed"] * 5


def test_cancel_retry_resume_take_effect_only_through_the_machine(tmp_path: Path) -> None:
    # A finished saga refuses cancel and retry with a reason, exit 1, and is unchanged.
    done = cli(tmp_path, "run", COMPLETES, "--data", "{}", "--json")
    done_id = json.loads(done.stdout)["id"]
    for command in ("cancel", "retry"):
        refused = cli(tmp_path, command, done_id)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith("saga-fsm: refused:") and "finished" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert state_of(tmp_path, done_id) == "completed"

    # Cancel a pending saga: nothing ran, nothing to undo.
    pending = cli(tmp_path, "start", COMPLETES, "--data", "{}").stdout.strip()
    assert cli(tmp_path, "cancel", pending).returncode == 0
    assert state_of(tmp_path, pending) == "compensated"

    # Resume a pending saga: it runs here to the end.
    pending = cli(tmp_path, "start", COMPLETES, "--data", "{}").stdout.strip()
    resumed = cli(tmp_path, "resume", pending, "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["state"] == "completed"

    # A compensation that gives up parks the saga; retry resumes it once the cause is fixed.
    parked = cli(tmp_path, "run", PARKS, "--data", "{}", "--json")
    assert parked.returncode == 1
    parked_id = json.loads(parked.stdout)["id"]
    assert state_of(tmp_path, parked_id) == "failed"
    history = json.loads(cli(tmp_path, "history", parked_id, "--json").stdout)["transitions"]
    assert (
        history[-1]["to_state"] == "failed"
        and "warehouse offline" in history[-1]["detail"]["error"]
    )
    still_broken = cli(tmp_path, "retry", parked_id)
    # Failing again is not success: exit 1, with the reason.
    assert still_broken.returncode == 1 and state_of(tmp_path, parked_id) == "failed"
    assert "failed again" in still_broken.stderr and "warehouse offline" in still_broken.stderr
    fixed = cli(tmp_path, "retry", parked_id, WAREHOUSE_BACK="1")
    assert fixed.returncode == 0, fixed.stderr
    assert state_of(tmp_path, parked_id) == "compensated"


def test_ls_stuck_lists_unfinished_sagas_without_progress(tmp_path: Path) -> None:
    waiting = cli(tmp_path, "start", COMPLETES, "--data", "{}").stdout.strip()
    cli(tmp_path, "run", COMPLETES, "--data", "{}")
    cli(tmp_path, "run", PARKS, "--data", "{}")  # parked in failed: waits for an operator
    stuck = json.loads(cli(tmp_path, "ls", "--stuck", "--older-than", "0s", "--json").stdout)
    assert [row["id"] for row in stuck] == [waiting]
    recent = json.loads(cli(tmp_path, "ls", "--stuck", "--json").stdout)  # default 5m
    assert recent == []

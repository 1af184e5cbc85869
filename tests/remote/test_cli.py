"""``saga-fsm demo --remote``: three participant processes, on the store's database and
on the brokers, none left behind; and the CLI's refusals around it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from saga_fsm.cli import main
from saga_fsm.examples import order_remote
from tests.messaging._brokers import Broker, amqp_url, nats_url, require

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
CHANNELS = (
    "inventory.reserve",
    "inventory.release",
    "payment.charge",
    "payment.refund",
    "shipping.ship",
)


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", "demo", "--remote", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def participant_pids(output: str) -> list[int]:
    [line] = [line for line in output.splitlines() if line.startswith("participants: ")]
    return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", line)]


def alive(pid: int) -> bool:
    """Whether ``pid`` is still a participant process (a pid may be reused)."""
    try:
        return b"participant" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def assert_ran_the_orders(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    # 14 orders: every 4th (3 of them) costs more than payment accepts.
    assert "compensated │ 3" in done.stdout and "completed   │ 11" in done.stdout
    assert "replies: 42 applied, 0 stale, 0 duplicate" in done.stdout
    assert "effects: inventory release 3, reserve 14; payment charge 11; shipping ship 11" in (
        done.stdout
    )
    assert "effects check: each once, 3 reservations released" in done.stdout
    assert "inventory exit 0, payment exit 0, shipping exit 0" in done.stdout
    pids = participant_pids(done.stdout)
    assert len(pids) == 3 and os.getpid() not in pids
    assert not [pid for pid in pids if alive(pid)]


def test_the_remote_demo_runs_three_participant_processes_with_no_server(
    tmp_path: Path,
) -> None:
    done = demo("--sagas", "14", cwd=tmp_path)
    assert "store: sqlite:///saga_fsm.db" in done.stdout
    assert "broker: the store (embedded)" in done.stdout
    assert_ran_the_orders(done)
    assert "saga-fsm ls --definition order_fulfillment_remote" in done.stdout


@pytest.mark.broker
@pytest.mark.parametrize("kind", ["amqp", "nats"])
def test_the_remote_demo_on_a_broker(kind: str, tmp_path: Path) -> None:
    url = amqp_url() if kind == "amqp" else nats_url()
    require(url, kind, 5672 if kind == "amqp" else 4222)
    broker = Broker(kind, url)
    for channel in (*CHANNELS, f"saga_fsm.replies.{order_remote.definition.name}"):
        broker.channel(channel)
    try:
        done = demo("--sagas", "14", "--broker", url, "--prefix", broker.prefix, cwd=tmp_path)
        assert_ran_the_orders(done)
        assert "guest:guest" not in done.stdout
    finally:
        asyncio.run(broker.clean())


def test_sigterm_stops_the_demo_and_its_participants(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", "demo", "--remote", "--sagas", "100000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    ) as running:
        assert running.stdout is not None
        lines = [running.stdout.readline() for _ in range(3)]
        pids = participant_pids("".join(lines))
        assert [pid for pid in pids if alive(pid)] == pids
        running.send_signal(signal.SIGTERM)
        try:
            _, err = running.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            running.kill()  # never a hang of the suite: a failure
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
    assert running.returncode != 0
    assert "Traceback" not in err, err
    assert not [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--broker", "kafka://u:hunter2@host/"], "invalid transport URL"),
        (["--store", "memory://"], "cannot reach a memory:// store"),
        (["--prefix", "a b"], "invalid channel 'a b'"),
    ],
)
def test_bad_input_is_one_line_before_any_process(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(main, ["demo", "--remote", *args])
    assert done.exit_code == 2, done.output
    assert says in done.stderr and "hunter2" not in done.output
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "participants:" not in done.output


def test_prefix_goes_with_remote() -> None:
    done = CliRunner().invoke(main, ["demo", "--prefix", "p"])
    assert done.exit_code == 2
    assert "--prefix goes with --remote" in done.output


def test_remote_and_choreography_do_not_mix() -> None:
    done = CliRunner().invoke(main, ["demo", "--remote", "--choreography"])
    assert done.exit_code == 2
    assert "choose one of --choreography and --remote" in done.output


def test_a_bad_reply_channel_is_refused_before_anything_runs() -> None:
    done = CliRunner().invoke(
        main,
        ["worker", "saga_fsm.examples.order_remote:definition", "--reply-channel", "a b"],
    )
    assert done.exit_code == 2
    assert "--reply-channel" in done.output


def test_run_points_a_saga_with_remote_steps_at_start_and_worker() -> None:
    done = CliRunner().invoke(
        main, ["run", "saga_fsm.examples.order_remote:definition", "--store", "memory://"]
    )
    assert done.exit_code == 2
    assert "has remote steps" in done.output and "saga-fsm worker" in done.output


def test_check_explores_the_remote_example_with_its_participant() -> None:
    done = CliRunner().invoke(
        main,
        [
            "check",
            "saga_fsm.examples.order_remote:definition",
            "--participant",
            "saga_fsm.examples.order_services:participant",
            "--max-examples",
            "10",
            "--seed",
            "1",
        ],
    )
    assert done.exit_code == 0, done.output
    assert "every property holds" in done.output


def test_check_refuses_a_participant_that_is_not_one() -> None:
    done = CliRunner().invoke(
        main,
        [
            "check",
            "saga_fsm.examples.order_remote:definition",
            "--participant",
            "saga_fsm.examples.order_services:tables",
        ],
    )
    assert done.exit_code == 2
    assert "not a Participant" in done.output

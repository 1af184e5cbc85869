"""``saga-fsm demo --remote`` in one process, and the CLI's refusals around it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from saga_fsm.cli import main


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_the_remote_demo_ends_every_order(store: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}" if store == "sqlite" else store
    done = CliRunner().invoke(main, ["demo", "--remote", "--sagas", "14", "--store", url])
    assert done.exit_code == 0, done.output
    assert "broker: the store (embedded)" in done.output
    # 14 orders: 2 ask for too much, 2 more have a declined card.
    assert "compensated │ 4" in done.output and "completed   │ 10" in done.output
    assert "effects applied twice: 0" in done.output


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

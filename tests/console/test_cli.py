"""``saga-fsm ui``'s refusals: they happen before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import saga_fsm


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7", "::"])
def test_binding_off_loopback_needs_a_token(tmp_path: Path, host: str) -> None:
    done = saga_fsm("ui", "--store", "memory://", "--host", host, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"saga-fsm: error: --host {host} is reachable from other machines:"
        " give --token or set SAGA_FSM_UI_TOKEN"
    )


def test_an_unknown_definition_is_one_line(tmp_path: Path) -> None:
    done = saga_fsm("ui", "no.such.module:thing", "--store", "memory://", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("saga-fsm: error: ")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--store", "--broker"])
def test_a_bad_store_or_broker_url_is_one_line_naming_no_password(
    tmp_path: Path, option: str
) -> None:
    urls = {"--store": "memory://", "--broker": "memory://", option: "kafka://u:pw@h/"}
    done = saga_fsm("ui", *[part for pair in urls.items() for part in pair], cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("saga-fsm: error: invalid ") and "kafka://u:***@h/" in done.stderr
    assert "pw" not in done.stderr.replace("u:***", "")

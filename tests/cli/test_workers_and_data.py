"""Bad rows and bad input through the command line: one undecodable row never hides
the others, a batch is written whole or not at all, values JSON cannot hold are
refused in one line, an idempotency key means one request, workers quarantine rows
they cannot decode and run only the definitions they were given."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from saga_fsm import definition_fingerprint
from tests.cli.sagas import completes
from tests.cli.test_operate import COMPLETES, PARKS, ROOT, cli, state_of
from tests.durability.harness import store_url


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saga-fsm: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def count(tmp_path: Path, *args: str) -> int:
    listed = cli(tmp_path, "ls", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    return len(json.loads(listed.stdout))


# -- stores the tests run against: SQLite (default) and PostgreSQL ---------------------------
Corrupt = Callable[[str, str], None]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Corrupt]]:
    """(store URL, corrupt(saga_id, text)) for the CLI's --store."""
    if request.param == "sqlite":
        path = tmp_path / "ops.db"

        def corrupt_sqlite(saga_id: str, text: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(
                    "UPDATE saga_fsm_sagas SET snapshot = ? WHERE saga_id = ?", (text, saga_id)
                )
            conn.close()

        yield f"sqlite:///{path}", corrupt_sqlite
        return
    conninfo: str = request.getfixturevalue("postgres_dsn")

    def corrupt_postgres(saga_id: str, text: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "UPDATE saga_fsm_sagas SET snapshot = %s::jsonb WHERE saga_id = %s",
                (text if text.startswith('{"') else '{"x": 1}', saga_id),
            )

    yield store_url(conninfo), corrupt_postgres


# -- 1: undecodable rows -----------------------------------------------------------------------
def test_ls_lists_every_other_saga_and_shows_the_undecodable_one(
    tmp_path: Path, store: tuple[str, Corrupt]
) -> None:
    url, corrupt = store
    ids = [
        cli(tmp_path, "start", COMPLETES, "--data", f'{{"n": {n}}}', "--store", url).stdout.strip()
        for n in range(3)
    ]
    corrupt(ids[1], "{bad")
    listed = cli(tmp_path, "ls", "--json", "--store", url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == ids
    assert "error" not in rows[0] and "error" not in rows[2]
    assert rows[1]["error"] and set(rows[1]) == {"id", "error"}
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 1 and "warning" in warnings[0] and ids[1] in warnings[0]
    for args in (["--stuck", "--older-than", "0s"], ["--state", "pending"], []):
        shown = cli(tmp_path, "ls", *args, "--store", url)
        assert shown.returncode == 0, shown.stderr
        # ls shows each id by a unique prefix of at least 8 characters.
        assert all(i[:8] in shown.stdout for i in ids) and "undecodable" in shown.stdout
        assert len(shown.stderr.strip().splitlines()) == 1


def test_a_worker_quarantines_an_undecodable_row_until_an_operator_fixes_it(
    tmp_path: Path, store: tuple[str, Corrupt]
) -> None:
    url, corrupt = store
    good = cli(tmp_path, "start", COMPLETES, "--data", "{}", "--store", url).stdout.strip()
    bad = cli(tmp_path, "start", COMPLETES, "--data", "{}", "--store", url).stdout.strip()
    shown = cli(tmp_path, "show", bad, "--json", "--store", url)
    original = json.loads(shown.stdout)
    original["saga_id"] = original.pop("id")  # show --json names it id; the row, saga_id
    corrupt(bad, "{bad")
    refused = cli(tmp_path, "unquarantine", bad, "--store", url)
    one_line_error(refused, "not quarantined")

    with RunningWorker(tmp_path, url, COMPLETES) as logs:
        wait_for(lambda: state_of_at(tmp_path, url, good) == "completed")
        wait_for(lambda: count(tmp_path, "--quarantined", "--store", url) == 1)
    assert "quarantining saga " + bad in logs.read_text()

    one_line_error(cli(tmp_path, "ls", "--quarantined", "--stuck", "--store", url), "--stuck")
    quarantined = json.loads(cli(tmp_path, "ls", "--quarantined", "--json", "--store", url).stdout)
    assert [row["id"] for row in quarantined] == [bad] and quarantined[0]["error"]
    # Still undecodable: refused, and it stays quarantined.
    one_line_error(cli(tmp_path, "unquarantine", bad, "--store", url), "cannot decode")
    assert count(tmp_path, "--quarantined", "--store", url) == 1
    # Fixed: let go, and a worker runs it.
    corrupt(bad, json.dumps(original | {"schema_version": 1}))
    assert cli(tmp_path, "unquarantine", bad, "--store", url).returncode == 0
    assert count(tmp_path, "--quarantined", "--store", url) == 0
    with RunningWorker(tmp_path, url, COMPLETES):
        wait_for(lambda: state_of_at(tmp_path, url, bad) == "completed")


# -- 2: --data-file is all or nothing ----------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"total": NaN}', ["line 3", "data.total", "NaN"]),
        ('{"total": Infinity}', ["line 3", "data.total", "Infinity"]),
        ('{"big": 1e999}', ["line 3", "data.big"]),
        ('{"a": [1, {"b": -Infinity}]}', ["line 3", "data.a[1].b"]),
        ("[1, 2]", ["line 3", "JSON object"]),
        ("{nope", ["line 3", "not valid JSON"]),
    ],
)
def test_start_data_file_writes_nothing_when_a_line_is_bad(
    tmp_path: Path, line: str, words: list[str]
) -> None:
    rows = tmp_path / "orders.jsonl"
    rows.write_text(f'{{"n": 1}}\n{{"n": 2}}\n{line}\n{{"n": 4}}\n')
    one_line_error(cli(tmp_path, "start", COMPLETES, "--data-file", str(rows)), *words)
    assert not (tmp_path / "ops.db").exists() or count(tmp_path) == 0


def test_start_data_file_is_one_transaction(tmp_path: Path, store: tuple[str, Corrupt]) -> None:
    url, _ = store
    taken = cli(tmp_path, "start", COMPLETES, "--data", "{}", "--store", url).stdout.strip()
    rows = tmp_path / "orders.jsonl"
    rows.write_text('{"n": 1}\n{"n": 2}\n')
    # The database refuses the second saga (its key names another request): the first
    # one, already written in the same transaction, is gone with it.
    cli(
        tmp_path,
        "start",
        COMPLETES,
        "--data",
        '{"n": 0}',
        "--idempotency-key",
        "b:2",
        "--store",
        url,
    )
    refused = cli(
        tmp_path, "start", COMPLETES, "--data-file", str(rows), "--idempotency-key", "b",
        "--store", url,
    )  # fmt: skip
    one_line_error(refused, "'b:2'")
    assert count(tmp_path, "--store", url) == 2 and taken
    started = cli(tmp_path, "start", COMPLETES, "--data-file", str(rows), "--store", url)
    assert started.returncode == 0 and len(started.stdout.split()) == 2
    assert count(tmp_path, "--store", url) == 4


# -- 3: NaN / Infinity / 1e999 in --data --------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "start"])
@pytest.mark.parametrize(
    "data", ['{"total": NaN}', '{"total": Infinity}', '{"x": {"y": 1e999}}', '{"x": [-Infinity]}']
)
def test_values_json_cannot_hold_in_data_are_one_line_exit_2(
    tmp_path: Path, command: str, data: str
) -> None:
    result = cli(tmp_path, command, COMPLETES, "--data", data)
    one_line_error(result, "data.")
    assert "Traceback" not in result.stderr
    assert count(tmp_path) == 0


# -- 4: an idempotency key means one request -------------------------------------------------
def test_an_idempotency_key_reused_for_another_request_is_refused(tmp_path: Path) -> None:
    first = cli(tmp_path, "start", COMPLETES, "--data", '{"n": 1}', "--idempotency-key", "k1")
    same = cli(tmp_path, "start", COMPLETES, "--data", '{"n": 1}', "--idempotency-key", "k1")
    assert first.returncode == same.returncode == 0 and first.stdout == same.stdout
    saga_id = first.stdout.strip()
    other_data = cli(tmp_path, "start", COMPLETES, "--data", '{"n": 2}', "--idempotency-key", "k1")
    one_line_error(other_data, "'k1'", saga_id)
    other_definition = cli(
        tmp_path, "start", PARKS, "--data", '{"n": 1}', "--idempotency-key", "k1"
    )
    one_line_error(other_definition, "'k1'", saga_id)
    assert count(tmp_path) == 1


# -- 6: workers run only the definitions they were given --------------------------------------
def test_a_worker_claims_only_the_definitions_it_serves(tmp_path: Path) -> None:
    mine = cli(tmp_path, "start", COMPLETES, "--data", "{}").stdout.strip()
    other = cli(tmp_path, "start", PARKS, "--data", "{}").stdout.strip()
    # A row naming a module to import: no worker ever loads what a row says.
    planted = cli(tmp_path, "start", COMPLETES, "--data", "{}").stdout.strip()
    (tmp_path / "planted.py").write_text(
        "import pathlib\npathlib.Path('planted-ran').write_text('!')\n"
        "from tests.cli.sagas import completes as definition\n"
    )
    with sqlite3.connect(tmp_path / "ops.db") as conn:
        (text,) = conn.execute(
            "SELECT snapshot FROM saga_fsm_sagas WHERE saga_id = ?", (planted,)
        ).fetchone()
        doc = json.loads(text) | {"definition_ref": "planted:definition"}
        conn.execute(
            "UPDATE saga_fsm_sagas SET snapshot = ? WHERE saga_id = ?", (json.dumps(doc), planted)
        )
    conn.close()
    with RunningWorker(tmp_path, f"sqlite:///{tmp_path}/ops.db", COMPLETES) as logs:
        wait_for(lambda: state_of(tmp_path, mine) == state_of(tmp_path, planted) == "completed")
        time.sleep(0.5)
    assert state_of(tmp_path, other) == "pending"  # left for a worker that serves it
    assert not (tmp_path / "planted-ran").exists()
    text = logs.read_text()
    assert "serving completes v1" in text and "concurrency 8" in text, text


def test_worker_without_definitions_is_one_line_exit_2(tmp_path: Path) -> None:
    one_line_error(cli(tmp_path, "worker"), "REF")


# -- 13: what a worker says ------------------------------------------------------------------
def test_worker_logs_json_lines_with_the_saga_context(tmp_path: Path) -> None:
    saga_id = cli(
        tmp_path, "start", COMPLETES, "--data", "{}", "--idempotency-key", "k"
    ).stdout.strip()
    url = f"sqlite:///{tmp_path}/ops.db"
    with RunningWorker(tmp_path, url, COMPLETES, extra=("-v", "--log-format", "json")) as logs:
        wait_for(lambda: state_of(tmp_path, saga_id) == "completed")
    records = [json.loads(line) for line in logs.read_text().splitlines()]
    assert all(
        {"time", "level", "logger", "message", "saga_id", "step", "correlation_id"} <= set(r)
        for r in records
    )
    table = definition_fingerprint(completes)[:12]
    assert f"serving completes v1 ({table}) from {url}" in records[0]["message"]
    steps = [r for r in records if r["message"].startswith("step charge")]
    assert steps and all(r["saga_id"] == saga_id and r["step"] == "charge" for r in steps)
    assert any(r["message"].startswith(f"claimed saga {saga_id}") for r in records)
    summary = [r["message"] for r in records if ": claimed " in r["message"]]
    assert summary[-1].endswith("claimed 1, completed 1, compensated 0, failed 0, in flight 0")


@pytest.mark.postgres
def test_worker_start_line_never_shows_the_password(tmp_path: Path, postgres_dsn: str) -> None:
    url = store_url(postgres_dsn).replace(
        "postgresql://postgres@", "postgresql://postgres:SECRETPW@"
    )
    with RunningWorker(tmp_path, url, COMPLETES) as logs:
        wait_for(lambda: "serving" in logs.read_text())
    text = logs.read_text()
    assert "SECRETPW" not in text and "postgres:***@" in text, text


# -- helpers -----------------------------------------------------------------------------------
def state_of_at(tmp_path: Path, url: str, saga_id: str) -> str:
    shown = cli(tmp_path, "show", saga_id, "--json", "--store", url)
    return str(json.loads(shown.stdout)["state"]) if shown.returncode == 0 else "?"


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class RunningWorker:
    """A ``saga-fsm worker`` subprocess, stopped with SIGTERM on exit; its log file."""

    def __init__(self, tmp_path: Path, url: str, *refs: str, extra: tuple[str, ...] = ()) -> None:
        self.log = tmp_path / f"worker-{time.monotonic_ns()}.log"
        self.args = [
            sys.executable, "-m", "saga_fsm.cli", "worker", *refs, "--store", url,
            "--poll-interval", "0.05", "--lease-seconds", "2", *extra,
        ]  # fmt: skip
        self.cwd = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Path:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            self.args, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )  # fmt: skip
        return self.log

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log.read_text()

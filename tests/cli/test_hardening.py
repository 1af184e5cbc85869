"""Every bad input gets one line and changes nothing; a person can live in the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from saga_fsm import Orchestrator, SqliteStore
from tests.cli import sagas
from tests.cli.test_cli import saga_fsm
from tests.cli.test_operate import COMPLETES, PARKS, ROOT, cli, env

ORDER = "saga_fsm.examples.order_fulfillment"
SECRET = "SECRETPW"


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saga-fsm: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def seed(path: Path, *saga_ids: str) -> None:
    """Pending sagas with chosen ids in a SQLite store."""

    async def go() -> None:
        store = SqliteStore(path)
        try:
            orchestrator = Orchestrator(store, [sagas.completes])
            for saga_id in saga_ids:
                await orchestrator.start(
                    sagas.completes, {}, saga_id=saga_id, definition_ref=COMPLETES
                )
        finally:
            await store.close()

    asyncio.run(go())


# -- read-only commands never create a store ---------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["ls", "--json"],
        ["show", "abc"],
        ["history", "abc"],
        ["diagram", COMPLETES, "--instance", "abc"],
        ["cancel", "abc"],
        ["retry", "abc"],
        ["resume", "abc"],
    ],
)
def test_reading_a_store_that_does_not_exist_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    result = cli(tmp_path, *args, "--store", "sqlite:///typo.db")
    one_line_error(result, "no such store file 'typo.db'")
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("command", [["ls"], ["demo", "--sagas", "1"], ["show", "x"]])
def test_an_empty_store_url_is_an_error_not_the_default(tmp_path: Path, command: list[str]) -> None:
    one_line_error(saga_fsm(*command, "--store", "", cwd=tmp_path), "--store is empty")
    by_env = saga_fsm(*command, cwd=tmp_path, env={"SAGA_FSM_STORE": ""})
    one_line_error(by_env, "SAGA_FSM_STORE is set but empty")
    assert list(tmp_path.iterdir()) == []


def test_start_refuses_the_memory_store(tmp_path: Path) -> None:
    result = cli(tmp_path, "start", COMPLETES, "--data", "{}", "--store", "memory://")
    one_line_error(result, "memory://", "gone when")


# -- secrets ------------------------------------------------------------------------------------
def _commands(url: str) -> list[list[str]]:
    return [
        ["demo", "--sagas", "2", "--store", url],
        ["run", COMPLETES, "--data", "{}", "--store", url],
        ["start", COMPLETES, "--data", "{}", "--store", url],
        ["ls", "--store", url],
        ["ls", "--stuck", "--json", "--store", url],
        ["show", "nope", "--store", url],
        ["history", "nope", "--store", url],
        ["cancel", "nope", "--store", url],
        ["retry", "nope", "--store", url],
        ["resume", "nope", "--store", url, "--json"],
        ["diagram", COMPLETES, "--instance", "nope", "--store", url],
        ["check", COMPLETES, "--max-examples", "1", "--steps", "3", "--store", url],
    ]


def _worker_output(tmp_path: Path, url: str) -> str:
    """A worker run briefly (it waits for an unreachable store, logging why)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", "worker", "-v", "--poll-interval", "0.05"],
        cwd=tmp_path,
        env={**os.environ, **env(tmp_path), "SAGA_FSM_STORE": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = worker.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    return out + err


def _assert_never_printed(tmp_path: Path, url: str) -> None:
    for args in _commands(url):
        result = cli(tmp_path, *args)
        output = result.stdout + result.stderr
        assert SECRET not in output, (args, output)
        assert "Traceback" not in output, (args, output)
    assert SECRET not in _worker_output(tmp_path, url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:1/db",  # valid, nobody listening
        f"postgresql://u:{SECRET}@[bad/x",  # malformed
        f"postgresql://u:{SECRET}@127.0.0.1:5432/test?sslmode=bogus",  # refused by libpq
        f"postgresql://127.0.0.1:1/db?password={SECRET}",  # password as a parameter
        f"host=127.0.0.1 port=1 user=u password={SECRET}",  # keyword DSN
        f"host=127.0.0.1 password='{SECRET}' dbname=x",
    ],
)
def test_a_password_is_never_printed(tmp_path: Path, url: str) -> None:
    _assert_never_printed(tmp_path, url)


def test_a_password_is_never_printed_by_a_working_store(tmp_path: Path, postgres_dsn: str) -> None:
    # Trust authentication ignores the password: every command runs for real.
    params = conninfo_to_dict(postgres_dsn)
    options = quote(str(params["options"]))
    url = (
        f"postgresql://{params.get('user', 'postgres')}:{SECRET}@{params['host']}:"
        f"{params.get('port', 5432)}/{params['dbname']}?options={options}"
    )
    demo = cli(tmp_path, "demo", "--sagas", "2", "--store", url)
    assert demo.returncode == 0, demo.stderr
    assert f"store: postgresql://{params.get('user', 'postgres')}:***@" in demo.stdout
    _assert_never_printed(tmp_path, url)


# -- numbers out of range -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ls", "--limit", "99999999999999999999"], "--limit"),
        (["ls", "--limit", "0"], "--limit"),
        (["ls", "--stuck", "--older-than", "999999999d"], "--older-than"),
        (["worker", "--lease-seconds", "inf"], "--lease-seconds"),
        (["worker", "--lease-seconds", "nan"], "--lease-seconds"),
        (["worker", "--poll-interval", "nan"], "--poll-interval"),
        (["worker", "--grace", "nan"], "--grace"),
        (["worker", "--concurrency", "99999999999999999999"], "--concurrency"),
        (["demo", "--fail-rate", "nan"], "--fail-rate"),
        (["demo", "--sagas", "99999999999999999999"], "--sagas"),
        (["demo", "--concurrency", "99999999999999999999"], "--concurrency"),
        (["check", COMPLETES, "--max-examples", "99999999999999999999"], "--max-examples"),
    ],
)
def test_numbers_out_of_range_get_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    seed(tmp_path / "ops.db", "s-1")
    one_line_error(cli(tmp_path, *args), words)


# -- ids ----------------------------------------------------------------------------------------
IDS = ("aaaaaaaa-1111-x", "aaaaaaaa-2222-y", "bbbbbbbb-3333-z")


def test_ls_shows_short_unique_ids_that_paste_back(tmp_path: Path) -> None:
    seed(tmp_path / "ops.db", *IDS)
    narrow = cli(tmp_path, "ls", COLUMNS="60")
    assert narrow.returncode == 0, narrow.stderr
    shown = re.findall(r"^│ (\S+)\s*│", narrow.stdout, re.MULTILINE)
    assert shown == ["aaaaaaaa-111", "aaaaaaaa-222", "bbbbbbbb"]
    for short, full in zip(shown, IDS, strict=True):
        pasted = cli(tmp_path, "show", short, "--json")
        assert pasted.returncode == 0, pasted.stderr
        assert json.loads(pasted.stdout)["id"] == full
    listed = json.loads(cli(tmp_path, "ls", "--json").stdout)
    assert [row["id"] for row in listed] == list(IDS)  # JSON keeps whole ids


def test_every_command_taking_an_id_takes_a_unique_prefix(tmp_path: Path) -> None:
    seed(tmp_path / "ops.db", *IDS)
    history = json.loads(cli(tmp_path, "history", "bbb", "--json").stdout)
    assert history == {"id": IDS[2], "transitions": []}  # pending: nothing happened yet
    drawn = cli(tmp_path, "diagram", COMPLETES, "--instance", "bbbb", "--format", "mermaid")
    assert drawn.returncode == 0, drawn.stderr
    cancelled = cli(tmp_path, "cancel", "aaaaaaaa-1", "--json")
    assert json.loads(cancelled.stdout) == {"id": IDS[0], "state": "compensated", "version": 3}
    resumed = json.loads(cli(tmp_path, "resume", "aaaaaaaa-2", "--json").stdout)
    assert resumed["id"] == IDS[1] and resumed["state"] == "completed"
    refused = cli(tmp_path, "retry", "bbbbbbbb")
    assert refused.returncode == 1 and IDS[2] in refused.stderr

    for command in ("show", "history", "cancel", "retry", "resume"):
        ambiguous = one_line_error(cli(tmp_path, command, "aaaa"), "ambiguous")
        assert IDS[0] in ambiguous and IDS[1] in ambiguous
        one_line_error(cli(tmp_path, command, "zzz"), "no saga with id 'zzz'")
    one_line_error(cli(tmp_path, "diagram", COMPLETES, "--instance", "aaaa"), IDS[0], IDS[1])


def test_ls_shows_the_newest_50_and_says_how_many_more(tmp_path: Path) -> None:
    lines = tmp_path / "many.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(55)))
    assert cli(tmp_path, "start", COMPLETES, "--data-file", str(lines)).returncode == 0
    newest = cli(tmp_path, "start", COMPLETES, "--data", '{"n": "last"}').stdout.strip()
    listed = cli(tmp_path, "ls", "--json")
    rows = json.loads(listed.stdout)
    assert len(rows) == 50 and rows[-1]["id"] == newest
    assert "6 older saga(s) not shown" in listed.stderr
    table = cli(tmp_path, "ls")
    assert "50 saga(s); 6 older saga(s) not shown" in table.stdout
    assert len(json.loads(cli(tmp_path, "ls", "--json", "--limit", "60").stdout)) == 56


# -- one name for the id in JSON ---------------------------------------------------------------------
def test_every_json_output_calls_the_saga_id_id(tmp_path: Path) -> None:
    ran = json.loads(cli(tmp_path, "run", COMPLETES, "--data", "{}", "--json").stdout)
    started = json.loads(cli(tmp_path, "start", COMPLETES, "--data", "{}", "--json").stdout)
    assert started == [{"id": started[0]["id"], "state": "pending", "version": 1}]
    outputs = [
        ran,
        started[0],
        json.loads(cli(tmp_path, "ls", "--json").stdout)[0],
        json.loads(cli(tmp_path, "show", ran["id"], "--json").stdout),
        json.loads(cli(tmp_path, "history", ran["id"], "--json").stdout),
        json.loads(cli(tmp_path, "resume", started[0]["id"], "--json").stdout),
    ]
    for output in outputs:
        assert "id" in output and "saga_id" not in output, output


# -- exit codes ----------------------------------------------------------------------------------------
def test_resume_of_a_finished_saga_is_refused_with_the_reason(tmp_path: Path) -> None:
    done = json.loads(cli(tmp_path, "run", COMPLETES, "--data", "{}", "--json").stdout)["id"]
    refused = cli(tmp_path, "resume", done)
    assert refused.returncode == 1
    assert refused.stderr.startswith("saga-fsm: refused:") and "completed" in refused.stderr
    parked = json.loads(cli(tmp_path, "run", PARKS, "--data", "{}", "--json").stdout)["id"]
    refused = cli(tmp_path, "resume", parked)
    assert refused.returncode == 1 and "use retry" in refused.stderr


def test_resume_refused_by_a_lease_says_when_it_expires(tmp_path: Path) -> None:
    seed(tmp_path / "ops.db", "held")

    async def take() -> datetime:
        store = SqliteStore(tmp_path / "ops.db")
        try:
            await store.acquire("held", "dead-worker", now=datetime.now(UTC), lease_seconds=60)
            lease = await store.lease("held")
        finally:
            await store.close()
        assert lease is not None
        return lease.expires_at

    expires = asyncio.run(take())
    refused = cli(tmp_path, "resume", "held")
    assert refused.returncode == 1, refused.stderr
    assert "dead-worker" in refused.stderr
    assert expires.isoformat(timespec="seconds") in refused.stderr
    assert "if that worker is dead" in refused.stderr


# -- demo ------------------------------------------------------------------------------------------------
def test_demo_ends_with_what_to_try_next_using_a_real_id(tmp_path: Path) -> None:
    demo = saga_fsm("demo", "--sagas", "5", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    listed = {row["id"] for row in json.loads(saga_fsm("ls", "--json", cwd=tmp_path).stdout)}
    shown = re.search(r"^  saga-fsm show (\S+)$", demo.stdout, re.MULTILINE)
    assert shown is not None and shown.group(1) in listed, demo.stdout
    assert "\n  saga-fsm ls\n" in demo.stdout
    assert f"saga-fsm diagram {ORDER} --instance {shown.group(1)} -o run.png" in demo.stdout
    assert f"saga-fsm check {ORDER}" in demo.stdout
    in_memory = saga_fsm("demo", "--sagas", "2", "--store", "memory://", cwd=tmp_path)
    assert "gone with this process" in in_memory.stdout


def test_demo_holds_only_the_sagas_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    from saga_fsm.cli import _demo

    most = 0
    real_run = Orchestrator.run

    async def counting_run(self: Orchestrator, *args: object, **kwargs: object) -> object:
        nonlocal most
        most = max(most, len(asyncio.all_tasks()))
        return await real_run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_demo.Orchestrator, "run", counting_run)
    tally = asyncio.run(_demo.run_demo("memory://", 400, 0.2, 1, 4, None))
    assert sum(tally.by_state.values()) == 400
    assert most < 10  # the runners and a few helpers, not one task per saga


# -- check without its extra ------------------------------------------------------------------------
def test_check_without_hypothesis_names_the_extra_the_readme_names(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['hypothesis'] = None; from saga_fsm.cli import main; main()",
            "check",
            COMPLETES,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env(tmp_path)},
    )
    line = one_line_error(result, "pip install 'saga-fsm[testing]'")
    extra = re.search(r"pip install '(saga-fsm\[\w+\])'", line)
    assert extra is not None
    assert f"pip install '{extra.group(1)}'" in (ROOT / "README.md").read_text()


# -- files, flags and states ------------------------------------------------------------------------
def test_files_that_are_not_utf8_are_named(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes('name = "café"\n'.encode("latin-1"))
    one_line_error(cli(tmp_path, "run", "latin1.toml", "--data", "{}"), "latin1.toml", "UTF-8")
    (tmp_path / "data.jsonl").write_bytes('{"who": "café"}\n'.encode("latin-1"))
    start = cli(tmp_path, "start", COMPLETES, "--data-file", "data.jsonl")
    one_line_error(start, "data.jsonl", "UTF-8")


def test_a_json_definition_whose_steps_are_not_a_list_says_so(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('{"name": "x", "steps": "notalist"}')
    line = one_line_error(cli(tmp_path, "run", "d.json", "--data", "{}"), "d.json", "'steps'")
    assert "must be a list" in line and "unknown error" not in line
    (tmp_path / "e.json").write_text('{"name": "x", "steps": ["reserve"]}')
    one_line_error(cli(tmp_path, "run", "e.json", "--data", "{}"), "step 0", "table/object")


def test_a_bounded_retriable_step_names_the_step_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(
        'name = "x"\n'
        '[[steps]]\nname = "reserve"\naction = "tests.cli.sagas:ok"\n'
        'compensation = "tests.cli.sagas:ok"\n'
        '[[steps]]\nname = "charge"\nkind = "pivot"\naction = "tests.cli.sagas:ok"\n'
        '[[steps]]\nname = "notify"\nkind = "retriable"\naction = "tests.cli.sagas:ok"\n'
        "retry = { max_attempts = 3 }\n"
    )
    one_line_error(cli(tmp_path, "run", "r.toml", "--data", "{}"), "'notify'", "max_attempts=None")


def test_older_than_needs_stuck(tmp_path: Path) -> None:
    seed(tmp_path / "ops.db", "s-1")
    one_line_error(cli(tmp_path, "ls", "--older-than", "1h"), "--older-than", "--stuck")
    assert cli(tmp_path, "ls", "--stuck", "--older-than", "0s").returncode == 0


@pytest.mark.parametrize("state", ["bogus", "completed:x", "running:", "Running"])
def test_ls_refuses_an_unknown_state_and_lists_the_valid_ones(tmp_path: Path, state: str) -> None:
    seed(tmp_path / "ops.db", "s-1")
    one_line_error(cli(tmp_path, "ls", "--state", state), repr(state), "pending, running")
    assert cli(tmp_path, "ls", "--state", "running:charge").returncode == 0

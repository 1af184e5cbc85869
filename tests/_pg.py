"""A PostgreSQL server for the test session, and a fresh schema per test.

Order of preference: the server at ``$SAGA_FSM_TEST_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``); if it cannot be reached, a throwaway
cluster started from the local PostgreSQL binaries; if there are none, skip. With
``CI=true`` an unreachable server FAILS the tests: CI must never pass by skipping.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
OS_USER = "postgres"  # who runs initdb/pg_ctl when the tests run as root


def configured_dsn() -> str:
    return os.environ.get("SAGA_FSM_TEST_DSN") or DEFAULT_DSN


def unreachable_reason(dsn: str) -> str | None:
    """None if ``dsn`` accepts a connection, else why not."""
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except psycopg.Error as err:
        return " ".join(str(err).split()) or type(err).__name__


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then the newest
    Debian-style ``/usr/lib/postgresql/<major>/bin``."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[str]:
    """initdb a cluster in a temp dir, start it on a free local port, yield its DSN,
    then stop it and delete everything. As root, runs the binaries as ``postgres``
    (initdb refuses root) in a directory that user owns."""
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    owner = None
    if as_root:
        try:
            owner = pwd.getpwnam(OS_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no {OS_USER!r} OS user to run initdb")
        prefix = ["runuser", "-u", OS_USER, "--"]
    workdir = Path(tempfile.mkdtemp(prefix="saga_fsm_pg_"))
    data, log = workdir / "data", workdir / "postgres.log"
    if owner is not None:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(
                f"throwaway PostgreSQL: {' '.join(args[:2])} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{tail}",
                pytrace=False,
            )

    started = False
    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {workdir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """The DSN of a reachable server for the whole session (see the module docstring)."""
    dsn = configured_dsn()
    reason = unreachable_reason(dsn)
    if reason is None:
        yield dsn
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"PostgreSQL at {dsn} is unreachable and CI=true (no skipping in CI): {reason}",
            pytrace=False,
        )
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            f"PostgreSQL at {dsn} is unreachable ({reason}) and no initdb/pg_ctl was found;"
            " set SAGA_FSM_TEST_DSN to a server"
        )
    with throwaway_cluster(bindir) as throwaway:
        yield throwaway


@contextmanager
def fresh_schema(server_dsn: str) -> Iterator[str]:
    """A conninfo whose ``search_path`` is a new, empty schema, dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_conninfo(server_dsn, options=f"-csearch_path={schema}")
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

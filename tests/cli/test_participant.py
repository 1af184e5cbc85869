"""``saga-fsm participant``: bad input is one line and exit 2 with no secret shown,
SIGTERM is a clean exit, and the README's commands serve the order services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from saga_fsm.cli import main
from saga_fsm.messaging import (
    Headers,
    Message,
    MessageKind,
    Outcome,
    ReplyBody,
    open_transport,
    reply_from_payload,
)
from tests.messaging._brokers import amqp_url, require

ROOT = Path(__file__).resolve().parents[2]
MODULE = "saga_fsm.examples.order_services_db"


def participant(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", "participant", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no_such_module", "--broker", "memory://"], "cannot import module 'no_such_module'"),
        (["json", "--broker", "memory://"], "module 'json' holds 0 Participants"),
        ([f"{MODULE}:nope", "--broker", "memory://"], f"module '{MODULE}' has no 'nope'"),
        ([f"{MODULE}:PAYMENT_LIMIT", "--broker", "memory://"], "is a int, not a Participant"),
        ([MODULE, "--broker", "kafka://u:hunter2@host/"], "invalid transport URL"),
        ([MODULE, "--broker", "amqp://u:hunter2@127.0.0.1:5672/"], "give --inbox URL"),
        ([MODULE, "--broker", "memory://", "--inbox", "redis://u:hunter2@x/"], "invalid inbox"),
        ([MODULE, "--broker", "sqlite:///no/such/dir/m.db"], "directory no/such/dir does not"),
        ([MODULE, "--broker", "memory://", "--concurrency", "0"], "--concurrency"),
        ([MODULE, "--broker", "memory://", "--prefix", "a b"], "invalid channel 'a b'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(main, ["participant", *args])
    assert done.exit_code == 2, done.output
    assert says in done.stderr
    assert "hunter2" not in done.output
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_credentials_the_broker_refuses_are_exit_2(tmp_path: Path) -> None:
    url = amqp_url()
    require(url, "RabbitMQ", 5672)
    wrong = re.sub(r"//[^@/]*@", "//guest:hunter2@", url)
    done = participant(MODULE, "--broker", wrong, "--inbox", "memory://", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "login refused" in done.stderr and "hunter2" not in done.stderr


@contextmanager
def serving(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Iterator[Path]:
    """``saga-fsm participant ...`` running until the block ends, then SIGTERM: exit 0."""
    log = cwd / f"participant-{secrets.token_hex(3)}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "saga_fsm.cli", *command[1:]],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    try:
        deadline = time.monotonic() + 60
        while b"consuming" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield log
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]


def test_sigterm_is_a_clean_exit_and_json_logs_are_json(tmp_path: Path) -> None:
    command = ["saga-fsm", "participant", f"{MODULE}:shipping", "--broker"]
    command += [f"sqlite:///{tmp_path}/s.db", "--log-format", "json"]
    with serving(command, tmp_path) as log:
        pass
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["message"] == "participant shipping: consuming shipping.ship on sqlite"
    assert {"saga_id", "level", "time"} <= set(lines[0])


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Participants\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return [shlex.split(line) for line in lines if not line.startswith("#")]


def command(channel: str, saga: str, payload: dict[str, object], reply_to: str) -> Message:
    headers = Headers(
        saga_id=saga, step=channel, idempotency_key=f"{saga}:{channel}", reply_channel=reply_to
    )
    return Message(channel, MessageKind.COMMAND, payload, headers)


async def ask(url: str, commands: list[Message], reply_to: str) -> dict[str, ReplyBody]:
    """Send ``commands`` and wait for each one's reply (by its channel)."""
    async with open_transport(url) as transport:
        replies = await transport.subscribe(reply_to)
        for message in commands:
            await transport.publish(message)
        got: dict[str, ReplyBody] = {}
        while len(got) < len(commands):
            delivery = await replies.receive(timeout=30)
            assert delivery is not None, f"replies so far: {got}"
            got[str(delivery.message.headers.step)] = reply_from_payload(delivery.message.payload)
            await delivery.ack()
        return got


def test_the_readme_commands_serve_the_order_services(tmp_path: Path) -> None:
    embedded, *on_rabbitmq = readme_commands()
    assert len(on_rabbitmq) == 3
    order = {"order_id": "o-1", "amount": 5000}
    with serving(embedded, tmp_path):
        got = asyncio.run(
            ask(
                f"sqlite:///{tmp_path / 'orders.db'}",
                [
                    command("inventory.reserve", "o-1", order, "orders.replies"),
                    command("payment.charge", "o-1", order, "orders.replies"),
                ],
                "orders.replies",
            )
        )
    assert got["inventory.reserve"] == ReplyBody(
        Outcome.SUCCEEDED, data={"reservation_id": "res-o-1"}
    )
    refused = got["payment.charge"]
    assert refused.error is not None and not refused.error.retryable
    assert refused.error.message == "amount 5000 is over the limit of 1000"
    with closing(sqlite3.connect(tmp_path / "orders.db")) as conn:
        rows = conn.execute("SELECT idempotency_key, kind FROM inventory_moves").fetchall()
        assert rows == [("o-1:inventory.reserve", "reserve")]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'payment_moves'")


@pytest.fixture
def vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of the test's own: the README's channel names collide
    with nobody's."""
    require(amqp_url(), "RabbitMQ", 5672)
    name = f"saga-fsm-readme-{secrets.token_hex(4)}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)

    ctl("add_vhost", name)
    try:
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        ctl("delete_vhost", name)


def test_the_readme_services_as_separate_processes_on_rabbitmq(tmp_path: Path, vhost: str) -> None:
    readme_url = "amqp://guest:guest@127.0.0.1:5672/"
    url = amqp_url().rstrip("/") + f"/{vhost}"
    commands = [
        [url if arg == readme_url else arg for arg in line] for line in readme_commands()[1:]
    ]
    order = {"order_id": "o-2", "amount": 20}
    with (
        serving(commands[0], tmp_path),
        serving(commands[1], tmp_path),
        serving(commands[2], tmp_path),
    ):
        got = asyncio.run(
            ask(
                url,
                [
                    command("inventory.reserve", "o-2", order, "orders.replies"),
                    command("payment.charge", "o-2", order, "orders.replies"),
                    command("shipping.ship", "o-2", order, "orders.replies"),
                ],
                "orders.replies",
            )
        )
    assert {step: body.outcome for step, body in got.items()} == {
        "inventory.reserve": Outcome.SUCCEEDED,
        "payment.charge": Outcome.SUCCEEDED,
        "shipping.ship": Outcome.SUCCEEDED,
    }
    for service, table in [("inventory", "inventory_moves"), ("shipping", "shipping_moves")]:
        with closing(sqlite3.connect(tmp_path / f"{service}.db")) as conn:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)

"""Waits end to end: a worker, a signal from another client, a deadline, on every store."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from saga_fsm import (
    FakeClock,
    Orchestrator,
    SagaClient,
    SignalRefused,
    StepStatus,
)
from saga_fsm._worker import Worker
from saga_fsm.examples.refund_approval import definition as refund
from saga_fsm.examples.refund_approval import ledger
from saga_fsm.stores import SagaStore
from saga_fsm.stores import open_store as open_saga_store
from saga_fsm.stores.postgres import PostgresStore
from tests.cli.test_cli import saga_fsm
from tests.readme import printed_output, python_example, readme_section, run_example

ROOT = Path(__file__).resolve().parents[1]
REF = "saga_fsm.examples.refund_approval:definition"

StoreOpener = Callable[[], Any]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    @asynccontextmanager
    async def opened() -> AsyncIterator[SagaStore]:
        if request.param == "memory":
            url = "memory://"
        elif request.param == "sqlite":
            url = f"sqlite:///{tmp_path}/w.db"
        else:
            store = await PostgresStore.open(request.getfixturevalue("postgres_dsn"), max_size=4)
            try:
                yield store
            finally:
                await store.close()
            return
        async with open_saga_store(url) as opened_store:
            yield opened_store

    return opened


async def until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


def test_a_signal_from_another_client_lets_a_worker_carry_the_saga_on(
    open_store: StoreOpener,
) -> None:
    ledger.reset()

    async def go() -> None:
        async with open_store() as store:
            orchestrator = Orchestrator(store, [refund], worker_id="w1")
            waiting = await orchestrator.run(refund, {"amount": 800})
            saga_id = waiting.saga_id
            assert waiting.state == "running:manager_approval"
            assert await store.lease(saga_id) is None  # nobody holds a waiting saga
            assert ledger.paid == {}
            stop = asyncio.Event()
            worker = Worker(orchestrator, concurrency=2, poll_interval=0.02)
            task = asyncio.create_task(worker.run(stop, grace=1))
            try:
                api = SagaClient(store, [refund])
                with pytest.raises(SignalRefused, match="not 'maybe'"):
                    await api.signal(saga_id, "maybe")
                await api.signal(saga_id, "approved", {"approved_by": "maria"})

                async def done() -> bool:
                    return (await store.load(saga_id)).is_terminal

                await until(done)
            finally:
                stop.set()
                await task
            final = await store.load(saga_id)
            assert final.state == "completed"
            assert final.data["approved_by"] == "maria"
            assert list(ledger.paid.values()) == [800.0]
            # Repeated once it was taken: nothing changes.
            again = await SagaClient(store, [refund]).signal(
                saga_id, "approved", {"approved_by": "maria"}
            )
            assert again.version == final.version
            triggers = [h.trigger for h in await store.history(saga_id)]
            assert "signal" in triggers

    asyncio.run(go())


def test_a_rejection_and_a_deadline_both_compensate(open_store: StoreOpener) -> None:
    ledger.reset()

    async def go() -> None:
        clock = FakeClock()
        async with open_store() as store:
            orchestrator = Orchestrator(store, [refund], clock=clock)
            rejected = await orchestrator.run(refund, {"amount": 900})
            silent = await orchestrator.run(refund, {"amount": 700})
            small = await orchestrator.run(refund, {"amount": 20})
            await orchestrator.signal(rejected.saga_id, "rejected", {"reason": "duplicate claim"})
            assert (await orchestrator.resume(rejected.saga_id)).state == "compensated"
            # Before the deadline a worker has nothing to do; after it, silence is a failure.
            assert (await orchestrator.resume(silent.saga_id)).state == "running:manager_approval"
            clock.advance(timedelta(hours=48, seconds=1).total_seconds())
            timed_out = await orchestrator.resume(silent.saga_id)
            assert timed_out.state == "compensated"
            assert timed_out.step("manager_approval").status is StepStatus.TIMED_OUT
            assert small.state == "completed"  # below the threshold: no wait
            assert ledger.cases == {
                rejected.saga_id: "closed",
                silent.saga_id: "closed",
                small.saga_id: "open",
            }
            assert list(ledger.paid.values()) == [20.0]

    asyncio.run(go())


def test_saga_fsm_signal_from_the_command_line(tmp_path: Path) -> None:
    env = {"SAGA_FSM_STORE": f"sqlite:///{tmp_path}/cli.db", "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return saga_fsm(*args, cwd=tmp_path, env=env)

    started = cli("start", REF, "--data", '{"amount": 800}')
    assert started.returncode == 0, started.stderr
    saga_id = started.stdout.strip()
    ran = cli("resume", saga_id, "--json")
    assert json.loads(ran.stdout)["state"] == "running:manager_approval", ran.stderr
    refused = cli("signal", saga_id[:8], "maybe")
    assert refused.returncode == 1
    assert "waits for 'approved', 'rejected', not 'maybe'" in refused.stderr
    bad = cli("signal", saga_id, "approved", "--data", "[1]")
    assert bad.returncode == 2 and "--data must be a JSON object" in bad.stderr
    approved = cli("signal", saga_id, "approved", "--data", '{"approved_by": "maria"}', "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["state"] == "completed"
    again = cli("signal", saga_id, "approved", "--data", '{"approved_by": "maria"}', "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["state"] == "completed"
    late = cli("signal", saga_id, "rejected")
    assert late.returncode == 1 and "got 'approved' already" in late.stderr


def test_the_readme_example_prints_what_it_says(tmp_path: Path) -> None:
    section = readme_section("Waiting for an event (approvals)")
    done = run_example(python_example(section), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed_output(section)


def test_the_readme_commands_name_real_options() -> None:
    from click.testing import CliRunner

    from saga_fsm.cli import main

    section = readme_section("Waiting for an event (approvals)")
    commands = re.findall(r"saga-fsm (\w+)([^\n]*(?:\\\n[^\n]*)*)", section)
    assert {c for c, _ in commands} >= {"start", "worker", "signal", "check"}
    for command, rest in commands:
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        for flag in re.findall(r"--[a-z-]+", rest):
            assert flag in help_text, (command, flag)


def test_saga_fsm_check_covers_every_reachable_row_of_the_refund_example(tmp_path: Path) -> None:
    done = saga_fsm(
        "check",
        REF,
        "--data",
        '{"amount": 800}',
        "--data",
        '{"amount": 120}',
        "--setup",
        "saga_fsm.examples.refund_approval:ledger.reset",
        "--seed",
        "1",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "35/35 reachable transitions taken (100%)" in done.stdout

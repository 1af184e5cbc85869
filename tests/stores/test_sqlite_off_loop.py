"""SQLite calls run off the event loop: while another process holds a database's write
lock for seconds, the process's other sagas keep renewing their leases."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from saga_fsm import Orchestrator, SagaBuilder, StepContext
from saga_fsm.stores import SqliteStore

HOLD_SECONDS = 3.0
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


class RenewalClock(SqliteStore):
    """A SQLite store that notes when each renewal came back."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.renewed_at: list[float] = []

    async def renew_leases(self, saga_ids: Any, worker_id: str, *, expires_at: Any) -> set[str]:
        held = await super().renew_leases(saga_ids, worker_id, expires_at=expires_at)
        self.renewed_at.append(time.monotonic())
        return held


def test_a_locked_database_does_not_stall_the_other_sagas_renewals(tmp_path: Path) -> None:
    async def wait(ctx: StepContext) -> None:
        await asyncio.sleep(HOLD_SECONDS + 2)

    def noop(ctx: StepContext) -> None:
        return None

    slow = SagaBuilder("slow").step("a", wait, compensation=noop).build()
    quick = SagaBuilder("quick").step("a", noop, compensation=noop).build()

    async def go() -> tuple[list[float], float, float]:
        other = RenewalClock(tmp_path / "other.db")
        locked = SqliteStore(tmp_path / "locked.db")
        try:
            driver = Orchestrator(other, [slow], worker_id="w", lease_seconds=0.3)
            runs = [asyncio.create_task(driver.run(slow, {"n": n})) for n in range(3)]
            await asyncio.sleep(0.3)
            locker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                LOCKER,
                str(tmp_path / "locked.db"),
                str(HOLD_SECONDS),
                stdout=subprocess.PIPE,
            )
            assert locker.stdout is not None
            assert (await locker.stdout.readline()).strip() == b"locked"
            started = time.monotonic()
            # Waits for the lock (busy_timeout) in the store's own thread.
            await Orchestrator(locked, [quick]).start(quick, {})
            unlocked = time.monotonic()
            await locker.wait()
            for run in runs:
                assert (await run).state == "completed"
            return other.renewed_at, started, unlocked
        finally:
            await other.close()
            await locked.close()

    renewed_at, started, unlocked = asyncio.run(go())
    assert unlocked - started >= HOLD_SECONDS * 0.8, "the lock was not held"
    during = [t for t in renewed_at if started < t < unlocked]
    # Every 0.1 s: about 30 while the lock was held; none at all if the loop had stalled.
    assert len(during) >= 10, f"{len(during)} renewals in {unlocked - started:.1f} s of lock"

"""Remote steps inside a parallel group: each branch's command goes through the outbox
with a request id of its own, replies reach the branch that waits for them, a reply
that never comes times out, and a refusal undoes the other branches."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from saga_fsm import (
    Parallel,
    SagaClient,
    SagaDefinition,
    SagaExecutor,
    Step,
    StepFailed,
    Worker,
)
from saga_fsm.messaging import open_transport
from saga_fsm.participant import MemoryInbox, Participant
from saga_fsm.stores import open_store


def warehouses(seen: list[str]) -> Participant:
    inventory = Participant("inventory")

    @inventory.handles("inventory.reserve")
    def reserve(command: Any) -> dict[str, Any]:
        seen.append(f"reserve {command.message.headers.step} {command.payload.get('qty')}")
        if (
            command.message.headers.step == "reserve_all/east/reserve"
            and command.payload["qty"] > 10
        ):
            raise StepFailed("east is short", retryable=False)
        return {
            f"reserved_{str(command.message.headers.step).split('/')[1]}": command.idempotency_key
        }

    @inventory.handles("inventory.release", compensates="inventory.reserve")
    def release(command: Any) -> None:
        seen.append(f"release {command.message.headers.step}")

    return inventory


def local(ctx: Any) -> dict[str, Any]:
    return {"local": True}


def undo(ctx: Any) -> None:
    return None


ORDER = SagaDefinition(
    "remote_parallel",
    [
        Parallel(
            "reserve_all",
            branches={
                key: [
                    Step(
                        "reserve",
                        command="inventory.reserve",
                        compensation_command="inventory.release",
                        timeout=10,
                    )
                ]
                for key in ("north", "south", "east")
            }
            | {"here": [Step("note", local, undo)]},
        ),
        Step("charge", local, kind="pivot"),
    ],
)


def test_remote_branches_complete_and_a_refusal_undoes_the_others(tmp_path: Path) -> None:
    seen: list[str] = []
    url = f"sqlite:///{tmp_path / 'orders.db'}"

    async def go() -> list[Any]:
        async with open_store(url) as store, open_transport(url) as transport:
            executor = SagaExecutor(store, [ORDER])
            stop = asyncio.Event()
            running = [
                asyncio.create_task(Worker(executor, transport=transport).run(stop)),
                asyncio.create_task(warehouses(seen).serve(transport, MemoryInbox(), stop=stop)),
            ]
            client = SagaClient(store, executor.definitions)
            finished = []
            for data in ({"qty": 2}, {"qty": 50}):
                saga = await client.start(ORDER, data)
                async with asyncio.timeout(30):
                    while not (saga := await store.load(saga.saga_id)).is_terminal:
                        await asyncio.sleep(0.05)
                finished.append(saga)
            stop.set()
            await asyncio.gather(*running)
            return finished

    done, undone = asyncio.run(go())
    assert done.state == "completed"
    assert {"reserved_north", "reserved_south", "reserved_east", "local"} <= set(done.data)
    assert done.data["reserved_north"] == f"{done.saga_id}:reserve_all/north/reserve"
    assert undone.state == "compensated"
    releases = sorted(s for s in seen if s.startswith("release"))
    # North and south reserved (east refused, nothing to undo there): both released once.
    assert releases == ["release reserve_all/north/reserve", "release reserve_all/south/reserve"]


def test_a_remote_branch_whose_reply_never_comes_times_out_and_is_undone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    slow = SagaDefinition(
        "remote_timeout",
        [
            Parallel(
                "g",
                branches={
                    "a": [
                        Step(
                            "r",
                            command="nobody.listens",
                            compensation_command="nobody.undoes",
                            timeout=0.3,
                            compensation_timeout=0.3,
                            compensation_retry=__import__("saga_fsm").RetryPolicy(max_attempts=1),
                        )
                    ],
                    "b": [Step("note", local, undo)],
                },
            )
        ],
    )

    async def go() -> Any:
        async with open_store(url) as store, open_transport(url) as transport:
            executor = SagaExecutor(store, [slow])
            stop = asyncio.Event()
            worker = asyncio.create_task(
                Worker(executor, transport=transport, poll_interval=0.05).run(stop)
            )
            saga = await SagaClient(store, executor.definitions).start(slow, {})
            async with asyncio.timeout(30):
                while not (saga := await store.load(saga.saga_id)).is_terminal:
                    await asyncio.sleep(0.05)
            stop.set()
            await worker
            return saga

    saga = asyncio.run(go())
    # Nobody answers the step nor its compensation: it times out, its undo times out
    # too, and the saga parks at the group for an operator.
    assert saga.state == "failed" and saga.parked_at == "compensating:g"
    (a,) = [b for b in saga.step("g").branches or () if b.key == "a"]
    assert a.state == "failed" and a.steps[0].status.value == "compensation_failed"

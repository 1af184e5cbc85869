"""``demo``: many order-fulfilment sagas against flaky in-process fake services."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from saga_fsm._orchestrator import Orchestrator
from saga_fsm._snapshot import Snapshot, StepStatus
from saga_fsm.cli._app import UsageProblem, main, resolve_store_url, run_async, store_option
from saga_fsm.cli._render import console, state_text
from saga_fsm.examples import order_fulfillment
from saga_fsm.examples._fakes import services
from saga_fsm.stores import open_store


async def run_demo(
    store_url: str,
    sagas: int,
    fail_rate: float,
    seed: int,
    concurrency: int,
    progress: Progress | None,
) -> list[Snapshot]:
    services.configure(fail_rate=fail_rate, seed=seed)
    definition = order_fulfillment.definition
    task = progress.add_task("sagas", total=sagas) if progress else None
    gate = asyncio.Semaphore(concurrency)
    async with open_store(store_url) as store:
        orchestrator = Orchestrator(store, [definition])

        async def one(n: int) -> Snapshot:
            async with gate:
                order_id = f"order-{seed}-{n}"
                order = {"order_id": order_id, "amount": 10 + n % 90, "quantity": 1 + n % 3}
                final = await orchestrator.run(definition, order, correlation_id=order_id)
            if progress is not None and task is not None:
                progress.advance(task)
            return final

        return list(await asyncio.gather(*(one(n) for n in range(sagas))))


@main.command("demo")
@store_option
@click.option("--sagas", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of service calls that fail (half of them for good).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Sagas in flight at once.",
)
@click.option(
    "--choreography",
    is_flag=True,
    help="The order choreography instead: one process per service, a tracker following it.",
)
@click.option("--broker", default=None, help="With --choreography: amqp:// or nats:// URL.")
def demo(
    store_url: str | None,
    sagas: int,
    fail_rate: float,
    seed: int,
    concurrency: int,
    choreography: bool,
    broker: str | None,
) -> None:
    """Run N order-fulfilment sagas against fake services that fail at the given rate
    (with --choreography: N orders through the order choreography's services)."""
    url = resolve_store_url(store_url)
    if choreography or broker is not None:
        if not choreography:
            raise UsageProblem("--broker goes with --choreography")
        from saga_fsm.cli._choreography import choreography_demo

        choreography_demo(url, broker, sagas, fail_rate, seed)
        return
    console.print(f"store: {url}")
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        finals = run_async(lambda: run_demo(url, sagas, fail_rate, seed, concurrency, progress))
    elapsed = time.perf_counter() - started

    by_state: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    compensated: Counter[str] = Counter()
    for final in finals:
        by_state[final.state] += 1
        retried[final.state] += sum(
            1 for r in final.steps if r.attempts > 1 or r.compensation_attempts > 1
        )
        compensated[final.state] += sum(
            1 for r in final.steps if r.status is StepStatus.COMPENSATED
        )
    table = Table(
        "final state", "sagas", "retried steps", "compensated steps", title="order_fulfillment"
    )
    for state in sorted(by_state):
        table.add_row(
            state_text(state), str(by_state[state]), str(retried[state]), str(compensated[state])
        )
    table.add_row(
        "[bold]total[/]", str(sagas), str(sum(retried.values())), str(sum(compensated.values()))
    )
    console.print(table)
    console.print(f"{sagas} sagas in {elapsed:.2f}s ({sagas / elapsed:.0f} sagas/s)")

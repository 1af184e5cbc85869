"""``demo``: many order-fulfilment sagas against flaky in-process fake services."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from importlib.util import find_spec

import click
from attrs import define, field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from saga_fsm._orchestrator import Orchestrator
from saga_fsm._snapshot import Snapshot, StepStatus
from saga_fsm.cli._app import (
    UsageProblem,
    exit_with,
    main,
    resolve_store_url,
    run_async,
    store_option,
)
from saga_fsm.cli._params import MAX_CONCURRENCY, FiniteFloat, count
from saga_fsm.cli._render import console, state_text
from saga_fsm.examples import order_fulfillment
from saga_fsm.examples._fakes import services
from saga_fsm.stores import MemoryStore, open_store
from saga_fsm.stores.url import redact_url, url_scheme


@define
class Tally:
    """What the summary needs of each finished saga, kept as counts: memory stays bounded
    by the sagas in flight however many run."""

    by_state: Counter[str] = field(factory=Counter)
    retried: Counter[str] = field(factory=Counter)
    compensated: Counter[str] = field(factory=Counter)
    example_id: dict[str, str] = field(factory=dict)

    def add(self, final: Snapshot) -> None:
        self.by_state[final.state] += 1
        self.retried[final.state] += sum(
            1 for r in final.steps if r.attempts > 1 or r.compensation_attempts > 1
        )
        self.compensated[final.state] += sum(
            1 for r in final.steps if r.status is StepStatus.COMPENSATED
        )
        self.example_id.setdefault(final.state, final.saga_id)


async def run_demo(
    store_url: str,
    sagas: int,
    fail_rate: float,
    seed: int,
    concurrency: int,
    progress: Progress | None,
) -> Tally:
    """Run ``sagas`` sagas, ``concurrency`` at a time: that many runners take the next
    number until none is left, so only the sagas in flight exist at once."""
    services.configure(fail_rate=fail_rate, seed=seed)
    try:
        return await _run_demo(store_url, sagas, seed, concurrency, progress)
    finally:
        # The fake services are process-wide: whatever runs next in this process (a
        # test, ``check`` of an example) gets them as reliable as they started.
        services.configure()


async def _run_demo(
    store_url: str, sagas: int, seed: int, concurrency: int, progress: Progress | None
) -> Tally:
    definition = order_fulfillment.definition
    task = progress.add_task("sagas", total=sagas) if progress else None
    numbers = iter(range(sagas))
    step_names = [step.name for step in definition.steps]
    tally = Tally()
    async with open_store(store_url) as store:
        orchestrator = Orchestrator(store, [definition])

        async def runner() -> None:
            for n in numbers:
                order_id = f"order-{seed}-{n}"
                order = {"order_id": order_id, "amount": 10 + n % 90, "quantity": 1 + n % 3}
                final = await orchestrator.run(definition, order, correlation_id=order_id)
                tally.add(final)
                services.forget(final.saga_id, step_names)
                if isinstance(store, MemoryStore):
                    # Nothing outlives this process in memory://: keep only what is in flight.
                    store.discard(final.saga_id)
                if progress is not None and task is not None:
                    progress.advance(task)

        await asyncio.gather(*(runner() for _ in range(min(concurrency, sagas))))
    return tally


def next_steps(tally: Tally, url: str, store_given: bool) -> str:
    """What to try next, with a real id from this run."""
    if url_scheme(url) == "memory":
        return (
            "These sagas lived in memory:// and are gone with this process;"
            " run the demo without --store to keep them and look around."
        )
    saga_id = tally.example_id.get("compensated") or next(iter(tally.example_id.values()))
    store = f" --store {redact_url(url)}" if store_given else ""
    ref = "saga_fsm.examples.order_fulfillment"
    return "\n".join(
        [
            "Try next:",
            f"  saga-fsm ls{store}",
            f"  saga-fsm show {saga_id}{store}",
            f"  saga-fsm diagram {ref} --instance {saga_id}{store} -o run.png",
            f"  saga-fsm check {ref}"
            + ("" if find_spec("hypothesis") else "   # after: pip install 'saga-fsm[testing]'"),
        ]
    )


@main.command("demo")
@store_option
@click.option("--sagas", type=count(), default=50, show_default=True)
@click.option(
    "--fail-rate",
    type=FiniteFloat(0, 1),
    default=0.2,
    show_default=True,
    help="Share of service calls that fail (half of them for good).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--concurrency",
    type=count(maximum=MAX_CONCURRENCY),
    default=16,
    show_default=True,
    help="Sagas in flight at once.",
)
@click.option(
    "--choreography",
    is_flag=True,
    help="The order choreography instead: one process per service, a tracker following it.",
)
@click.option(
    "--remote",
    is_flag=True,
    help="Inventory, payment and shipping as three participant processes, by command and reply.",
)
@click.option(
    "--broker", default=None, help="With --choreography or --remote: amqp:// or nats:// URL."
)
@click.option(
    "--prefix",
    default=None,
    metavar="P",
    help="With --remote: every channel under P, apart from others on the same broker.",
)
def demo(
    store_url: str | None,
    sagas: int,
    fail_rate: float,
    seed: int,
    concurrency: int,
    choreography: bool,
    remote: bool,
    broker: str | None,
    prefix: str | None,
) -> None:
    """Run N order-fulfilment sagas against fake services that fail at the given rate
    (with --choreography: N orders through the order choreography's services; with
    --remote: N orders through three participant processes, over the store's database
    or --broker)."""
    url = resolve_store_url(store_url)
    if choreography and remote:
        raise UsageProblem("choose one of --choreography and --remote")
    if remote:
        from saga_fsm.cli._remote_demo import remote_demo

        exit_with(1 if remote_demo(url, broker, prefix, sagas, seed, concurrency) else 0)
        return
    if prefix is not None:
        raise UsageProblem("--prefix goes with --remote")
    if choreography or broker is not None:
        if not choreography:
            raise UsageProblem("--broker goes with --choreography or --remote")
        from saga_fsm.cli._choreography import choreography_demo

        choreography_demo(url, broker, sagas, fail_rate, seed)
        return
    console.print(f"store: {redact_url(url)}")
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tally = run_async(lambda: run_demo(url, sagas, fail_rate, seed, concurrency, progress))
    elapsed = time.perf_counter() - started

    table = Table(
        "final state", "sagas", "retried steps", "compensated steps", title="order_fulfillment"
    )
    for state in sorted(tally.by_state):
        table.add_row(
            state_text(state),
            str(tally.by_state[state]),
            str(tally.retried[state]),
            str(tally.compensated[state]),
        )
    table.add_row(
        "[bold]total[/]",
        str(sagas),
        str(sum(tally.retried.values())),
        str(sum(tally.compensated.values())),
    )
    console.print(table)
    console.print(f"{sagas} sagas in {elapsed:.2f}s ({sagas / elapsed:.0f} sagas/s)")
    # Plain text, never wrapped: these lines are meant to be pasted.
    click.echo(next_steps(tally, url, store_given=store_url is not None))

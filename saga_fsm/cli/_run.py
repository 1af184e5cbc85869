"""``run``: start one saga and drive it to the end."""

from __future__ import annotations

import click

from saga_fsm._loading import load_definition
from saga_fsm._orchestrator import Orchestrator
from saga_fsm._snapshot import Snapshot
from saga_fsm.cli._app import (
    UsageProblem,
    definition_ref,
    echo_json,
    exit_with,
    main,
    parse_json_object,
    resolve_store_url,
    run_async,
    store_option,
)
from saga_fsm.cli._render import print_snapshot, saga_json
from saga_fsm.stores import open_store


@main.command("run")
@click.argument("ref")
@click.option("--data", default="{}", metavar="JSON", help="The saga data, a JSON object.")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the final snapshot as JSON.")
def run(ref: str, data: str, store_url: str | None, as_json: bool) -> None:
    """Start one saga of REF and run it to the end.

    REF is a definition file (.toml/.yaml/.json), package.module:attribute, or a module
    holding exactly one definition. Exits 0 when the saga completed, 1 otherwise.
    """
    payload = parse_json_object(data, "--data")
    definition = load_definition(ref)
    remote = [s.name for s in definition.steps if s.remote]
    if remote:
        # Its replies come to workers: this command would stop at the first remote step.
        raise UsageProblem(
            f"{definition.name} has remote steps ({', '.join(remote)}): start it with"
            " saga-fsm start and run saga-fsm worker (try saga-fsm demo --remote)"
        )
    url = resolve_store_url(store_url)

    async def go() -> Snapshot:
        async with open_store(url) as store:
            return await Orchestrator(store, [definition]).run(
                definition, payload, definition_ref=definition_ref(ref)
            )

    final = run_async(go)
    if as_json:
        echo_json(saga_json(final))
    else:
        print_snapshot(final)
    exit_with(0 if final.state == "completed" else 1)

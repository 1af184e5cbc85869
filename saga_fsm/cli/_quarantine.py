"""``unquarantine``: let workers claim a saga again once its row is fixed."""

from __future__ import annotations

import click

from saga_fsm._snapshot import Snapshot
from saga_fsm.cli._app import echo_json, main, resolve_store_url, run_async, store_option
from saga_fsm.cli._render import console, state_text
from saga_fsm.stores import open_store


@main.command("unquarantine")
@click.argument("saga_id")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def unquarantine(saga_id: str, store_url: str | None, as_json: bool) -> None:
    """Let workers claim a quarantined saga again (see ls --quarantined).

    Refused (exit 2, nothing changed) while its stored snapshot still cannot be
    decoded, or if it is not quarantined.
    """

    async def go() -> Snapshot:
        async with open_store(resolve_store_url(store_url)) as store:
            return await store.unquarantine(saga_id)

    snapshot = run_async(go)
    if as_json:
        echo_json({"id": snapshot.saga_id, "state": snapshot.state, "quarantined": False})
    else:
        console.print(f"saga {snapshot.saga_id}: {state_text(snapshot.state)}, claimable again")

"""``ui``: the operator console in the browser (the ``saga-fsm[ui]`` extra)."""

from __future__ import annotations

import os

import click

from saga_fsm._loading import load_definition
from saga_fsm.cli._app import UsageProblem, main, resolve_store_url, run_async, store_option
from saga_fsm.cli._dlq import broker_option, broker_url
from saga_fsm.messaging import open_transport
from saga_fsm.stores import open_store
from saga_fsm.stores.url import redact_url

TOKEN_ENV = "SAGA_FSM_UI_TOKEN"


@main.command("ui")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--token",
    default=None,
    metavar="T",
    help=f"Every request must present T (default: ${TOKEN_ENV}); required off loopback.",
)
@click.option("--read-only", is_flag=True, help="Show everything, offer and accept no action.")
@broker_option
def ui(
    refs: tuple[str, ...],
    store_url: str | None,
    url: str | None,
    host: str,
    port: int,
    token: str | None,
    read_only: bool,
) -> None:
    """Serve the operator console: overview, sagas, each saga's path, cancel/retry/resume,
    un-quarantine, and the dead letters of the broker (replay/drop).

    REFs are definitions to draw on the definitions page (and to drive sagas that
    recorded no reference to load theirs from)."""
    try:
        import uvicorn

        from saga_fsm.console import create_app, is_loopback
    except ImportError as err:
        raise UsageProblem(
            f"the console needs the ui extra ({err.name} is missing): pip install 'saga-fsm[ui]'"
        ) from None
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise UsageProblem(
            f"--host {host} is reachable from other machines: give --token or set {TOKEN_ENV}"
        )
    definitions = [load_definition(ref) for ref in refs]
    store = resolve_store_url(store_url)
    broker = broker_url(url, store)

    async def reachable() -> None:
        # A bad URL or a server that does not answer: one line and exit 2, before
        # anything listens (the app opens its own when it starts).
        async with open_store(store), open_transport(broker):
            pass

    run_async(reachable)
    app = create_app(
        store_url=store,
        broker_url=broker,
        definitions=definitions,
        token=token,
        read_only=read_only,
    )
    mode = " (read-only)" if read_only else ""
    click.echo(
        f"saga-fsm ui: http://{host}:{port}/ on {redact_url(store)},"
        f" dead letters on {redact_url(broker)}{mode}",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)

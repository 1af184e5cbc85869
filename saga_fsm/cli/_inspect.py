"""``ls``, ``show``, ``history``: read-only views of a store."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from click.core import ParameterSource
from rich.table import Table

from saga_fsm._codec import history_to_dict
from saga_fsm._errors import SnapshotDecodeError
from saga_fsm._fingerprint import short as fingerprint_short
from saga_fsm._loading import load_definition
from saga_fsm._registry import Definitions
from saga_fsm._snapshot import HistoryEntry, SagaStatus, Snapshot
from saga_fsm._versions import Unrunnable, find_unrunnable
from saga_fsm.cli._app import (
    UsageProblem,
    echo_json,
    main,
    resolve_store_url,
    run_async,
    store_option,
)
from saga_fsm.cli._ids import resolve_id, short_ids
from saga_fsm.cli._params import count, parse_duration
from saga_fsm.cli._render import (
    console,
    print_history,
    print_snapshot,
    saga_json,
    state_text,
)
from saga_fsm.stores import open_store
from saga_fsm.stores._protocol import Lease, QuarantinedSaga


def summary(snapshot: Snapshot) -> dict[str, object]:
    return {
        "id": snapshot.saga_id,
        "definition": snapshot.definition,
        "definition_version": snapshot.definition_version,
        "state": snapshot.state,
        "correlation_id": snapshot.correlation_id,
        "created_at": snapshot.created_at.isoformat(),
        "updated_at": snapshot.updated_at.isoformat(),
        "version": snapshot.version,
        "wake_at": snapshot.wake_at.isoformat() if snapshot.wake_at else None,
        # Only for child sagas, so the JSON of every other saga stays as it was.
        **({"parent_id": snapshot.parent_id} if snapshot.parent_id else {}),
        **({"parent_step": snapshot.parent_step} if snapshot.parent_step else {}),
    }


DEFAULT_LIMIT = 50
_STEP_STATUSES = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def check_state(state: str) -> None:
    """A status (``running``) or a whole state (``running:charge``); nothing else."""
    status, colon, step = state.partition(":")
    valid = status in set(SagaStatus) and (not colon or (status in _STEP_STATUSES and step))
    if not valid:
        statuses = ", ".join(SagaStatus)
        raise UsageProblem(
            f"--state {state!r} is not a saga state: use a status ({statuses})"
            " or running:STEP / compensating:STEP"
        )


@main.command("ls")
@click.argument("refs", nargs=-1, metavar="[REF ...]")
@store_option
@click.option("--state", default=None, help="A status (running) or a whole state (running:charge).")
@click.option("--definition", default=None, help="Only sagas of this definition name.")
@click.option(
    "--parent",
    default=None,
    metavar="ID",
    help="Only the child sagas this saga started (its id, or a unique start of it).",
)
@click.option(
    "--limit",
    type=count(),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Show the newest N (and say how many more there are).",
)
@click.option("--stuck", is_flag=True, help="Only unfinished sagas with no transition lately.")
@click.option(
    "--older-than",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="With --stuck: no transition for this long (90s, 5m, 2h, 1d).",
)
@click.option(
    "--quarantined", is_flag=True, help="Only sagas set aside because they cannot be decoded."
)
@click.option(
    "--unrunnable",
    is_flag=True,
    help="With REF...: unfinished or parked sagas whose version and table no REF serves.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_sagas(
    ctx: click.Context,
    refs: tuple[str, ...],
    store_url: str | None,
    state: str | None,
    definition: str | None,
    parent: str | None,
    limit: int,
    stuck: bool,
    older_than: str,
    quarantined: bool,
    unrunnable: bool,
    as_json: bool,
) -> None:
    """List the newest saga instances, oldest of them first, with short unique ids.

    With --unrunnable REF...: the unfinished or parked sagas that workers serving these
    definitions will never run (their version is not among them, or they are pinned to
    another table of it), each with the reason."""
    if unrunnable or refs:
        if not (unrunnable and refs):
            raise UsageProblem(
                "--unrunnable takes the definitions: saga-fsm ls --unrunnable REF..."
            )
        if quarantined or state is not None or stuck or parent is not None:
            raise UsageProblem("--unrunnable takes no --quarantined, --state, --stuck or --parent")
        list_unrunnable(resolve_store_url(store_url), refs, definition, as_json)
        return
    if quarantined:
        if state is not None or definition is not None or stuck or parent is not None:
            raise UsageProblem("--quarantined takes no --state, --definition, --stuck or --parent")
        list_quarantined(resolve_store_url(store_url), limit, as_json)
        return
    if not stuck and ctx.get_parameter_source("older_than") is not ParameterSource.DEFAULT:
        raise UsageProblem("--older-than only goes with --stuck")
    if state is not None:
        check_state(state)
    cutoff = datetime.now(UTC) - parse_duration(older_than) if stuck else None

    async def fetch() -> tuple[list[Snapshot | SnapshotDecodeError], int, dict[str, str]]:
        async with open_store(resolve_store_url(store_url), create=False) as store:
            parent_id = None if parent is None else await resolve_id(store, parent)
            # A saga parked in failed waits for an operator on purpose: it is not stuck.
            total = await store.count(
                state=state,
                definition=definition,
                updated_before=cutoff,
                unfinished=stuck,
                parent=parent_id,
            )
            newest = await store.list(
                state=state,
                definition=definition,
                updated_before=cutoff,
                unfinished=stuck,
                parent=parent_id,
                limit=limit,
                newest_first=True,
            )
            found = newest[::-1]
            ids = [str(s.saga_id) for s in found]
            short = {} if as_json else await short_ids(store, ids)
        return found, total - len(found), short

    snapshots, more, short = run_async(fetch)
    warn_undecodable(snapshots)
    not_shown = f"{more} older saga(s) not shown: use --limit N to see more" if more else ""
    if as_json:
        if not_shown:
            click.echo(f"saga-fsm: {not_shown}", err=True)
        echo_json([listed(s) for s in snapshots])
        return
    table = Table()
    # Never cut, never wrapped: an id is shown only as much as it can be pasted back.
    table.add_column("id", no_wrap=True, min_width=max(map(len, short.values()), default=2))
    for column in ("definition", "state", "updated"):
        table.add_column(column)
    for s in snapshots:
        if isinstance(s, SnapshotDecodeError):
            saga_id = str(s.saga_id)
            table.add_row(short.get(saga_id, saga_id), "?", "[bold red]undecodable[/]", s.reason)
            continue
        table.add_row(
            short[s.saga_id],
            f"{s.definition} v{s.definition_version}",
            state_text(s.state),
            s.updated_at.isoformat(timespec="seconds"),
        )
    console.print(table)
    console.print(f"{len(snapshots)} saga(s)" + (f"; {not_shown}" if not_shown else ""))


def listed(item: Snapshot | SnapshotDecodeError) -> dict[str, object]:
    """A listed saga as JSON; a row that cannot be decoded: its id and the reason."""
    if isinstance(item, SnapshotDecodeError):
        return {"id": item.saga_id, "error": item.reason}
    return summary(item)


def warn_undecodable(items: list[Snapshot | SnapshotDecodeError]) -> None:
    bad = [item for item in items if isinstance(item, SnapshotDecodeError)]
    if bad:
        click.echo(
            f"saga-fsm: warning: {len(bad)} saga(s) cannot be decoded and are listed as"
            f" undecodable (first: {bad[0]}); workers quarantine them"
            " (saga-fsm ls --quarantined)",
            err=True,
        )


def list_unrunnable(url: str, refs: tuple[str, ...], name: str | None, as_json: bool) -> None:
    """``ls --unrunnable REF...``."""
    definitions = Definitions(load_definition(ref) for ref in refs)

    async def fetch() -> list[Unrunnable]:
        async with open_store(url, create=False) as store:
            return await find_unrunnable(store, definitions, names=None if name is None else [name])

    found = run_async(fetch)
    if as_json:
        echo_json(
            [
                summary(u.snapshot)
                | {"definition_fingerprint": u.snapshot.definition_fingerprint, "reason": u.reason}
                for u in found
            ]
        )
        return
    table = Table("id", "definition", "table", "state", "reason")
    for u in found:
        s = u.snapshot
        table.add_row(
            s.saga_id,
            f"{s.definition} v{s.definition_version}",
            fingerprint_short(s.definition_fingerprint),
            state_text(s.state),
            u.reason,
        )
    console.print(table)
    console.print(
        f"{len(found)} unrunnable saga(s): register the version they need with a worker,"
        " or move them with saga-fsm migrate"
    )


def list_quarantined(url: str, limit: int | None, as_json: bool) -> None:
    """``ls --quarantined``: the sagas workers set aside, and why."""

    async def fetch() -> list[QuarantinedSaga]:
        async with open_store(url, create=False) as store:
            return await store.list_quarantined(limit=limit)

    found = run_async(fetch)
    if as_json:
        echo_json(
            [
                {"id": q.saga_id, "quarantined_at": q.quarantined_at.isoformat(), "error": q.reason}
                for q in found
            ]
        )
        return
    table = Table("id", "quarantined", "reason")
    for q in found:
        table.add_row(q.saga_id, q.quarantined_at.isoformat(timespec="seconds"), q.reason)
    console.print(table)
    console.print(f"{len(found)} quarantined saga(s); fix a row, then: saga-fsm unquarantine ID")


@main.command("show")
@click.argument("saga_id", metavar="ID")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def show(saga_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one saga's snapshot (ID may be any unique prefix)."""

    async def fetch() -> tuple[Snapshot, Lease | None]:
        async with open_store(resolve_store_url(store_url), create=False) as store:
            full_id = await resolve_id(store, saga_id)
            return await store.load(full_id), await store.lease(full_id)

    snapshot, lease = run_async(fetch)
    if as_json:
        echo_json(saga_json(snapshot, lease))
    else:
        print_snapshot(snapshot, lease)


@main.command("history")
@click.argument("saga_id", metavar="ID")
@store_option
@click.option("--json", "as_json", is_flag=True, help='Print {"id": ..., "transitions": [...]}.')
def history(saga_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one saga's transitions, oldest first (ID may be any unique prefix)."""

    async def fetch() -> tuple[str, list[HistoryEntry]]:
        async with open_store(resolve_store_url(store_url), create=False) as store:
            full_id = await resolve_id(store, saga_id)
            return full_id, await store.history(full_id)

    full_id, entries = run_async(fetch)
    if as_json:
        echo_json({"id": full_id, "transitions": [history_to_dict(e) for e in entries]})
    else:
        print_history(entries)

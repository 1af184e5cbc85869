"""``ls``, ``show``, ``history``: read-only views of a store."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table

from saga_fsm._codec import history_to_dict, snapshot_to_dict
from saga_fsm._errors import SnapshotDecodeError
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.cli._app import (
    UsageProblem,
    echo_json,
    main,
    resolve_store_url,
    run_async,
    store_option,
)
from saga_fsm.cli._render import console, print_history, print_snapshot, state_text
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
    }


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``5m``, ``2h``, ``1d`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise UsageProblem(f"--older-than {text!r} is not a duration like 90s, 5m, 2h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


@main.command("ls")
@store_option
@click.option("--state", default=None, help="A status (running) or a whole state (running:charge).")
@click.option("--definition", default=None, help="Only sagas of this definition name.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
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
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_sagas(
    store_url: str | None,
    state: str | None,
    definition: str | None,
    limit: int | None,
    stuck: bool,
    older_than: str,
    quarantined: bool,
    as_json: bool,
) -> None:
    """List saga instances, oldest first."""
    if quarantined:
        if state is not None or definition is not None or stuck:
            raise UsageProblem("--quarantined takes no --state, --definition or --stuck")
        list_quarantined(resolve_store_url(store_url), limit, as_json)
        return
    cutoff = datetime.now(UTC) - parse_duration(older_than) if stuck else None

    async def fetch() -> list[Snapshot | SnapshotDecodeError]:
        async with open_store(resolve_store_url(store_url)) as store:
            # A saga parked in failed waits for an operator on purpose: it is not stuck.
            return await store.list(
                state=state,
                definition=definition,
                limit=limit,
                updated_before=cutoff,
                unfinished=stuck,
            )

    snapshots = run_async(fetch)
    warn_undecodable(snapshots)
    if as_json:
        echo_json([listed(s) for s in snapshots])
        return
    table = Table("id", "definition", "state", "updated")
    for s in snapshots:
        if isinstance(s, SnapshotDecodeError):
            table.add_row(str(s.saga_id), "?", "[bold red]undecodable[/]", s.reason)
            continue
        table.add_row(
            s.saga_id,
            f"{s.definition} v{s.definition_version}",
            state_text(s.state),
            s.updated_at.isoformat(timespec="seconds"),
        )
    console.print(table)
    console.print(f"{len(snapshots)} saga(s)")


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


def list_quarantined(url: str, limit: int | None, as_json: bool) -> None:
    """``ls --quarantined``: the sagas workers set aside, and why."""

    async def fetch() -> list[QuarantinedSaga]:
        async with open_store(url) as store:
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
@click.argument("saga_id")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def show(saga_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one saga's snapshot."""

    async def fetch() -> tuple[Snapshot, Lease | None]:
        async with open_store(resolve_store_url(store_url)) as store:
            return await store.load(saga_id), await store.lease(saga_id)

    snapshot, lease = run_async(fetch)
    if as_json:
        # The store's columns beside the snapshot: its version and who drives it.
        echo_json(
            snapshot_to_dict(snapshot)
            | {
                "version": snapshot.version,
                "lease_owner": lease.owner if lease else None,
                "lease_expires_at": lease.expires_at.isoformat() if lease else None,
            }
        )
    else:
        print_snapshot(snapshot, lease)


@main.command("history")
@click.argument("saga_id")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the transitions as a JSON array.")
def history(saga_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one saga's transitions, oldest first."""

    async def fetch() -> list[HistoryEntry]:
        async with open_store(resolve_store_url(store_url)) as store:
            return await store.history(saga_id)

    entries = run_async(fetch)
    if as_json:
        echo_json([history_to_dict(e) for e in entries])
    else:
        print_history(entries)

"""Rich tables for snapshots and histories."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from saga_fsm._codec import snapshot_to_dict
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores._protocol import Lease

console = Console()

_STATE_STYLE = {
    "completed": "green",
    "compensated": "yellow",
    "failed": "bold red",
    "running": "cyan",
    "compensating": "magenta",
    "pending": "dim",
}


def state_text(state: str) -> str:
    style = _STATE_STYLE.get(state.partition(":")[0], "")
    return f"[{style}]{state}[/]" if style else state


def saga_json(snapshot: Snapshot, lease: Lease | None = None) -> dict[str, object]:
    """The whole snapshot as ``show --json`` and ``run --json`` print it, its id called
    ``id`` as in every other command's JSON, with the store's columns beside it: its
    version and who drives it."""
    encoded = snapshot_to_dict(snapshot)
    return {
        "id": encoded.pop("saga_id"),
        **encoded,
        "version": snapshot.version,
        "lease_owner": lease.owner if lease else None,
        "lease_expires_at": lease.expires_at.isoformat() if lease else None,
    }


def print_snapshot(snapshot: Snapshot, lease: Lease | None = None) -> None:
    console.print(
        f"saga [bold]{snapshot.saga_id}[/]  {snapshot.definition} v{snapshot.definition_version}"
        f"  state {state_text(snapshot.state)}  version {snapshot.version}"
    )
    if lease is not None:
        console.print(f"leased by {lease.owner} until {lease.expires_at.isoformat()}")
    if snapshot.correlation_id:
        console.print(f"correlation id: {snapshot.correlation_id}")
    if snapshot.parent_id:
        console.print(f"child of: {snapshot.parent_id} (step {snapshot.parent_step})")
    if snapshot.definition_fingerprint:
        console.print(f"table: {snapshot.definition_fingerprint[:12]}")
    if snapshot.failure:
        console.print(f"failure: {snapshot.failure}")
    if snapshot.wake_at:
        console.print(f"wake at: {snapshot.wake_at.isoformat()}")
    table = Table("step", "status", "attempts", "undo attempts", "error")
    for record in snapshot.steps:
        table.add_row(
            record.name,
            record.status.value,
            str(record.attempts),
            str(record.compensation_attempts),
            str(record.error) if record.error else "",
        )
        for branch in record.branches or ():
            # A parallel group's branches, each at its own state, under the group.
            shown = "joined" if branch.state == "running:_join" else branch.state
            table.add_row(f"  {record.name}/{branch.key}", f"[dim]{shown}[/]", "", "", "")
            for step in branch.steps:
                if step.name == "_join" or step.status.value in ("pending", "skipped"):
                    continue
                table.add_row(
                    f"    {step.name}",
                    step.status.value,
                    str(step.attempts),
                    str(step.compensation_attempts),
                    str(step.error) if step.error else "",
                )
    console.print(table)
    console.print_json(data=snapshot.data)


def print_history(entries: list[HistoryEntry]) -> None:
    table = Table("#", "at", "trigger", "from", "to", "detail")
    for n, entry in enumerate(entries, 1):
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items())
        table.add_row(
            str(n),
            entry.at.isoformat(timespec="milliseconds"),
            entry.trigger,
            entry.from_state,
            state_text(entry.to_state),
            detail,
        )
    console.print(table)

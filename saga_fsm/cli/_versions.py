"""``check-definitions`` and ``migrate``: versions of a definition, released and moved."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from saga_fsm._errors import MigrationRefused
from saga_fsm._fingerprint import short
from saga_fsm._loading import load_definition
from saga_fsm._registry import Definitions
from saga_fsm._versions import (
    Migrated,
    changed_tables,
    lock_entries,
    migrate_sagas,
    read_lock,
    write_lock,
)
from saga_fsm.cli._app import (
    UsageProblem,
    echo_json,
    exit_with,
    main,
    resolve_store_url,
    run_async,
    store_option,
)
from saga_fsm.cli._ids import resolve_id
from saga_fsm.cli._params import count
from saga_fsm.stores import open_store

EXIT_CHANGED = 1
DEFAULT_LOCK = "saga_definitions.lock"


def load_all(refs: tuple[str, ...], command: str) -> Definitions:
    if not refs:
        raise UsageProblem(f"name the definitions: saga-fsm {command} ... REF [REF ...]")
    return Definitions(load_definition(ref) for ref in refs)


@main.command("check-definitions")
@click.argument("refs", nargs=-1, metavar="REF [REF ...]")
@click.option(
    "--lock",
    "lock_path",
    default=DEFAULT_LOCK,
    show_default=True,
    metavar="FILE",
    help="The lock file of released fingerprints (kept in version control).",
)
@click.option("--update", is_flag=True, help="Accept the tables as they are now.")
def check_definitions(refs: tuple[str, ...], lock_path: str, update: bool) -> None:
    """Fail (exit 1, one line per definition) when a released version's table changed
    without a version bump: its fingerprint differs from the one the lock records.

    Writes the lock when it is missing, adds versions it does not hold yet, and with
    --update records every given table as it is now (running sagas of a changed version
    are then left by the new workers: see saga-fsm ls --unrunnable)."""
    definitions = load_all(refs, "check-definitions")
    given = [definitions.get(name, version) for name, version in definitions.served]
    now = lock_entries(given)
    path = Path(lock_path)
    if not path.exists():
        write_lock(path, now)
        click.echo(f"wrote {path}: {len(now)} definition(s)")
        return
    locked = read_lock(path)
    problems = changed_tables(given, locked)
    if problems and not update:
        for line in problems:
            click.echo(line)
        click.echo(f"{len(problems)} released definition(s) changed (lock: {path})", err=True)
        exit_with(EXIT_CHANGED)
    added = sorted(key for key in now if key not in locked)
    changed = sorted(key for key in now if key in locked and locked[key] != now[key])
    if added or changed:
        write_lock(path, {**locked, **now})
    for name, version in added:
        click.echo(f"added {name} version {version}: {now[(name, version)]}")
    for name, version in changed:
        click.echo(
            f"updated {name} version {version}: {locked[(name, version)]} -> {now[(name, version)]}"
        )
    click.echo(f"{path}: {len(given)} definition(s) match the lock")


def _mapping(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, equals, new = pair.partition("=")
        if not equals or not old.strip() or not new.strip():
            raise UsageProblem(
                f"--state {pair!r}: expected OLD=NEW, e.g. running:charge=running:pay"
            )
        if old.strip() in mapping:
            raise UsageProblem(f"--state maps {old.strip()!r} twice")
        mapping[old.strip()] = new.strip()
    return mapping


@main.command("migrate")
@click.argument("name")
@click.argument("refs", nargs=-1, metavar="REF [REF ...]")
@click.option("--from", "from_version", type=count(), required=True, help="The version now.")
@click.option("--to", "to_version", type=count(), required=True, help="The version to move to.")
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename a state (repeatable): running:charge=running:charge_card also re-keys the"
    " step record charge as charge_card.",
)
@click.option(
    "--ids",
    "saga_ids",
    multiple=True,
    metavar="ID[,ID...]",
    help="Only these sagas (repeatable, comma-separated, unique prefixes); default: every"
    " pending, parked or waiting saga of NAME --from.",
)
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print what moved and what was left.")
def migrate_command(
    name: str,
    refs: tuple[str, ...],
    from_version: int,
    to_version: int,
    states: tuple[str, ...],
    saga_ids: tuple[str, ...],
    store_url: str | None,
    as_json: bool,
) -> None:
    """Move sagas of NAME from version --from to --to (a definition among REF...).

    Only sagas that wait move: pending, parked in failed, or between attempts; each move
    is recorded in the saga's history (trigger "migrate"). Every saga is checked first:
    a state the target lacks, a step that acted and has no counterpart, a step in flight
    or a live worker's lease refuses the whole migration (exit 1, one line per saga),
    and nothing is changed."""
    definitions = load_all(refs, f"migrate {name}")
    mapping = _mapping(states)
    typed = [i.strip() for value in saga_ids for i in value.split(",") if i.strip()]
    url = resolve_store_url(store_url)

    async def go() -> Migrated:
        async with open_store(url, create=False) as store:
            ids = [await resolve_id(store, i) for i in typed] if saga_ids else None
            return await migrate_sagas(
                store,
                definitions,
                name,
                from_version=from_version,
                to_version=to_version,
                state_map=mapping,
                ids=ids,
                now=datetime.now(UTC),
            )

    try:
        done = run_async(go)
    except MigrationRefused as refused:
        for saga_id, why in refused.reasons.items():
            click.echo(f"refused {saga_id}: {why}" if saga_id else f"refused: {why}")
        click.echo("migration refused: nothing was changed", err=True)
        exit_with(EXIT_CHANGED)
        return
    if as_json:
        echo_json(
            {
                "migrated": [
                    {"id": s.saga_id, "state": s.state, "version": s.definition_version}
                    for s in done.migrated
                ],
                "left": [{"id": i, "reason": why} for i, why in done.left],
            }
        )
        return
    for s in done.migrated:
        click.echo(
            f"moved {s.saga_id} to {name} v{to_version}"
            f" (table {short(s.definition_fingerprint)}): {s.state}"
        )
    for saga_id, why in done.left:
        click.echo(f"left {saga_id}: {why}")
    click.echo(f"{len(done.migrated)} saga(s) moved, {len(done.left)} left")

"""Numbered, append-only schema migrations, one folder of SQL files per database.

A file is named ``NNNN_what.sql``. Once released, a file is never edited: a schema
change is a new file with the next number. Each store records what it applied in a
``saga_fsm_migrations`` table and applies the rest, in order, once.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import NamedTuple

from saga_fsm._errors import StoreError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def load(dialect: str) -> tuple[Migration, ...]:
    """The migrations shipped for ``dialect`` (``"sqlite"`` or ``"postgres"``), in order.

    Numbering must run 1, 2, 3... without gaps, so a missing or misnamed file fails
    loudly here instead of silently skipping a schema change."""
    found = []
    for entry in resources.files(__name__).joinpath(dialect).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"saga_fsm {dialect} migrations are not numbered 1..n: {numbers}")
    return tuple(found)


def pending(known: tuple[Migration, ...], applied: set[int], where: str) -> list[Migration]:
    """The migrations still to apply; refuses a database migrated by a newer release,
    whose schema this code would misread."""
    newest = max(applied, default=0)
    if newest > len(known):
        raise StoreError(
            f"{where}: the database schema is at migration {newest}, but this saga_fsm release"
            f" only knows {len(known)}; upgrade saga_fsm"
        )
    return [m for m in known if m.version not in applied]

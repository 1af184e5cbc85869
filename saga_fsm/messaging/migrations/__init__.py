"""The message tables' own numbered, append-only migrations, one folder per database.

They are a sequence of their own, recorded in ``saga_fsm_messaging_migrations``, apart
from the saga store's: the message tables may live in the saga store's database (the
embedded broker) or in another, and either can be upgraded without the other.
Files are named ``NNNN_what.sql``; once released a file is never edited.
"""

from __future__ import annotations

from importlib import resources

from saga_fsm.stores.migrations import Migration, pending

__all__ = ["TABLE", "Migration", "load", "pending"]

TABLE = "saga_fsm_messaging_migrations"


def load(dialect: str) -> tuple[Migration, ...]:
    """The messaging migrations for ``dialect`` (``"sqlite"`` or ``"postgres"``), in order,
    numbered 1..n without gaps."""
    found = sorted(
        Migration(int(entry.name[:4]), entry.name[5:-4], entry.read_text(encoding="utf-8"))
        for entry in resources.files(__name__).joinpath(dialect).iterdir()
        if entry.name.endswith(".sql")
    )
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"saga_fsm messaging {dialect} migrations are not numbered 1..n")
    return tuple(found)

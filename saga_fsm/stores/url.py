"""Store URLs: one string (flag, env var, config) says where sagas live.

``memory://``, ``sqlite:///relative.db`` (three slashes: relative to the working
directory), ``sqlite:////absolute.db`` (four: absolute, as SQLAlchemy spells it),
``postgresql://...`` or ``postgres://...`` (handed to libpq as they are).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from saga_fsm._errors import InvalidStoreURL
from saga_fsm.stores._protocol import SagaStore
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.stores.sqlite import SqliteStore

DEFAULT_STORE_URL = "sqlite:///saga_fsm.db"
ENV_VAR = "SAGA_FSM_STORE"
ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db,"
    " postgresql://user@host:port/dbname"
)


def store_url_from_env() -> str:
    """``$SAGA_FSM_STORE`` if set (and not empty), else ``DEFAULT_STORE_URL``."""
    return os.environ.get(ENV_VAR) or DEFAULT_STORE_URL


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
    except ValueError:
        return url


def redact_url(url: str) -> str:
    """A store URL fit to show: any password replaced by ``***``."""
    return redact(url)


def _invalid(url: str, why: str) -> InvalidStoreURL:
    return InvalidStoreURL(f"invalid store URL {redact(url)!r} ({why}); use one of: {ACCEPTED}")


def sqlite_path(url: str) -> str:
    """The file a ``sqlite://`` URL names: ``sqlite:///a.db`` -> ``a.db``,
    ``sqlite:////tmp/a.db`` -> ``/tmp/a.db``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/"):
        raise _invalid(url, "a sqlite URL needs three slashes before a relative path")
    path = rest[1:]
    if not path or path.endswith("/"):
        raise _invalid(url, "no database file named")
    if "?" in path or "#" in path:
        raise _invalid(url, "sqlite URLs take no query or fragment")
    return path


async def _open(url: str) -> SagaStore:
    scheme = url.partition(":")[0].lower() if "://" in url else ""
    if scheme == "memory":
        if url.lower() != "memory://":
            raise _invalid(url, "memory:// takes no path")
        return MemoryStore()
    if scheme == "sqlite":
        return SqliteStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from saga_fsm.stores.postgres import PostgresStore  # psycopg only when used

        return await PostgresStore.open(url)
    raise _invalid(url, "unknown scheme")


@asynccontextmanager
async def open_store(url: str | None = None) -> AsyncIterator[SagaStore]:
    """Open the store ``url`` names (default: ``store_url_from_env()``) and close it
    on exit. Unknown or malformed URLs raise ``InvalidStoreURL`` before anything opens."""
    store = await _open(store_url_from_env() if url is None else url)
    try:
        yield store
    finally:
        await store.close()

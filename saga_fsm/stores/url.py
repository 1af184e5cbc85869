"""Store URLs: one string (flag, env var, config) says where sagas live.

``memory://``, ``sqlite:///relative.db`` (three slashes: relative to the working
directory), ``sqlite:////absolute.db`` (four: absolute, as SQLAlchemy spells it),
``postgresql://...`` or ``postgres://...`` (handed to libpq as they are).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from saga_fsm._errors import InvalidStoreURL, StoreError
from saga_fsm.stores._protocol import SagaStore
from saga_fsm.stores._secrets import redact_url as redact_url  # (public here)
from saga_fsm.stores._secrets import scrub
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.stores.sqlite import SqliteStore

DEFAULT_STORE_URL = "sqlite:///saga_fsm.db"
ENV_VAR = "SAGA_FSM_STORE"
ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db,"
    " postgresql://user@host:port/dbname"
)


def store_url_from_env() -> str:
    """``$SAGA_FSM_STORE`` if set, else ``DEFAULT_STORE_URL``. Set but empty is an error,
    never a silent fallback to the default."""
    url = os.environ.get(ENV_VAR)
    if url is None:
        return DEFAULT_STORE_URL
    if not url.strip():
        raise InvalidStoreURL(f"${ENV_VAR} is set but empty: unset it for {DEFAULT_STORE_URL}")
    return url


def _invalid(url: str, why: str) -> InvalidStoreURL:
    return InvalidStoreURL(f"invalid store URL {redact_url(url)!r} ({why}); use one of: {ACCEPTED}")


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


def url_scheme(url: str) -> str:
    """``memory``, ``sqlite``, ``postgresql`` (also for ``postgres://``), or ``""``."""
    scheme = url.partition(":")[0].lower() if "://" in url else ""
    return "postgresql" if scheme == "postgres" else scheme


async def _open(url: str, *, create: bool) -> SagaStore:
    scheme = url_scheme(url)
    if scheme == "memory":
        if url.lower() != "memory://":
            raise _invalid(url, "memory:// takes no path")
        return MemoryStore()
    if scheme == "sqlite":
        path = sqlite_path(url)
        if not create and not os.path.exists(path):
            raise StoreError(f"no such store file {path!r} ({redact_url(url)}); nothing created")
        return SqliteStore(path)
    if scheme in ("postgresql", "postgres"):
        from saga_fsm.stores.postgres import PostgresStore  # psycopg only when used

        return await PostgresStore.open(url)
    raise _invalid(url, "unknown scheme")


@asynccontextmanager
async def open_store(url: str | None = None, *, create: bool = True) -> AsyncIterator[SagaStore]:
    """Open the store ``url`` names (default: ``store_url_from_env()``) and close it
    on exit. Unknown or malformed URLs raise ``InvalidStoreURL`` before anything opens.
    ``create=False`` (for reading) refuses a SQLite file that does not exist instead of
    creating an empty one. Error messages never hold the URL's password."""
    url = store_url_from_env() if url is None else url
    if not url.strip():
        raise _invalid(url, "it is empty")
    try:
        store = await _open(url, create=create)
    except StoreError as err:
        message = scrub(str(err), url)
        if message == str(err):
            raise
        # The driver's error may quote the password: neither it nor its chain goes on.
        raise type(err)(message) from None
    try:
        yield store
    finally:
        await store.close()

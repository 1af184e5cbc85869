"""Store URLs: one string (flag, env var, config) says where sagas live.

``memory://``, ``sqlite:///relative.db`` (three slashes: relative to the working
directory), ``sqlite:////absolute.db`` (four: absolute, as SQLAlchemy spells it),
``postgresql://...`` or ``postgres://...`` (handed to libpq as they are).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

from saga_fsm._errors import InvalidStoreURL, StoreError
from saga_fsm.stores._protocol import SnapshotStore
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.stores.postgres import PostgresStore
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


# libpq keyword DSNs (``host=db password=s3cret``) and URL query parameters
# (``?password=s3cret``): the value, quoted or not, up to the next separator.
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (a store URL or a libpq keyword DSN, well-formed or not) with every password
    replaced by ``***``: the only form in which a store URL is ever shown."""
    redacted = _KEYWORD_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = redacted.partition("://")
    if not sep:
        return redacted
    try:
        parts = urlsplit(redacted)
        if parts.password is None:
            return redacted
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))
    except ValueError:
        # Malformed (``u:pw@[bad/x``): everything up to the last ``@`` may be credentials.
        userinfo, at, host = rest.rpartition("@")
        if not at or ":" not in userinfo:
            return redacted
        return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


def scrub(text: str, url: str) -> str:
    """``text`` (a message that may quote ``url`` or part of it) without its password."""
    for secret in _passwords(url):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def _passwords(url: str) -> list[str]:
    found = [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(url) if m.group(2)]
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    if ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    return [secret for secret in found if secret and secret != "***"]


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


async def _open(url: str, *, create: bool) -> SnapshotStore:
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
    if scheme == "postgresql":
        return await PostgresStore.open(url)
    raise _invalid(url, "unknown scheme")


@asynccontextmanager
async def open_store(
    url: str | None = None, *, create: bool = True
) -> AsyncIterator[SnapshotStore]:
    """Open the store ``url`` names (default: ``store_url_from_env()``) and close it
    on exit. Unknown or malformed URLs raise ``InvalidStoreURL`` before anything opens.
    ``create=False`` (for reading) refuses a SQLite file that does not exist instead of
    creating an empty one. Error messages never hold the URL's password."""
    url = store_url_from_env() if url is None else url
    if not url.strip():
        raise InvalidStoreURL(f"the store URL is empty; use one of: {ACCEPTED}")
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

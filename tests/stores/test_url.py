"""Store URLs: which store each form opens, and clear refusals for the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from psycopg.conninfo import conninfo_to_dict

from saga_fsm._errors import InvalidStoreURL, StoreError
from saga_fsm.stores import (
    DEFAULT_STORE_URL,
    MemoryStore,
    PostgresStore,
    SnapshotStore,
    SqliteStore,
    open_store,
)
from saga_fsm.stores.url import redact_url, sqlite_path, store_url_from_env


def opened(url: str | None) -> SnapshotStore:
    async def scenario() -> SnapshotStore:
        async with open_store(url) as store:
            assert await store.list() == []
            return store

    return asyncio.run(scenario())


def test_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_FSM_STORE", raising=False)
    assert store_url_from_env() == DEFAULT_STORE_URL == "sqlite:///saga_fsm.db"
    monkeypatch.setenv("SAGA_FSM_STORE", "memory://")
    assert store_url_from_env() == "memory://"
    assert isinstance(opened(None), MemoryStore)


def test_memory() -> None:
    assert isinstance(opened("memory://"), MemoryStore)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///saga_fsm.db", "saga_fsm.db"),
        ("sqlite:///data/sagas.db", "data/sagas.db"),
        ("sqlite:////var/lib/sagas.db", "/var/lib/sagas.db"),
    ],
)
def test_sqlite_paths_as_sqlalchemy_spells_them(url: str, path: str) -> None:
    assert sqlite_path(url) == path


def test_sqlite_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = opened("sqlite:///sagas.db")
    assert isinstance(store, SqliteStore)
    assert (tmp_path / "sagas.db").exists()


def test_sqlite_absolute(tmp_path: Path) -> None:
    store = opened(f"sqlite:///{tmp_path}/abs.db")  # tmp_path starts with "/": four slashes
    assert isinstance(store, SqliteStore)
    assert (tmp_path / "abs.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "saga_fsm.db",
        "mysql://user@host/db",
        "sqlite:",
        "sqlite://",
        "sqlite:///",
        "sqlite://relative.db",
        "sqlite:///dir/",
        "sqlite:///a.db?mode=ro",
        "memory://somewhere",
        "postgresql+psycopg://host/db",
    ],
)
def test_anything_else_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(InvalidStoreURL) as caught:
        opened(url)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(url) in message
    for form in ("memory://", "sqlite:///", "sqlite:////", "postgresql://"):
        assert form in message


def test_passwords_never_appear_in_messages() -> None:
    assert redact_url("mysql://bob:s3cret@db:3306/x") == "mysql://bob:***@db:3306/x"
    assert redact_url("postgresql://bob@db/x") == "postgresql://bob@db/x"
    with pytest.raises(InvalidStoreURL) as caught:
        opened("mysql://bob:s3cret@db/x")
    assert "s3cret" not in str(caught.value)


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres(postgres_dsn: str, scheme: str) -> None:
    params = conninfo_to_dict(postgres_dsn)
    host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
    user = quote(str(params.get("user", "postgres")), safe="")
    if params.get("password"):
        user += ":" + quote(str(params["password"]), safe="")
    query = urlencode({"options": params["options"]})
    url = f"{scheme}://{user}@{host}:{port}/{params.get('dbname', '')}?{query}"
    store = opened(url)
    assert isinstance(store, PostgresStore)
    assert store._pool.closed  # open_store closed what it opened


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:SECRETPW@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql://u:SECRETPW@[bad/x", "postgresql://u:***@[bad/x"),
        ("postgres://u:p%40SECRETPW@db/x?sslmode=require", "postgres://u:***@db/x?sslmode=require"),
        (
            "postgresql://db/x?password=SECRETPW&sslmode=x",
            "postgresql://db/x?password=***&sslmode=x",
        ),
        ("host=db password=SECRETPW user=u", "host=db password=*** user=u"),
        ("host=db password = 'SECRET PW' user=u", "host=db password = *** user=u"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("", ""),
    ],
)
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:SECRETPW@[bad/x",
        "host=127.0.0.1 port=1 password=SECRETPW",
        "postgresql://u:SECRETPW@127.0.0.1:1/x",
    ],
)
def test_store_errors_never_quote_the_password(url: str) -> None:
    async def scenario() -> None:
        async with open_store(url):
            pass

    with pytest.raises(StoreError) as raised:
        asyncio.run(scenario())
    assert "SECRETPW" not in str(raised.value)
    assert raised.value.__cause__ is None or "SECRETPW" not in str(raised.value.__cause__)


def test_an_empty_url_or_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidStoreURL, match="empty"):
        opened("  ")
    monkeypatch.setenv("SAGA_FSM_STORE", "")
    with pytest.raises(InvalidStoreURL, match="SAGA_FSM_STORE is set but empty"):
        store_url_from_env()


def test_reading_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_store(f"sqlite:///{tmp_path}/typo.db", create=False):
            pass

    with pytest.raises(StoreError, match="no such store file"):
        asyncio.run(scenario())
    assert not (tmp_path / "typo.db").exists()

"""The console's pages and actions through an ASGI test client, on a MemoryStore (and
once on PostgreSQL, for what must never appear on a page)."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from saga_fsm import MemoryStore, Orchestrator, StoreError
from saga_fsm.console import create_app, is_loopback
from saga_fsm.console._security import AUTH_COOKIE, HEADERS, safe_next
from saga_fsm.stores import SnapshotStore, open_store
from tests.cli import sagas

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about which httpx it prefers
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
EVIL = "<script>alert('owned')</script>"


class Shop:
    """A store with sagas in every interesting state, and a loop to reach it with."""

    def __init__(self, store: SnapshotStore | None = None) -> None:
        self.runner = asyncio.Runner()
        self.store = store or MemoryStore()
        orchestrator = Orchestrator(self.store, [sagas.completes, sagas.parks])
        self.completed = self.run(orchestrator.run(sagas.completes, {"n": 1})).saga_id
        self.parked = self.run(orchestrator.run(sagas.parks, {"n": 2})).saga_id
        self.pending = self.run(orchestrator.start(sagas.completes, {"note": EVIL})).saga_id

    def run(self, awaitable: Any) -> Any:
        async def wrap() -> Any:
            return await awaitable

        return self.runner.run(wrap())

    def state(self, saga_id: str) -> str:
        return str(self.run(self.store.load(saga_id)).state)


@pytest.fixture
def shop() -> Iterator[Shop]:
    shop = Shop()
    yield shop
    shop.runner.close()


def client(shop: Shop, **options: Any) -> TestClient:
    app = create_app(store=shop.store, definitions=[sagas.completes, sagas.parks], **options)
    return TestClient(app, follow_redirects=False)


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found[1]


def text_of(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert found, f"no #{element_id}"
    return found[1]


def test_overview_counts_by_state_and_links_the_inbox(shop: Shop) -> None:
    page = client(shop).get("/")
    assert page.status_code == 200
    assert re.search(r'id="inbox"><span class="n">1</span>', page.text)
    assert 'href="/sagas?state=failed"' in page.text
    assert 'href="/sagas?definition=completes&amp;state=completed"' in page.text
    assert ">3</span> sagas<" in page.text and ">3</span> started in the last hour" in page.text


def test_the_list_filters_from_the_url_and_pages_with_a_key(shop: Shop) -> None:
    web = client(shop)
    everything = web.get("/sagas").text
    assert everything.count('class="saga-link"') == 3
    failed = web.get("/sagas", params={"state": "failed"}).text
    assert re.findall(r'class="saga-link" href="/sagas/([^"]+)"', failed) == [shop.parked]
    assert 'name="state" value="failed"' in failed  # the form shows the filter it applied
    assert (
        web.get("/sagas", params={"id": shop.completed[:6], "definition": "completes"}).text.count(
            'class="saga-link"'
        )
        == 1
    )
    assert web.get("/sagas", params={"stuck": "0s"}).text.count('class="saga-link"') == 1


def test_pages_follow_each_other_without_repeats(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("saga_fsm.console._app.PAGE_SIZE", 1)
    web = client(shop)
    first = web.get("/sagas", params={"definition": "completes"}).text
    older = re.search(r'href="([^"]+)" id="next"', first)
    assert older and "definition=completes" in older[1]
    second = web.get(older[1].replace("&amp;", "&")).text
    ids = re.findall(r'class="saga-link" href="/sagas/([^"]+)"', first + second)
    assert sorted(ids) == sorted([shop.completed, shop.pending])
    assert 'id="next"' not in second


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ({"from": "yesterday"}, "filter from=&#39;yesterday&#39;: not a time"),
        ({"stuck": "soon"}, "filter stuck=&#39;soon&#39;: not a duration"),
        ({"after": "garbage!"}, "not a page position"),
    ],
)
def test_a_bad_filter_is_one_line_and_a_400(shop: Shop, query: dict[str, str], why: str) -> None:
    page = client(shop).get("/sagas", params=query)
    assert page.status_code == 400 and why in text_of(page.text, "problem")


def test_the_saga_page_escapes_data_and_draws_the_path(shop: Shop) -> None:
    page = client(shop).get(f"/sagas/{shop.pending}")
    assert page.status_code == 200
    assert (
        EVIL not in page.text and "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page.text
    )
    assert text_of(page.text, "state") == "pending"
    assert '<figure class="diagram" id="diagram"><svg' in page.text
    assert "#ffd54f" in page.text  # the current state, as the CLI draws it
    assert 'data-refresh="2"' in page.text  # it still moves: the page re-reads itself
    live = client(shop).get(f"/sagas/{shop.pending}", params={"part": "live"}).text
    assert "<html" not in live and 'id="state"' in live
    finished = client(shop).get(f"/sagas/{shop.completed}").text
    assert "data-refresh" not in finished and 'id="action-' not in finished


def test_the_saga_page_shows_the_lease_from_the_stores_columns(shop: Shop) -> None:
    assert 'id="lease"' not in client(shop).get(f"/sagas/{shop.pending}").text
    assert isinstance(shop.store, MemoryStore)
    leased = shop.run(
        shop.store.acquire(shop.pending, "worker-7", now=datetime.now(UTC), lease_seconds=60)
    )
    page = client(shop).get(f"/sagas/{shop.pending}").text
    assert text_of(page, "lease").startswith("worker-7 until ")
    assert f"<dd>{leased.version}</dd>" in page


def test_an_undecodable_saga_is_shown_with_its_error(shop: Shop) -> None:
    assert isinstance(shop.store, MemoryStore)
    shop.store._rows[shop.completed].encoded = '{"schema_version": 42}'
    web = client(shop)
    listed = web.get("/sagas").text
    assert (
        listed.count('class="saga-link"') == 3
        and "undecodable: unknown schema_version 42" in listed
    )
    page = web.get(f"/sagas/{shop.completed}")
    assert page.status_code == 200
    assert "unknown schema_version 42" in text_of(page.text, "decode-error")
    assert 'id="history"' in page.text


def test_an_unknown_saga_is_a_404(shop: Shop) -> None:
    assert client(shop).get("/sagas/nope").status_code == 404


def test_cancel_goes_through_a_confirmation_and_a_csrf_token(shop: Shop) -> None:
    web = client(shop)
    saga = web.get(f"/sagas/{shop.pending}").text
    assert f'href="/sagas/{shop.pending}/do/cancel"' in saga
    confirm = web.get(f"/sagas/{shop.pending}/do/cancel")
    assert (
        confirm.status_code == 200 and shop.state(shop.pending) == "pending"
    )  # GET acts on nothing

    refused = web.post(f"/sagas/{shop.pending}/do/cancel", data={})
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = web.post(f"/sagas/{shop.pending}/do/cancel", data={"csrf_token": "0" * 64})
    assert forged.status_code == 403 and shop.state(shop.pending) == "pending"

    done = web.post(f"/sagas/{shop.pending}/do/cancel", data={"csrf_token": csrf(confirm.text)})
    assert done.status_code == 303 and done.headers["location"].endswith("?done=cancel")
    assert shop.state(shop.pending) == "compensated"

    again = web.post(f"/sagas/{shop.pending}/do/cancel", data={"csrf_token": csrf(confirm.text)})
    assert again.status_code == 409
    assert "is not allowed in state &#39;compensated&#39;" in text_of(again.text, "refused")


def test_retry_of_a_parked_saga_runs_the_shared_operator_code(shop: Shop) -> None:
    web = client(shop)
    saga = web.get(f"/sagas/{shop.parked}").text
    assert 'id="action-retry"' in saga and 'id="action-cancel"' not in saga
    token = csrf(web.get(f"/sagas/{shop.parked}/do/retry").text)
    # The warehouse is still down: retried, the compensation fails again and parks it.
    assert web.post(f"/sagas/{shop.parked}/do/retry", data={"csrf_token": token}).status_code == 303
    assert shop.state(shop.parked) == "failed"
    assert (
        web.post(f"/sagas/{shop.parked}/do/explode", data={"csrf_token": token}).status_code == 404
    )


def test_read_only_hides_and_refuses_the_actions(shop: Shop) -> None:
    web = client(shop, read_only=True)
    saga = web.get(f"/sagas/{shop.pending}").text
    assert 'id="action-' not in saga and "read-only" in saga
    assert web.get(f"/sagas/{shop.pending}/do/cancel").status_code == 403
    token = csrf(client(shop).get(f"/sagas/{shop.pending}/do/cancel").text)
    assert (
        web.post(f"/sagas/{shop.pending}/do/cancel", data={"csrf_token": token}).status_code == 403
    )
    assert shop.state(shop.pending) == "pending"


def test_a_token_is_asked_by_the_login_form_or_a_bearer_header(shop: Shop) -> None:
    web = client(shop, token="s3cret")
    bounced = web.get("/sagas", params={"state": "failed"})
    assert bounced.status_code == 303
    assert bounced.headers["location"] == "/login?next=%2Fsagas%3Fstate%3Dfailed"
    assert web.get("/static/console.css").status_code == 200
    assert web.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert web.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200

    form = web.get("/login?next=/sagas").text
    wrong = web.post("/login?next=/sagas", data={"token": "guess", "csrf_token": csrf(form)})
    assert wrong.status_code == 401 and AUTH_COOKIE not in wrong.headers.get("set-cookie", "")
    right = web.post("/login?next=/sagas", data={"token": "s3cret", "csrf_token": csrf(form)})
    assert right.status_code == 303 and right.headers["location"] == "/sagas"
    cookie = right.cookies[AUTH_COOKIE]
    assert "s3cret" not in cookie and "samesite=strict" in right.headers["set-cookie"].lower()
    assert web.get("/sagas").status_code == 200  # the cookie now
    assert "s3cret" not in web.get("/sagas").text


def test_every_page_sends_the_security_headers(shop: Shop) -> None:
    page = client(shop).get("/")
    for name, value in HEADERS.items():
        assert page.headers[name] == value
    assert "samesite=strict" in page.headers["set-cookie"].lower()


def test_the_definitions_page_draws_each_definition(shop: Shop) -> None:
    page = client(shop).get("/definitions").text
    assert page.count("<svg") == 2 and "completes v1" in page and "parks v1" in page


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("/sagas?x=1", "/sagas?x=1"),
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        (None, "/"),
    ],
)
def test_login_only_sends_back_to_this_site(target: str | None, kept: str) -> None:
    assert safe_next(target) == kept


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.com", False),
    ],
)
def test_only_loopback_goes_without_a_token(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_page_shows_the_store_or_broker_url_or_its_password(postgres_dsn: str) -> None:
    params = conninfo_to_dict(postgres_dsn)
    options = quote(str(params.get("options", "")))
    conninfo = (  # trust auth: any password works
        f"postgresql://{params.get('user', 'postgres')}:hunter2-secret@{params.get('host')}:"
        f"{params.get('port', 5432)}/{params.get('dbname')}?options={options}"
    )

    async def one_saga() -> str:
        async with open_store(conninfo) as store:
            return (await Orchestrator(store).run(sagas.completes, {"n": 1})).saga_id

    saga_id = asyncio.run(one_saga())
    app = create_app(store_url=conninfo, broker_url=conninfo, definitions=[sagas.completes])
    paths = ("/", "/sagas", f"/sagas/{saga_id}", "/definitions", "/dlq?channel=shop.charge")
    with TestClient(app, follow_redirects=False) as web:
        pages = [web.get(p) for p in paths]
    assert [p.status_code for p in pages] == [200] * len(paths)
    assert saga_id in pages[1].text
    for page in pages:
        where = f"{params.get('host')}:{params.get('port', 5432)}/{params.get('dbname')}"
        for secret in ("hunter2", "postgresql:", "search_path", where, f"@{params.get('host')}"):
            assert secret not in page.text


class DownStore(MemoryStore):
    async def counts(self, where: Any = None) -> Any:
        raise StoreError("PostgreSQL ops@db.internal:5432/prod: counts failed: connection refused")


def test_a_store_that_does_not_answer_is_a_503_naming_no_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    web = TestClient(create_app(store=DownStore()), raise_server_exceptions=False)
    page = web.get("/")
    assert page.status_code == 503 and "the store did not answer" in page.text
    assert "db.internal" not in page.text
    assert "db.internal" in caplog.text  # the console's log says why

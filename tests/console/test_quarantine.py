"""Quarantined sagas in the console: the list's filter, the overview's count, the reason
on the saga page and un-quarantine behind a confirmation and a CSRF token."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from saga_fsm import MemoryStore
from tests.console.test_routes import EVIL, Shop, client, csrf, shop, text_of

__all__ = ["shop"]  # the fixture
AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def quarantined(shop: Shop, saga_id: str, reason: str = EVIL) -> None:
    shop.run(shop.store.quarantine(saga_id, reason, now=AT))


def is_quarantined(shop: Shop, saga_id: str) -> bool:
    return saga_id in {q.saga_id for q in shop.run(shop.store.list_quarantined())}


def test_the_list_filters_quarantined_sagas_and_the_overview_counts_them(shop: Shop) -> None:
    quarantined(shop, shop.parked)
    web = client(shop)
    overview = web.get("/").text
    assert re.search(
        r'href="/sagas\?quarantined=yes" id="quarantined"><span class="n">1<', overview
    )
    listed = web.get("/sagas", params={"quarantined": "yes"}).text
    assert re.findall(r'class="saga-link" href="/sagas/([^"]+)"', listed) == [shop.parked]
    assert 'name="quarantined" value="yes"' in listed
    others = web.get("/sagas", params={"quarantined": "no"}).text
    assert others.count('class="saga-link"') == 2 and shop.parked not in others
    bad = web.get("/sagas", params={"quarantined": "maybe"})
    assert bad.status_code == 400
    assert "filter quarantined=&#39;maybe&#39;: not yes or no" in text_of(bad.text, "problem")


def test_the_saga_page_shows_why_and_since_when_escaped(shop: Shop) -> None:
    quarantined(shop, shop.completed)
    page = client(shop).get(f"/sagas/{shop.completed}").text
    assert "Quarantined since 2024-05-01 12:30:00 UTC" in page
    assert EVIL not in page
    assert (
        text_of(page, "quarantine-reason") == "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"
    )
    assert 'id="quarantine"' not in client(shop).get(f"/sagas/{shop.pending}").text


def test_unquarantine_goes_through_a_confirmation_and_a_csrf_token(shop: Shop) -> None:
    quarantined(shop, shop.completed, "undecodable: unknown schema_version 42")
    web = client(shop)
    saga = web.get(f"/sagas/{shop.completed}").text
    assert f'href="/sagas/{shop.completed}/do/unquarantine"' in saga
    confirm = web.get(f"/sagas/{shop.completed}/do/unquarantine")
    assert confirm.status_code == 200 and is_quarantined(shop, shop.completed)
    url = f"/sagas/{shop.completed}/do/unquarantine"
    assert web.post(url, data={}).status_code == 403
    assert web.post(url, data={"csrf_token": "0" * 64}).status_code == 403
    assert is_quarantined(shop, shop.completed)

    done = web.post(url, data={"csrf_token": csrf(confirm.text)})
    assert done.status_code == 303 and done.headers["location"].endswith("?done=unquarantine")
    assert not is_quarantined(shop, shop.completed)
    after = web.get(done.headers["location"]).text
    assert text_of(after, "done") == "unquarantine: done."
    assert 'id="quarantine"' not in after and 'id="action-unquarantine"' not in after

    again = web.post(url, data={"csrf_token": csrf(confirm.text)})
    assert again.status_code == 409
    assert text_of(again.text, "refused") == f"refused: saga {shop.completed} is not quarantined"


def test_unquarantine_of_a_row_that_still_cannot_be_decoded_is_refused(shop: Shop) -> None:
    assert isinstance(shop.store, MemoryStore)
    shop.store._rows[shop.completed].encoded = '{"schema_version": 42}'
    quarantined(shop, shop.completed, "undecodable: unknown schema_version 42")
    web = client(shop)
    saga = web.get(f"/sagas/{shop.completed}").text
    assert 'id="decode-error"' in saga and 'id="action-unquarantine"' in saga
    token = csrf(web.get(f"/sagas/{shop.completed}/do/unquarantine").text)
    refused = web.post(f"/sagas/{shop.completed}/do/unquarantine", data={"csrf_token": token})
    assert refused.status_code == 409
    assert "unknown schema_version 42" in text_of(refused.text, "refused")
    assert is_quarantined(shop, shop.completed)


def test_read_only_hides_and_refuses_unquarantine(shop: Shop) -> None:
    quarantined(shop, shop.completed)
    web = client(shop, read_only=True)
    saga = web.get(f"/sagas/{shop.completed}").text
    assert 'id="quarantine"' in saga and 'id="action-' not in saga
    token = csrf(client(shop).get(f"/sagas/{shop.completed}/do/unquarantine").text)
    url = f"/sagas/{shop.completed}/do/unquarantine"
    assert web.post(url, data={"csrf_token": token}).status_code == 403
    assert is_quarantined(shop, shop.completed)

"""The dead-letter pages on an in-process broker: a channel's list, one letter with its
headers and payload escaped, replay and drop behind a confirmation and a CSRF token."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga_fsm.console import create_app
from saga_fsm.messaging import (
    Headers,
    Message,
    MessageKind,
    TransportError,
    connect_transport,
    open_transport,
)
from saga_fsm.messaging.memory import MemoryDeadLetters, MemoryTransport
from saga_fsm.stores import open_store
from tests.console.test_routes import EVIL, Shop, TestClient, client, csrf, shop, text_of

__all__ = ["shop"]  # the fixture
CHANNEL = "shop.charge"


class Broker:
    """An in-process broker with one command dead-lettered by its consumer, and one
    poison message (not an envelope) the subscription set aside by itself."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.transport: MemoryTransport = shop.run(connect_transport("memory://"))  # type: ignore[assignment]
        self.parked = Message(
            CHANNEL, MessageKind.COMMAND, {"note": EVIL}, Headers(saga_id=shop.pending, step=EVIL)
        )
        self.transport.broker.put(CHANNEL, "poison-1", EVIL)
        shop.run(self.park())

    async def park(self) -> None:
        subscription = await self.transport.subscribe(CHANNEL)
        await self.transport.publish(self.parked)
        delivery = await subscription.receive(timeout=5)
        assert delivery is not None and delivery.message == self.parked
        await delivery.dead_letter(f"no such sku {EVIL}")
        await subscription.close()

    def letters(self) -> list[str]:
        return [d.message_id for d in self.shop.run(self.transport.dead_letters.list(CHANNEL))]

    def web(self, **options: object) -> TestClient:
        app = create_app(store=self.shop.store, dead_letters=self.transport.dead_letters, **options)  # type: ignore[arg-type]
        return TestClient(app, follow_redirects=False)


@pytest.fixture
def broker(shop: Shop) -> Iterator[Broker]:
    broker = Broker(shop)
    yield broker
    shop.run(broker.transport.close())


def test_a_channel_lists_its_dead_letters_escaped(broker: Broker) -> None:
    web = broker.web()
    assert 'href="/dlq"' in web.get("/").text
    ask = web.get("/dlq").text
    assert 'id="channel-form"' in ask and 'id="letters"' not in ask
    page = web.get("/dlq", params={"channel": CHANNEL}).text
    assert sorted(broker.letters()) == sorted(["poison-1", broker.parked.message_id])
    assert page.count('class="letter-link"') == 2
    assert f'href="/dlq/{CHANNEL}/{broker.parked.message_id}"' in page
    assert f'href="/sagas/{broker.shop.pending}"' in page
    assert EVIL not in page and "no such sku &lt;script&gt;" in page
    assert "(undecodable)" in page
    bad = web.get("/dlq", params={"channel": "no spaces"})
    assert bad.status_code == 400 and "invalid channel" in text_of(bad.text, "problem")


def test_a_dead_letter_shows_its_headers_reason_and_payload_escaped(broker: Broker) -> None:
    web = broker.web()
    page = web.get(f"/dlq/{CHANNEL}/{broker.parked.message_id}")
    assert page.status_code == 200 and EVIL not in page.text
    escaped = "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"
    assert text_of(page.text, "reason") == f"no such sku {escaped}"
    assert f"&#34;step&#34;: &#34;{escaped}&#34;" in text_of(page.text, "headers")
    assert f"&#34;note&#34;: &#34;{escaped}&#34;" in text_of(page.text, "payload")
    poison = web.get(f"/dlq/{CHANNEL}/poison-1").text
    assert EVIL not in poison and text_of(poison, "body") == escaped
    assert web.get(f"/dlq/{CHANNEL}/nope").status_code == 404


def test_replay_goes_through_a_confirmation_and_a_csrf_token(broker: Broker) -> None:
    web = broker.web()
    url = f"/dlq/{CHANNEL}/{broker.parked.message_id}/do/replay"
    assert f'href="{url}"' in web.get(f"/dlq/{CHANNEL}/{broker.parked.message_id}").text
    confirm = web.get(url)
    assert confirm.status_code == 200 and broker.parked.message_id in broker.letters()
    assert web.post(url, data={}).status_code == 403
    assert web.post(url, data={"csrf_token": "0" * 64}).status_code == 403
    assert broker.parked.message_id in broker.letters()

    done = web.post(url, data={"csrf_token": csrf(confirm.text)})
    assert done.status_code == 303
    after = web.get(done.headers["location"]).text
    assert text_of(after, "done") == f"replayed {broker.parked.message_id} on {CHANNEL}."
    assert broker.letters() == ["poison-1"]
    assert broker.shop.run(take(broker.transport)) == broker.parked  # back on its channel
    gone = web.post(url, data={"csrf_token": csrf(confirm.text)})
    assert gone.status_code == 404 and "no dead letter" in text_of(gone.text, "problem")


async def take(transport: MemoryTransport) -> Message:
    subscription = await transport.subscribe(CHANNEL)
    delivery = await subscription.receive(timeout=5)
    assert delivery is not None
    await delivery.ack()
    await subscription.close()
    return delivery.message


def test_drop_forgets_the_letter_for_good(broker: Broker) -> None:
    web = broker.web()
    token = csrf(web.get(f"/dlq/{CHANNEL}/poison-1/do/drop").text)
    done = web.post(f"/dlq/{CHANNEL}/poison-1/do/drop", data={"csrf_token": token})
    assert done.status_code == 303 and broker.letters() == [broker.parked.message_id]
    assert "dropped poison-1 from shop.charge" in web.get(done.headers["location"]).text
    assert (
        web.post(f"/dlq/{CHANNEL}/poison-1/do/explode", data={"csrf_token": token}).status_code
        == 404
    )


def test_read_only_shows_the_letters_and_refuses_replay_and_drop(broker: Broker) -> None:
    web = broker.web(read_only=True)
    page = web.get(f"/dlq/{CHANNEL}/poison-1").text
    assert 'id="body"' in page and 'id="action-' not in page
    assert web.get(f"/dlq/{CHANNEL}/poison-1/do/drop").status_code == 403
    token = csrf(broker.web().get(f"/dlq/{CHANNEL}/poison-1/do/drop").text)
    assert (
        web.post(f"/dlq/{CHANNEL}/poison-1/do/drop", data={"csrf_token": token}).status_code == 403
    )
    assert "poison-1" in broker.letters()


def test_without_a_broker_there_are_no_dead_letter_pages(shop: Shop) -> None:
    web = client(shop)
    assert 'href="/dlq"' not in web.get("/").text
    missing = web.get("/dlq", params={"channel": CHANNEL})
    assert missing.status_code == 404 and "without a broker" in text_of(missing.text, "problem")


def test_the_broker_opens_with_the_app_from_its_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagas.db'}"  # the saga store is the broker too

    async def park() -> str:
        async with open_store(url):
            pass  # the store's schema
        sent = Message(CHANNEL, MessageKind.COMMAND, {"sku": "A-1"})
        async with open_transport(url) as transport:
            subscription = await transport.subscribe(CHANNEL)
            await transport.publish(sent)
            delivery = await subscription.receive(timeout=5)
            assert delivery is not None
            await delivery.dead_letter("no such sku")
            await subscription.close()
        return sent.message_id

    message_id = asyncio.run(park())
    app = create_app(store_url=url, broker_url=url)
    for _ in range(2):  # stopped, the app closes both; started again, it opens them again
        with TestClient(app) as web:
            page = web.get("/dlq", params={"channel": CHANNEL}).text
        assert message_id in page and "no such sku" in page and "sagas.db" not in page


class DownDeadLetters(MemoryDeadLetters):
    async def list(self, channel: str, *, limit: int = 100) -> list[object]:
        raise TransportError("amqp", "ops:hunter2@mq.internal:5672: connection refused")


def test_a_broker_that_does_not_answer_is_a_503_naming_no_server(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(store=shop.store, dead_letters=DownDeadLetters(MemoryTransport().broker))
    page = TestClient(app, raise_server_exceptions=False).get("/dlq", params={"channel": CHANNEL})
    assert page.status_code == 503 and "the broker did not answer" in page.text
    assert "mq.internal" not in page.text and "hunter2" not in page.text
    assert "mq.internal" in caplog.text

"""The README's alert: a chat message when a saga parks in failed, once, and never for a
saga that ends any other way."""

from __future__ import annotations

import asyncio

from saga_fsm import MemoryStore, Orchestrator
from saga_fsm.observability import ParkedAlert
from tests.observability.sagas import order


class FakeChat:
    def __init__(self) -> None:
        self.posts: list[tuple[str, str]] = []

    def post(self, *, channel: str, text: str) -> None:
        self.posts.append((channel, text))


def test_a_parked_saga_posts_to_the_channel_once() -> None:
    chat = FakeChat()
    alert = ParkedAlert(lambda text: chat.post(channel="#payments-oncall", text=text))
    orchestrator = Orchestrator(MemoryStore(), [order], observer=alert)

    async def go() -> list[str]:
        finals = [
            await orchestrator.run(order, data)
            for data in ({"pay": "ok"}, {"pay": "decline"}, {"pay": "decline", "warehouse": "down"})
        ]
        parked = finals[-1]
        # An operator retries; it parks again: a second post, about the second parking.
        again = await orchestrator.retry(parked.saga_id)
        again = await orchestrator.resume(again.saga_id)
        return [f.state for f in finals] + [again.state]

    assert asyncio.run(go()) == ["completed", "compensated", "failed", "failed"]
    assert len(chat.posts) == 2
    channel, text = chat.posts[0]
    assert channel == "#payments-oncall"
    assert "(order v1) parked in failed at compensating:reserve" in text
    assert "warehouse offline" in text

"""NATS JetStream through nats-py (``pip install 'saga-fsm[nats]'``).

One work-queue stream per channel prefix (the first token: ``inventory.reserve`` lives
in stream ``SAGA_FSM_inventory`` with subjects ``inventory`` and ``inventory.>``), one
durable pull consumer per channel, shared by every subscription to it (competing
consumers). Publishes wait for the stream's ack and carry ``Nats-Msg-Id``, so a message
re-published inside the stream's duplicate window is stored once. ``nack(delay)`` is
JetStream's nak with delay; a claim lasts the consumer's ``ack_wait``. The consumer's
``max_deliver`` is one above ``max_deliveries``: the subscription sees the extra
delivery, publishes the message to the dead-letter subject ``<channel>.$dead`` (same
stream, never matched by a consumer) with its reason, and terminates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from saga_fsm.messaging._envelope import Message, check_channel, message_to_json
from saga_fsm.messaging._errors import DeadLetterNotFound, TransportError
from saga_fsm.messaging._protocol import (
    DEFAULT_ACK_WAIT,
    DEFAULT_MAX_DELIVERIES,
    BaseSubscription,
    Capabilities,
    DeadLetter,
    Inbound,
    parse_dead_letter,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

_CONNECT_TIMEOUT = 10
_DUPLICATE_WINDOW = 120.0  # seconds JetStream remembers a Nats-Msg-Id
_FETCH_WAIT = 5.0  # longest single pull request when waiting without a timeout
_ID = "Saga-Fsm-Message-Id"
_REASON = "Saga-Fsm-Reason"
_DELIVERIES = "Saga-Fsm-Deliveries"


def stream_name(channel: str) -> str:
    return f"SAGA_FSM_{channel.split('.', 1)[0]}"


def dead_subject(channel: str) -> str:
    return f"{channel}.$dead"


def durable_name(channel: str) -> str:
    # Durable names hold no '.'; the digest keeps 'a.b' and 'a_b' apart.
    digest = hashlib.sha1(channel.encode()).hexdigest()[:8]
    return f"{channel.replace('.', '_')}-{digest}"


def _nats() -> Any:
    try:
        import nats
    except ImportError as err:  # pragma: no cover - the extra is part of .[test]
        raise TransportError(
            "nats", "nats-py is not installed: pip install 'saga-fsm[nats]'"
        ) from err
    return nats


@contextmanager
def _errors(where: str, action: str) -> Iterator[None]:
    """Driver errors never leave the transport raw: they become ``TransportError``."""
    import nats.errors

    try:
        yield
    except (nats.errors.Error, OSError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise TransportError(where, f"{action} failed: {text}") from err


@attrs.define(eq=False)
class _Settle:
    transport: JetStreamTransport
    channel: str
    msg: Msg
    message_id: str

    async def ack(self) -> None:
        with _errors(self.transport.where, "ack"):
            await self.msg.ack()

    async def nack(self, delay: float) -> None:
        with _errors(self.transport.where, "nak"):
            await self.msg.nak(delay=delay if delay > 0 else None)

    async def dead_letter(self, reason: str) -> None:
        meta = self.msg.metadata
        headers = {
            "Nats-Msg-Id": f"{self.message_id}:dead:{meta.sequence.stream}",
            _ID: self.message_id,
            _REASON: reason,
            _DELIVERIES: str(meta.num_delivered),
        }
        with _errors(self.transport.where, "dead-letter"):
            await self.transport.js.publish(
                dead_subject(self.channel), self.msg.data, headers=headers
            )
            await self.msg.term()


class JetStreamSubscription(BaseSubscription):
    def __init__(
        self,
        transport: JetStreamTransport,
        channel: str,
        max_deliveries: int,
        ack_wait: float,
        prefetch: int,
    ) -> None:
        super().__init__(channel, max_deliveries)
        self._transport = transport
        self._ack_wait = ack_wait
        self._prefetch = prefetch
        self._ready: deque[Msg] = deque()
        self._pull: Any = None

    async def start(self) -> None:
        nats = _nats()
        transport = self._transport
        stream = await transport.ensure_stream(self.channel)
        config = nats.js.api.ConsumerConfig(
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=self.max_deliveries + 1,
            filter_subject=self.channel,
        )
        with _errors(transport.where, f"subscribe to {self.channel}"):
            self._pull = await transport.js.pull_subscribe(
                self.channel, durable=durable_name(self.channel), stream=stream, config=config
            )

    async def _next(self, timeout: float | None) -> Inbound | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._ready:
            wait = _FETCH_WAIT if deadline is None else min(_FETCH_WAIT, deadline - loop.time())
            if wait <= 0:
                return None
            with _errors(self._transport.where, f"fetch from {self.channel}"):
                try:
                    fetched = await self._pull.fetch(self._prefetch, timeout=max(wait, 0.05))
                except TimeoutError:  # nats-py's own subclasses it: nothing came
                    continue
            self._ready.extend(fetched)
        msg = self._ready.popleft()
        message_id = (msg.headers or {}).get(_ID, "")
        settle = _Settle(self._transport, self.channel, msg, message_id)
        return Inbound(
            msg.data.decode(errors="replace"), message_id, msg.metadata.num_delivered, settle
        )

    async def close(self) -> None:
        # What was fetched and never settled comes back after ack_wait; hand it back now.
        while self._ready:
            msg = self._ready.popleft()
            try:
                await msg.nak()
            except Exception:  # connection gone: ack_wait returns them
                break
        if self._pull is not None:
            with contextlib.suppress(Exception):  # already gone with the connection
                await self._pull.unsubscribe()


class JetStreamDeadLetters:
    def __init__(self, transport: JetStreamTransport) -> None:
        self._transport = transport

    async def _scan(self, channel: str) -> list[tuple[int, DeadLetter]]:
        import nats.js.errors

        transport = self._transport
        stream = await transport.ensure_stream(check_channel(channel))
        found: list[tuple[int, DeadLetter]] = []
        seq = 1
        with _errors(transport.where, "browse dead letters"):
            while True:
                try:
                    raw = await transport.js.get_msg(
                        stream, seq=seq, subject=dead_subject(channel), next=True
                    )
                except nats.js.errors.NotFoundError:
                    return found
                headers = raw.headers or {}
                body = (raw.data or b"").decode(errors="replace")
                when = raw.time if isinstance(raw.time, datetime) else None
                assert raw.seq is not None  # a message read from a stream has one
                found.append(
                    (
                        raw.seq,
                        parse_dead_letter(
                            channel,
                            headers.get(_ID, ""),
                            headers.get(_REASON, "dead-lettered"),
                            int(headers.get(_DELIVERIES, 0)),
                            body,
                            when,
                        ),
                    )
                )
                seq = raw.seq + 1

    async def _find(self, channel: str, message_id: str) -> tuple[int, DeadLetter]:
        for seq, letter in await self._scan(channel):
            if letter.message_id == message_id:
                return seq, letter
        raise DeadLetterNotFound(channel, message_id)

    async def list(self, channel: str, *, limit: int = 100) -> list[DeadLetter]:
        return [letter for _, letter in await self._scan(channel)][:limit]

    async def show(self, channel: str, message_id: str) -> DeadLetter:
        return (await self._find(channel, message_id))[1]

    async def replay(self, channel: str, message_id: str) -> None:
        seq, letter = await self._find(channel, message_id)
        headers = {"Nats-Msg-Id": f"{message_id}:replay:{seq}", _ID: message_id}
        with _errors(self._transport.where, "replay dead letter"):
            await self._transport.js.publish(channel, letter.body.encode(), headers=headers)
        await self._delete(channel, seq)

    async def drop(self, channel: str, message_id: str) -> None:
        seq, _ = await self._find(channel, message_id)
        await self._delete(channel, seq)

    async def _delete(self, channel: str, seq: int) -> None:
        with _errors(self._transport.where, "delete dead letter"):
            await self._transport.js.delete_msg(stream_name(channel), seq)


class JetStreamTransport:
    name = "nats"
    capabilities = Capabilities(dedup_by_id=True)

    def __init__(
        self,
        client: Client,
        where: str,
        *,
        max_deliveries: int,
        ack_wait: float,
    ) -> None:
        self.client = client
        self.js: JetStreamContext = client.jetstream()
        self.where = where
        self.dead_letters = JetStreamDeadLetters(self)
        self._max_deliveries = max_deliveries
        self._ack_wait = ack_wait
        self._streams: set[str] = set()
        self._subscriptions: list[JetStreamSubscription] = []

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> JetStreamTransport:
        nats = _nats()
        parts = urlsplit(url)
        where = f"NATS {parts.hostname or 'localhost'}:{parts.port or 4222}"

        async def quiet(err: Exception) -> None:
            """nats-py reports connection trouble here; the client reconnects by itself."""

        with _errors(where, "connect"):
            client = await nats.connect(
                url,
                connect_timeout=_CONNECT_TIMEOUT,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                error_cb=quiet,
            )
        return cls(client, where, max_deliveries=max_deliveries, ack_wait=ack_wait)

    async def ensure_stream(self, channel: str) -> str:
        """The stream holding ``channel``, created if missing."""
        import nats.js.errors

        name = stream_name(channel)
        if name in self._streams:
            return name
        prefix = channel.split(".", 1)[0]
        api = _nats().js.api
        with _errors(self.where, f"create stream {name}"):
            try:
                await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(
                        name=name,
                        subjects=[prefix, f"{prefix}.>"],
                        retention=api.RetentionPolicy.WORK_QUEUE,
                        storage=api.StorageType.FILE,
                        duplicate_window=_DUPLICATE_WINDOW,
                    )
                except nats.js.errors.BadRequestError:
                    await self.js.stream_info(name)  # created meanwhile by someone else
        self._streams.add(name)
        return name

    async def publish(self, message: Message) -> None:
        await self.ensure_stream(message.channel)
        headers = {"Nats-Msg-Id": message.message_id, _ID: message.message_id}
        with _errors(self.where, f"publish to {message.channel}"):
            await self.js.publish(
                message.channel, message_to_json(message).encode(), headers=headers
            )

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> JetStreamSubscription:
        subscription = JetStreamSubscription(
            self, check_channel(channel), self._max_deliveries, self._ack_wait, prefetch
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        with contextlib.suppress(Exception):  # closing a dead connection
            await self.client.close()

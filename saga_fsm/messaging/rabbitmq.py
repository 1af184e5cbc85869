"""RabbitMQ through aio-pika (``pip install 'saga-fsm[amqp]'``).

One durable quorum queue per channel, fed by the default exchange; publishes wait for
the publisher confirm; consumers ack manually with a prefetch. Every channel has a
dead-letter queue ``<channel>:dead``: the subscription moves a poison message or one
delivered more than ``max_deliveries`` times there itself, with its reason in the
``x-saga-fsm-reason`` header, and the queue's own dead-letter exchange settings
(``x-delivery-limit`` one above) catch anything that slipped past (its reason is then
RabbitMQ's ``x-death``). The connection is robust: it reconnects with back-off and
declares its queues again.

RabbitMQ cannot redeliver a message later: ``nack(delay)`` holds the message for
``delay`` seconds and then returns it to the queue (a consumer that dies meanwhile
returns it at once). RabbitMQ keeps no record of message ids: a re-published message is
stored twice, and the consumer's inbox deduplicates. Dead letters are browsed by getting
messages without acking them and returning them after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from saga_fsm.messaging._envelope import Message, check_channel, message_to_json
from saga_fsm.messaging._errors import DeadLetterNotFound, InvalidTransportURL, TransportError
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
    from aio_pika.abc import (
        AbstractChannel,
        AbstractIncomingMessage,
        AbstractQueue,
        AbstractRobustConnection,
    )

_CONNECT_TIMEOUT = 10
# Transient refusals (a nacked publish, a consume the queue could not register) are
# tried again with back-off this many times in all, over about 10 seconds.
_PUBLISH_TRIES = _SUBSCRIBE_TRIES = 8
_MIN_BACKOFF, _MAX_BACKOFF = 0.1, 4.0
log = logging.getLogger("saga_fsm.messaging.rabbitmq")
_REASON = "x-saga-fsm-reason"
_DELIVERIES = "x-saga-fsm-deliveries"
_SCAN_LIMIT = 100_000  # dead letters looked through to find one by id


def connection_name() -> str:
    return f"saga_fsm {socket.gethostname()} pid {os.getpid()}"


def dead_queue(channel: str) -> str:
    return f"{channel}:dead"


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as err:  # pragma: no cover - the extra is part of .[test]
        raise TransportError(
            "amqp", "aio-pika is not installed: pip install 'saga-fsm[amqp]'"
        ) from err
    return aio_pika


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"RabbitMQ {parts.hostname or 'localhost'}:{parts.port or 5672}"


@contextmanager
def _errors(where: str, action: str) -> Iterator[None]:
    """Driver errors never leave the transport raw: they become ``TransportError``."""
    import aiormq

    try:
        yield
    except (aiormq.AMQPError, aiormq.ChannelInvalidStateError, OSError, TimeoutError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise TransportError(where, f"{action} failed: {text}") from err
    except RuntimeError as err:
        # aiormq's word for a connection the broker closed (RabbitMQ closes the whole
        # connection with INTERNAL_ERROR when a quorum queue's consumer died): the
        # robust connection reconnects, so it is an outage like any other.
        if "closed" not in str(err):
            raise
        raise TransportError(where, f"{action} failed: the connection was closed") from err


@contextmanager
def _refused(where: str, *kinds: type[BaseException]) -> Iterator[None]:
    """Wrong credentials are the URL's fault, not an outage: no back-off will fix them."""
    try:
        yield
    except TransportError as err:
        if isinstance(err.__cause__, kinds):
            raise InvalidTransportURL(
                f"{where}: login refused (check the URL's user and password)"
            ) from None
        raise


def _dead_reason(message: AbstractIncomingMessage) -> tuple[str, int]:
    headers = message.headers or {}
    reason = headers.get(_REASON)
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    if isinstance(reason, str):
        return reason, int(str(headers.get(_DELIVERIES, 0)))
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        why = death.get("reason")
        why = why.decode() if isinstance(why, bytes) else why
        return f"dead-lettered by RabbitMQ ({why})", int(str(headers.get("x-delivery-count", 0)))
    return "dead-lettered", 0


@attrs.define(eq=False)
class _Settle:
    transport: RabbitTransport
    channel: str
    incoming: AbstractIncomingMessage
    deliveries: int

    async def ack(self) -> None:
        with _errors(self.transport.where, "ack"):
            await self.incoming.ack()

    async def nack(self, delay: float) -> None:
        if delay <= 0:
            with _errors(self.transport.where, "nack"):
                await self.incoming.nack(requeue=True)
            return
        self.transport.later(delay, self.incoming)

    async def dead_letter(self, reason: str) -> None:
        headers = {_REASON: reason, _DELIVERIES: self.deliveries}
        await self.transport.send(
            dead_queue(self.channel), self.incoming.body, self.incoming.message_id, headers
        )
        with _errors(self.transport.where, "ack"):
            await self.incoming.ack()


class RabbitSubscription(BaseSubscription):
    def __init__(
        self, transport: RabbitTransport, channel: str, max_deliveries: int, prefetch: int
    ) -> None:
        super().__init__(channel, max_deliveries)
        self._transport = transport
        self._prefetch = prefetch
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._amqp_channel: AbstractChannel | None = None

    async def start(self) -> None:
        """Consume the channel's queue. A quorum queue whose Ra server is not answering
        for a moment (just after a consumer died, while the broker starts) makes
        RabbitMQ close the channel with INTERNAL_ERROR: try again on a fresh channel."""
        transport = self._transport
        backoff = _MIN_BACKOFF
        for attempt in range(1, _SUBSCRIBE_TRIES + 1):
            try:
                with _errors(transport.where, f"subscribe to {self.channel}"):
                    self._amqp_channel = await transport.connection.channel()
                    await self._amqp_channel.set_qos(prefetch_count=self._prefetch)
                    queue = await transport.declare(self._amqp_channel, self.channel)
                    await queue.consume(self._inbox.put, no_ack=False)
                return
            except TransportError as err:
                await self.close()
                if attempt == _SUBSCRIBE_TRIES:
                    raise
                log.warning("%s; subscribing again in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _next(self, timeout: float | None) -> Inbound | None:
        try:
            incoming = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return None
        # Quorum queues count returns in x-delivery-count (absent on the first delivery).
        deliveries = int(str((incoming.headers or {}).get("x-delivery-count", 0))) + 1
        settle = _Settle(self._transport, self.channel, incoming, deliveries)
        body = incoming.body.decode(errors="replace")
        return Inbound(body, incoming.message_id or "", deliveries, settle)

    async def close(self) -> None:
        # Closing the AMQP channel returns every unacked message to the queue.
        if self._amqp_channel is not None and not self._amqp_channel.is_closed:
            with contextlib.suppress(Exception):
                await self._amqp_channel.close()


class RabbitDeadLetters:
    def __init__(self, transport: RabbitTransport) -> None:
        self._transport = transport

    async def _browse(
        self, channel: str, limit: int, message_id: str | None = None
    ) -> tuple[AbstractChannel, list[AbstractIncomingMessage]]:
        """Unacked gets from the dead queue (up to ``limit``, or until ``message_id``);
        closing the returned AMQP channel puts them all back."""
        transport = self._transport
        check_channel(channel)
        with _errors(transport.where, "browse dead letters"):
            amqp_channel = await transport.connection.channel()
            try:
                await transport.declare(amqp_channel, channel)
                queue = await amqp_channel.get_queue(dead_queue(channel))
                got: list[AbstractIncomingMessage] = []
                while len(got) < limit:
                    incoming = await queue.get(no_ack=False, fail=False)
                    if incoming is None:
                        break
                    got.append(incoming)
                    if message_id is not None and incoming.message_id == message_id:
                        break
            except BaseException:
                await amqp_channel.close()
                raise
        return amqp_channel, got

    def _letter(self, channel: str, incoming: AbstractIncomingMessage) -> DeadLetter:
        reason, deliveries = _dead_reason(incoming)
        body = incoming.body.decode(errors="replace")
        return parse_dead_letter(
            channel, incoming.message_id or "", reason, deliveries, body, incoming.timestamp
        )

    async def list(self, channel: str, *, limit: int = 100) -> list[DeadLetter]:
        amqp_channel, got = await self._browse(channel, limit)
        with contextlib.suppress(Exception):
            await amqp_channel.close()
        return [self._letter(channel, incoming) for incoming in got]

    async def _take(self, channel: str, message_id: str, replay: bool) -> DeadLetter:
        amqp_channel, got = await self._browse(channel, _SCAN_LIMIT, message_id)
        try:
            found = got[-1] if got and got[-1].message_id == message_id else None
            if found is None:
                raise DeadLetterNotFound(channel, message_id)
            letter = self._letter(channel, found)
            if replay:
                await self._transport.send(channel, found.body, message_id, {})
            with _errors(self._transport.where, "settle dead letter"):
                await found.ack()
            return letter
        finally:
            with contextlib.suppress(Exception):
                await amqp_channel.close()

    async def show(self, channel: str, message_id: str) -> DeadLetter:
        amqp_channel, got = await self._browse(channel, _SCAN_LIMIT, message_id)
        with contextlib.suppress(Exception):
            await amqp_channel.close()
        if got and got[-1].message_id == message_id:
            return self._letter(channel, got[-1])
        raise DeadLetterNotFound(channel, message_id)

    async def replay(self, channel: str, message_id: str) -> None:
        await self._take(channel, message_id, replay=True)

    async def drop(self, channel: str, message_id: str) -> None:
        await self._take(channel, message_id, replay=False)


class RabbitTransport:
    name = "amqp"
    capabilities = Capabilities(dedup_by_id=False)

    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: AbstractChannel,
        where: str,
        *,
        max_deliveries: int,
    ) -> None:
        self.connection = connection
        self.where = where
        self.dead_letters = RabbitDeadLetters(self)
        self._publisher = publisher
        self._max_deliveries = max_deliveries
        self._declared: set[str] = set()
        self._subscriptions: list[RabbitSubscription] = []
        self._held: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        ack_wait: float = DEFAULT_ACK_WAIT,  # unused: RabbitMQ sees a consumer die
    ) -> RabbitTransport:
        import aiormq

        aio_pika = _aio_pika()
        where = _where(url)
        with (
            _refused(
                where,
                aiormq.exceptions.AuthenticationError,
                aiormq.exceptions.ProbableAuthenticationError,
            ),
            _errors(where, "connect"),
        ):
            connection = await aio_pika.connect_robust(
                url,
                timeout=_CONNECT_TIMEOUT,
                # What an operator sees in the management UI and rabbitmqctl.
                client_properties={"connection_name": connection_name()},
            )
            publisher = await connection.channel(publisher_confirms=True)
        return cls(connection, publisher, where, max_deliveries=max_deliveries)

    async def declare(self, amqp_channel: AbstractChannel, channel: str) -> AbstractQueue:
        """The channel's queue and its dead-letter queue, created if missing."""
        dead = dead_queue(channel)
        await amqp_channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "quorum"})
        queue = await amqp_channel.declare_queue(
            channel,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self._max_deliveries + 1,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
        self._declared.add(channel)
        return queue

    async def _exists(self, channel: str) -> bool:
        """Whether the channel's queue exists, as its consumers declared it (their
        ``max_deliveries`` may not be this publisher's: declaring it with other
        arguments would fail). A passive declare of a missing queue closes the AMQP
        channel it was made on, so it is made on a channel of its own."""
        import aiormq

        async with self.connection.channel() as probe:
            try:
                await probe.declare_queue(channel, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
        return True

    async def _ensure_queue(self, channel: str) -> None:
        """Declare the channel's queue unless it exists, on an AMQP channel of its own: a
        quorum queue whose Ra server does not answer in time closes the channel it is
        declared on with INTERNAL_ERROR, which must never be the publisher's. Tried again
        with back-off, like a subscribe."""
        import aiormq

        backoff = _MIN_BACKOFF
        for attempt in range(1, _SUBSCRIBE_TRIES + 1):
            try:
                with _errors(self.where, f"declare {channel}"):
                    if not await self._exists(channel):
                        async with self.connection.channel() as amqp_channel:
                            await self.declare(amqp_channel, channel)
                self._declared.add(channel)
                return
            except TransportError as err:
                # Other arguments than the queue was declared with: no wait will fix it.
                mismatch = isinstance(err.__cause__, aiormq.exceptions.ChannelPreconditionFailed)
                if mismatch or attempt == _SUBSCRIBE_TRIES:
                    raise
                log.warning("%s; declaring again in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def send(
        self, queue: str, body: bytes, message_id: str | None, headers: dict[str, Any]
    ) -> None:
        """Publish raw ``body`` to ``queue`` and wait for the broker's confirm."""
        import aiormq

        aio_pika = _aio_pika()
        backoff = _MIN_BACKOFF
        for attempt in range(1, _PUBLISH_TRIES + 1):
            try:
                with _errors(self.where, f"publish to {queue}"):
                    await self._publisher.default_exchange.publish(
                        aio_pika.Message(
                            body,
                            message_id=message_id,
                            headers=headers,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue,
                        mandatory=True,
                    )
                return
            except TransportError as err:
                # A quorum queue nacks what it cannot take now (its Ra server not
                # answering, a length limit with reject-publish): the same message again
                # later is harmless (consumers deduplicate by id); a return is final.
                nacked = isinstance(err.__cause__, aiormq.exceptions.DeliveryError) and isinstance(
                    err.__cause__.frame, aiormq.spec.Basic.Nack
                )
                if not nacked or attempt == _PUBLISH_TRIES:
                    raise
                log.warning("%s; publishing again in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def publish(self, message: Message) -> None:
        if message.channel not in self._declared:
            # A message routed to no queue would be dropped: the queue must exist first.
            await self._ensure_queue(message.channel)
        body = message_to_json(message).encode()
        await self.send(message.channel, body, message.message_id, {})

    def later(self, delay: float, incoming: AbstractIncomingMessage) -> None:
        async def requeue() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(Exception):  # channel gone: RabbitMQ returned it already
                await incoming.nack(requeue=True)

        task = asyncio.create_task(requeue())
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> RabbitSubscription:
        subscription = RabbitSubscription(
            self, check_channel(channel), self._max_deliveries, prefetch
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        for task in list(self._held):
            task.cancel()
        for subscription in self._subscriptions:
            await subscription.close()
        with contextlib.suppress(Exception):
            await self.connection.close()

"""``Orchestrator``: for scripts and single processes, a client and an executor over
one store and one set of definitions. An API process needs only ``SagaClient``, a
worker only ``SagaExecutor`` (inside a ``Worker``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from saga_fsm._client import SagaClient
from saga_fsm._clock import Clock
from saga_fsm._definition import SagaDefinition
from saga_fsm._executor import DEFAULT_LEASE_SECONDS, SagaExecutor, default_worker_id
from saga_fsm._flow import CompiledSaga
from saga_fsm._registry import Definitions
from saga_fsm._remote import DEFAULT_REPLY_CHANNEL
from saga_fsm._snapshot import Snapshot
from saga_fsm.observability._observer import NO_OBSERVER, Observer
from saga_fsm.stores._protocol import SagaStore

__all__ = ["DEFAULT_LEASE_SECONDS", "Orchestrator", "default_worker_id", "run_sync"]


class Orchestrator(SagaExecutor):
    """A ``SagaExecutor`` that is also a ``SagaClient`` (start, start_many, cancel,
    retry), sharing its store, clock and definitions.

    Steps run at least once: a step is persisted as ``running`` (attempt number and
    idempotency key) before its action is called, and a crash before the result is
    persisted means the action runs again with the same key. State transitions happen
    exactly once. Participants deduplicate on ``StepContext.idempotency_key``.
    """

    def __init__(
        self,
        store: SagaStore,
        definitions: Definitions | Iterable[SagaDefinition] = (),
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        observer: Observer = NO_OBSERVER,
        reply_channel: str = DEFAULT_REPLY_CHANNEL,
    ) -> None:
        super().__init__(
            store,
            definitions,
            clock=clock,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            observer=observer,
            reply_channel=reply_channel,
        )
        self.client = SagaClient(
            store,
            self.definitions,
            clock=self.clock,
            observer=observer,
            reply_channel=reply_channel,
        )

    def register(self, definition: SagaDefinition) -> CompiledSaga:
        return self.definitions.register(definition)

    def compiled_for(self, snapshot: Snapshot) -> CompiledSaga:
        return self.definitions.compiled_for(snapshot)

    async def start(
        self,
        definition: SagaDefinition | str,
        data: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        saga_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        definition_ref: str | None = None,
    ) -> Snapshot:
        """``SagaClient.start``: a new ``pending`` saga for a worker to run."""
        return await self.client.start(
            definition,
            data,
            version=version,
            saga_id=saga_id,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            definition_ref=definition_ref,
        )

    async def start_many(
        self,
        definition: SagaDefinition | str,
        data: Sequence[Mapping[str, Any]],
        *,
        version: int | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        definition_ref: str | None = None,
    ) -> list[Snapshot]:
        """``SagaClient.start_many``: all or nothing, in one transaction."""
        return await self.client.start_many(
            definition,
            data,
            version=version,
            idempotency_keys=idempotency_keys,
            definition_ref=definition_ref,
        )

    async def cancel(self, saga_id: str) -> Snapshot:
        """``SagaClient.cancel``."""
        return await self.client.cancel(saga_id)

    async def retry(self, saga_id: str) -> Snapshot:
        """``SagaClient.retry``."""
        return await self.client.retry(saga_id)

    async def signal(
        self, saga_id: str, signal: str, data: Mapping[str, Any] | None = None
    ) -> Snapshot:
        """``SagaClient.signal``: ends the saga's wait; ``resume`` (or a worker) carries
        the saga on."""
        return await self.client.signal(saga_id, signal, data)


def run_sync(
    definition: SagaDefinition,
    data: Mapping[str, Any] | None = None,
    *,
    store: str | None = None,
    **options: Any,
) -> Snapshot:
    """Blocking convenience for scripts: open the store at URL ``store`` (default: the
    ``SAGA_FSM_STORE`` environment variable, else ``sqlite:///saga_fsm.db``), run one
    saga to the end, close the store, return the final snapshot."""
    from saga_fsm.stores.url import open_store, store_url_from_env

    async def go() -> Snapshot:
        async with open_store(store or store_url_from_env()) as opened:
            return await SagaExecutor(opened, [definition]).run(definition, data, **options)

    return asyncio.run(go())

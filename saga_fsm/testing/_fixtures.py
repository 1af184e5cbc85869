"""The user's side of a test: initial saga data, the world (fakes, test databases) set
up and torn down around every example, and the store the sagas are persisted in.

Hypothesis runs many examples; each one gets a fresh world from the setup hook, so a
failure found in example 40 replays identically when it is shrunk."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, TypeAlias, TypeVar

from attrs import frozen
from hypothesis.strategies import SearchStrategy

from saga_fsm._codec import dumps
from saga_fsm._errors import InvalidArgumentType
from saga_fsm.stores import MemoryStore, SnapshotStore, open_store
from saga_fsm.stores.url import redact_url

T = TypeVar("T")

DataSource: TypeAlias = (
    Mapping[str, Any] | Callable[..., Mapping[str, Any]] | SearchStrategy[Mapping[str, Any]] | None
)
"""Initial saga data: a mapping, a factory ``() -> mapping`` or ``(world) -> mapping``,
or a hypothesis strategy of mappings (then the data is explored too)."""

Setup: TypeAlias = Callable[[], Any]
"""Builds the world for one example: a function returning it, a (async) generator
function yielding it (code after ``yield`` is the teardown), or a function returning a
(async) context manager."""


async def enter_setup(stack: AsyncExitStack, setup: Setup | None) -> Any:
    """Run ``setup`` for one example; its teardown is pushed on ``stack``."""
    if setup is None:
        return None
    if inspect.isasyncgenfunction(setup):
        return await stack.enter_async_context(asynccontextmanager(setup)())
    if inspect.isgeneratorfunction(setup):
        return stack.enter_context(contextmanager(setup)())
    value = setup()
    if inspect.isawaitable(value):
        value = await value
    if hasattr(value, "__aenter__") and hasattr(value, "__aexit__"):
        return await stack.enter_async_context(value)
    if hasattr(value, "__enter__") and hasattr(value, "__exit__"):
        return stack.enter_context(value)
    return value


def _takes_world(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters
    )


def make_data(
    source: DataSource, world: Any, draw: Callable[[SearchStrategy[Any]], Any]
) -> dict[str, Any]:
    """One saga's initial data from ``source``; checked like ``Orchestrator.start`` does."""
    if source is None:
        value: Any = {}
    elif isinstance(source, SearchStrategy):
        value = draw(source)
    elif isinstance(source, Mapping):
        value = source
    elif callable(source):
        value = source(world) if _takes_world(source) else source()
    else:
        raise InvalidArgumentType(
            f"data must be a mapping, a factory or a strategy, got {source!r}"
        )
    if not isinstance(value, Mapping):
        raise InvalidArgumentType(f"the saga data must be a mapping, got {type(value).__name__}")
    payload = dict(value)
    try:
        dumps(payload)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentType(f"the saga data must be JSON-serialisable: {err}") from None
    return payload


@frozen
class StoreFactory:
    """Opens the store a test persists sagas in, inside whichever event loop is running.

    A factory rather than a store because a PostgreSQL pool belongs to the loop that
    opened it, and the harness (like ``asyncio.run`` in a sync test) runs its own loop.
    Every ``open()`` of one factory reaches the same data: the same memory store, the
    same SQLite file, the same PostgreSQL schema.
    """

    name: str
    opener: Callable[[], AbstractAsyncContextManager[SnapshotStore]]

    def open(self) -> AbstractAsyncContextManager[SnapshotStore]:
        """``async with factory.open() as store: ...``"""
        return self.opener()

    def run(self, work: Callable[[SnapshotStore], Awaitable[T]]) -> T:
        """For sync tests: open the store in a new event loop, await ``work(store)``."""

        async def go() -> T:
            async with self.open() as store:
                return await work(store)

        return asyncio.run(go())

    @classmethod
    def from_url(cls, url: str) -> StoreFactory:
        """A store URL (``memory://``, ``sqlite:///…``, ``postgresql://…``); a
        ``memory://`` factory opens a new, empty store each time."""
        return cls(redact_url(url), lambda: open_store(url))

    @classmethod
    def of(cls, store: SnapshotStore, name: str | None = None) -> StoreFactory:
        """An existing store that works in any loop (memory, SQLite); never closed here."""

        @asynccontextmanager
        async def opener() -> AsyncIterator[SnapshotStore]:
            yield store

        return cls(name or type(store).__name__, opener)


def fresh_memory() -> StoreFactory:
    """The default: a new ``MemoryStore`` for every example."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[SnapshotStore]:
        yield MemoryStore()

    return StoreFactory("memory", opener)


def store_factory(store: SnapshotStore | StoreFactory | str | None) -> StoreFactory:
    if store is None:
        return fresh_memory()
    if isinstance(store, StoreFactory):
        return store
    if isinstance(store, str):
        return StoreFactory.from_url(store)
    if all(hasattr(store, name) for name in ("create", "save", "load", "history")):
        return StoreFactory.of(store)
    raise InvalidArgumentType(
        f"store must be a SnapshotStore, a StoreFactory or a store URL, got {store!r}"
    )

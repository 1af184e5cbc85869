"""``dlq ls|show|replay|drop``: the dead letters of a channel, on any transport."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, get_args

import click

from saga_fsm._codec import converter
from saga_fsm.cli._app import echo_json, main, run_async
from saga_fsm.cli._params import broker_option as named_broker_option
from saga_fsm.messaging import DeadLetter, DeadLetters, open_transport
from saga_fsm.stores.url import store_url_from_env

T = TypeVar("T")
BROKER_ENV = "SAGA_FSM_BROKER"
DeadLetterCommand = Literal["replay", "drop"]
DEAD_LETTER_COMMANDS: tuple[DeadLetterCommand, ...] = get_args(DeadLetterCommand)


def broker_url(url: str | None, store_url: str | None = None) -> str:
    """``--broker``, else ``$SAGA_FSM_BROKER``, else the saga store itself (the embedded
    broker: SQLite or PostgreSQL): ``store_url``, else ``$SAGA_FSM_STORE`` or the default."""
    return url or os.environ.get(BROKER_ENV) or store_url or store_url_from_env()


async def settle_dead_letter(
    dead: DeadLetters, command: DeadLetterCommand, channel: str, message_id: str
) -> str:
    """``replay`` or ``drop`` one dead letter, as ``dlq`` and the console both do it;
    the line saying what was done. ``DeadLetterNotFound`` if it is not there."""
    if command == "replay":
        await dead.replay(channel, message_id)
        return f"replayed {message_id} on {channel}"
    await dead.drop(channel, message_id)
    return f"dropped {message_id} from {channel}"


def _with_dead_letters(url: str | None, act: Callable[[DeadLetters], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_transport(broker_url(url)) as transport:
            return await act(transport.dead_letters)

    return run_async(go)


def _encoded(letter: DeadLetter) -> dict[str, Any]:
    encoded: dict[str, Any] = converter.unstructure(letter)
    return encoded


def _settle(
    command: DeadLetterCommand, channel: str, message_id: str
) -> Callable[[DeadLetters], Awaitable[str]]:
    return lambda dead: settle_dead_letter(dead, command, channel, message_id)


broker_option = named_broker_option("url")


@main.group("dlq")
def dlq() -> None:
    """Dead letters: messages a consumer could not decode or gave up on, with why."""


@dlq.command("ls")
@click.argument("channel")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@broker_option
def ls(channel: str, limit: int, as_json: bool, url: str | None) -> None:
    """The dead letters of CHANNEL, oldest first."""
    letters = _with_dead_letters(url, lambda dead: dead.list(channel, limit=limit))
    if as_json:
        echo_json([_encoded(letter) for letter in letters])
        return
    for letter in letters:
        when = letter.dead_at.isoformat(timespec="seconds") if letter.dead_at else "-"
        click.echo(f"{letter.message_id}\t{letter.deliveries}\t{when}\t{letter.reason}")


@dlq.command("show")
@click.argument("channel")
@click.argument("message_id")
@broker_option
def show(channel: str, message_id: str, url: str | None) -> None:
    """One dead letter of CHANNEL, as JSON."""
    echo_json(_encoded(_with_dead_letters(url, lambda dead: dead.show(channel, message_id))))


@dlq.command("replay")
@click.argument("channel")
@click.argument("message_id")
@broker_option
def replay(channel: str, message_id: str, url: str | None) -> None:
    """Publish the dead letter on CHANNEL again (same message id) and forget it."""
    click.echo(_with_dead_letters(url, _settle("replay", channel, message_id)))


@dlq.command("drop")
@click.argument("channel")
@click.argument("message_id")
@broker_option
def drop(channel: str, message_id: str, url: str | None) -> None:
    """Forget the dead letter for good."""
    click.echo(_with_dead_letters(url, _settle("drop", channel, message_id)))

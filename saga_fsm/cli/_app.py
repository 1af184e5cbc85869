"""The click group, shared options and the error policy: bad input gets one line on
stderr and exit code 2, never a traceback."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from saga_fsm._errors import SagaError
from saga_fsm.stores import open_store
from saga_fsm.stores.url import ACCEPTED, store_url_from_env

T = TypeVar("T")

EXIT_BAD_INPUT = 2


class UsageProblem(click.ClickException):
    """Bad input: one line, exit 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"saga-fsm: error: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.BadParameter as err:
            raise UsageProblem(err.format_message()) from None
        except (SagaError, ValueError, OSError) as err:
            raise UsageProblem(
                str(err).splitlines()[0] if str(err) else type(err).__name__
            ) from None


@click.group(cls=_Group)
@click.version_option(package_name="saga-fsm")
def main() -> None:
    """saga_fsm: sagas as explicit state machines."""


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help="memory://, sqlite:///path.db or postgresql://… (default: $SAGA_FSM_STORE,"
        " else sqlite:///saga_fsm.db).",
    )(func)


def resolve_store_url(store_url: str | None) -> str:
    """``--store``, else ``$SAGA_FSM_STORE``, else the default; an empty one is refused."""
    if store_url is None:
        return store_url_from_env()
    if not store_url.strip():
        raise UsageProblem(f"--store is empty: give a URL ({ACCEPTED})")
    return store_url


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageProblem(f"{option} is not valid JSON: {err.msg} at position {err.pos}") from None
    if not isinstance(value, dict):
        raise UsageProblem(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def definition_ref(ref: str) -> str:
    """What a worker elsewhere can load a definition from: files by absolute path."""
    path = Path(ref)
    return str(path.resolve()) if path.is_file() else ref


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def exit_with(code: int) -> None:
    sys.exit(code)


__all__ = ["main", "open_store"]

# Register the commands (each module adds its own to ``main``).
from saga_fsm.cli import (  # noqa: E402
    _check,
    _demo,
    _diagram,
    _dlq,
    _inspect,
    _operate,
    _participant,
    _quarantine,
    _relay,
    _run,
    _ui,
    _versions,
)

del (
    _check,
    _demo,
    _diagram,
    _dlq,
    _inspect,
    _operate,
    _participant,
    _quarantine,
    _relay,
    _run,
    _ui,
    _versions,
)

"""The dead-letter pages: a channel's dead letters, one of them, replay and drop.

Replay and drop go through ``settle_dead_letter``, the function ``saga-fsm dlq`` runs,
behind the same confirmation and CSRF check as the saga actions. No transport can list
its channels, so the channel is asked for (and kept in the URL). No page names the
broker: its errors go to the log (``TransportError``: the 503 page).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from saga_fsm._codec import converter
from saga_fsm.cli._dlq import DEAD_LETTER_COMMANDS, DeadLetterCommand, settle_dead_letter
from saga_fsm.messaging import DeadLetterNotFound, DeadLetters, InvalidChannel, check_channel

if TYPE_CHECKING:
    from saga_fsm.console._app import Console

LETTERS_SHOWN = 100
_CONFIRM = {
    "replay": "Publish this message on its channel again (same message id) and forget the"
    " dead letter.",
    "drop": "Forget this dead letter for good: the message is lost.",
}


class DeadLetterPages:
    """The pages on one transport's dead letters, rendered by the console."""

    def __init__(self, console: Console, dead_letters: DeadLetters) -> None:
        self.console = console
        self.dead = dead_letters

    async def channel(self, request: Request) -> Response:
        channel = request.query_params.get("channel", "").strip()
        letters = None
        if channel:
            try:
                check_channel(channel)
            except InvalidChannel as err:
                return self.console.problem(request, 400, str(err))
            letters = await self.dead.list(channel, limit=LETTERS_SHOWN)
        done = request.query_params.get("done", "")
        return self.console.render(
            request,
            "dlq.html",
            channel=channel,
            letters=letters,
            shown=LETTERS_SHOWN,
            done=done[:200] if done else None,
        )

    async def letter(self, request: Request) -> Response:
        found = await self._letter(request)
        if isinstance(found, Response):
            return found
        return self.console.render(request, "dead_letter.html", **found)

    async def confirm(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        found = await self._letter(request)
        if isinstance(found, Response):
            return found
        return self.console.render(
            request, "dead_letter_confirm.html", command=command, what=_CONFIRM[command], **found
        )

    async def act(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        if not await self.console.guard.csrf_ok(request):
            return self.console.problem(
                request, 403, "refused: this form's CSRF token is missing or wrong; reload the page"
            )
        channel, message_id = _where(request)
        try:
            check_channel(channel)
            done = await settle_dead_letter(self.dead, command, channel, message_id)
        except InvalidChannel as err:
            return self.console.problem(request, 400, str(err))
        except DeadLetterNotFound as err:
            return self.console.problem(request, 404, str(err))
        return RedirectResponse("/dlq?" + urlencode({"channel": channel, "done": done}), 303)

    async def _letter(self, request: Request) -> dict[str, Any] | Response:
        channel, message_id = _where(request)
        try:
            check_channel(channel)
            letter = await self.dead.show(channel, message_id)
        except InvalidChannel as err:
            return self.console.problem(request, 400, str(err))
        except DeadLetterNotFound as err:
            return self.console.problem(request, 404, str(err))
        message = letter.message
        return {
            "letter": letter,
            "url": f"/dlq/{quote(channel, safe='')}/{quote(message_id, safe='')}",
            "headers": pretty_json(converter.unstructure(message.headers)) if message else None,
            "payload": pretty_json(message.payload) if message else None,
            "commands": [] if self.console.read_only else list(DEAD_LETTER_COMMANDS),
        }

    def _command(self, request: Request) -> DeadLetterCommand | Response:
        name = request.path_params["command"]
        if self.console.read_only:
            return self.console.problem(request, 403, "refused: this console is read-only")
        for command in DEAD_LETTER_COMMANDS:
            if name == command:
                return command
        return self.console.problem(request, 404, f"no such action {name!r}")


def dead_letter_routes(console: Callable[[], Console]) -> list[Route]:
    """The routes, each a 404 when the console was given no broker."""

    def serve(method: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            pages = console().dead_letters
            if pages is None:
                return console().problem(request, 404, "this console was started without a broker")
            page: Callable[[Request], Any] = getattr(pages, method)
            response: Response = await page(request)
            return response

        return endpoint

    return [
        Route("/dlq", serve("channel")),
        Route("/dlq/{channel}/{message_id:path}/do/{command}", serve("confirm"), methods=["GET"]),
        Route("/dlq/{channel}/{message_id:path}/do/{command}", serve("act"), methods=["POST"]),
        Route("/dlq/{channel}/{message_id:path}", serve("letter")),
    ]


def _where(request: Request) -> tuple[str, str]:
    return request.path_params["channel"], request.path_params["message_id"]


def pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)

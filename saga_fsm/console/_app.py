"""The console's pages: an ASGI app on Starlette, rendered on the server by Jinja2.

Reads go through the store's ``SagaQueries`` (pages, counts) and ``SnapshotStore``
(one saga, its history); the operator commands through ``saga_fsm._operator.operate``,
exactly as the CLI runs them. No page shows the store's URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from saga_fsm._codec import history_to_dict
from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import (
    SagaError,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
    StoreError,
)
from saga_fsm._flow import compile_saga
from saga_fsm._operator import OPERATOR_COMMANDS, OperatorCommand, operate
from saga_fsm._registry import Definitions
from saga_fsm._snapshot import TERMINAL_STATUSES, HistoryEntry, SagaStatus, Snapshot
from saga_fsm.console._filters import URL_FILTERS, BadFilter, link, read_filters
from saga_fsm.console._security import (
    AUTH_COOKIE,
    CSRF_FIELD,
    Guard,
    GuardMiddleware,
    safe_next,
)
from saga_fsm.diagrams import DiagramError, definition_diagram, instance_diagram
from saga_fsm.stores import PageKey, SagaFilter, SagaQueries, SagaStore, StateCount, open_store

log = logging.getLogger("saga_fsm.console")
PAGE_SIZE = 50
REFRESH_SECONDS = 2
STUCK_AFTER = timedelta(minutes=5)
_HERE = Path(__file__).parent
_CONFIRM = {
    "cancel": "Compensate this saga: undo the steps it completed, newest first.",
    "retry": "Resume this parked saga where it gave up, with fresh attempts.",
    "resume": "Take the saga over and run it to the end here (refused while a live worker"
    " holds it).",
}


class Console:
    """The state behind the pages: the store, the definitions, the access rules."""

    def __init__(
        self,
        store: SagaStore,
        definitions: Sequence[SagaDefinition],
        guard: Guard,
        read_only: bool,
    ) -> None:
        if not isinstance(store, SagaQueries):
            raise TypeError(f"{type(store).__name__} does not implement SagaQueries")
        self.store = store
        self.queries: SagaQueries = store
        self.definitions = tuple(definitions)
        self.guard = guard
        self.read_only = read_only
        self.templates = Environment(
            loader=PackageLoader("saga_fsm.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["status"] = lambda state: state.partition(":")[0]

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        context |= {
            "csrf_field": CSRF_FIELD,
            "csrf_token": self.guard.csrf_token(request),
            "read_only": self.read_only,
            "signed_in": self.guard.token is not None,
            "path": request.url.path,
        }
        html = self.templates.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code)

    def problem(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        return self.render(request, "problem.html", status_code, message=message)

    # -- pages -------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        now = datetime.now(UTC)
        hour_ago = now - timedelta(hours=1)
        # Concurrent: on PostgreSQL each is a statement of its own on its own connection.
        counts, started, moved, stuck = await asyncio.gather(
            self.queries.counts(),
            self.queries.counts(SagaFilter(created_from=hour_ago)),
            self.queries.counts(SagaFilter(updated_from=hour_ago)),
            self.queries.counts(SagaFilter(stuck_before=now - STUCK_AFTER)),
        )
        by_status: Counter[str] = Counter()
        by_definition: dict[str, Counter[str]] = {}
        for c in counts:
            status = c.state.partition(":")[0]
            by_status[status] += c.count
            by_definition.setdefault(c.definition, Counter())[status] += c.count
        return self.render(
            request,
            "overview.html",
            statuses=[s.value for s in SagaStatus],
            by_status=by_status,
            by_definition=sorted(by_definition.items()),
            states=counts,
            total=sum(by_status.values()),
            started=_total(started),
            finished=sum(c.count for c in moved if _terminal(c.state)),
            stuck=_total(stuck),
            stuck_after=f"{STUCK_AFTER.seconds // 60}m",
            hour_ago=hour_ago.strftime("%Y-%m-%dT%H:%M"),
            link=link,
        )

    async def sagas(self, request: Request) -> Response:
        try:
            view = read_filters(request.query_params, datetime.now(UTC))
            token = request.query_params.get("after")
            after = PageKey.from_token(token) if token else None
        except (BadFilter, ValueError) as err:
            return self.problem(request, 400, str(err))
        page = await self.queries.page(view.where, after=after, limit=PAGE_SIZE)
        return self.render(
            request,
            "list.html",
            filters=URL_FILTERS,
            values=view.values,
            rows=page.rows,
            next_url=view.url(after=page.next.token()) if page.next else None,
            first_url=view.url() if after is not None else None,
        )

    async def saga(self, request: Request) -> Response:
        saga_id = request.path_params["saga_id"]
        live = await self._live(saga_id)
        if live is None:
            return self.problem(request, 404, f"no saga with id {saga_id!r}")
        template = "saga_live.html" if request.query_params.get("part") == "live" else "saga.html"
        done = request.query_params.get("done")
        return self.render(
            request,
            template,
            done=done if done in OPERATOR_COMMANDS else None,
            elsewhere=request.query_params.get("elsewhere") == "1",
            refresh=REFRESH_SECONDS,
            **live,
        )

    async def _live(self, saga_id: str) -> dict[str, Any] | None:
        """What the saga page shows and re-reads while the saga moves."""
        snapshot: Snapshot | None = None
        error: SnapshotDecodeError | None = None
        try:
            snapshot = await self.store.load(saga_id)
        except SagaNotFound:
            return None
        except SnapshotDecodeError as err:
            error = err
        history = await self.store.history(saga_id)
        lease = await self.store.lease(saga_id)  # the store's columns, beside the snapshot
        svg, diagram_error = self._diagram(snapshot, history) if snapshot else (None, None)
        return {
            "saga_id": saga_id,
            "snapshot": snapshot,
            "lease": lease,
            "decode_error": error,
            "history": [history_to_dict(h) for h in history],
            "data": _json(snapshot.data) if snapshot else None,
            "steps": [(r, _json(r.result) if r.result else "") for r in snapshot.steps]
            if snapshot
            else [],
            "diagram": svg,
            "diagram_error": diagram_error,
            "moving": snapshot is not None and snapshot.status not in TERMINAL_STATUSES,
            "commands": self._commands(snapshot),
        }

    def _diagram(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry]
    ) -> tuple[Markup | None, str | None]:
        """The instance diagram as inline SVG (Graphviz escapes every label), or why not."""
        try:
            compiled = Definitions(self.definitions).compiled_for(snapshot)
            drawn = instance_diagram(
                compiled, history, saga_id=snapshot.saga_id, state=snapshot.state
            )
            return _inline_svg(drawn.render("svg")), None
        except (SagaError, DiagramError) as err:
            return None, str(err)

    def _commands(self, snapshot: Snapshot | None) -> list[str]:
        if self.read_only or snapshot is None:
            return []
        if snapshot.status is SagaStatus.FAILED:
            return ["retry"]
        return [] if snapshot.is_terminal else ["cancel", "resume"]

    async def confirm(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        saga_id = request.path_params["saga_id"]
        live = await self._live(saga_id)
        if live is None:
            return self.problem(request, 404, f"no saga with id {saga_id!r}")
        return self.render(request, "confirm.html", command=command, what=_CONFIRM[command], **live)

    async def act(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        if not await self.guard.csrf_ok(request):
            return self.problem(
                request, 403, "refused: this form's CSRF token is missing or wrong; reload the page"
            )
        saga_id = request.path_params["saga_id"]
        try:
            operated = await operate(self.store, saga_id, command, definitions=self.definitions)
        except SagaNotFound:
            return self.problem(request, 404, f"no saga with id {saga_id!r}")
        except StoreError:
            raise  # not a refusal: the store_failed page
        except (SagaError, ValueError) as refused:
            # TransitionNotAllowed, SagaLeased, a definition that cannot be loaded...
            live = await self._live(saga_id)
            if live is None:
                return self.problem(request, 404, f"no saga with id {saga_id!r}")
            return self.render(
                request, "saga.html", 409, refused=str(refused), refresh=REFRESH_SECONDS, **live
            )
        carried: SagaLeased | None = operated.carried_on_by
        suffix = "&elsewhere=1" if carried is not None else ""
        return RedirectResponse(f"/sagas/{_quote(saga_id)}?done={command}{suffix}", 303)

    def _command(self, request: Request) -> OperatorCommand | Response:
        name = request.path_params["command"]
        if self.read_only:
            return self.problem(request, 403, "refused: this console is read-only")
        for command in OPERATOR_COMMANDS:
            if name == command:
                return command
        return self.problem(request, 404, f"no such action {name!r}")

    async def definitions_page(self, request: Request) -> Response:
        drawn: list[tuple[SagaDefinition, Markup | None, str | None]] = []
        for definition in self.definitions:
            try:
                svg = _inline_svg(definition_diagram(compile_saga(definition)).render("svg"))
                drawn.append((definition, svg, None))
            except DiagramError as err:
                drawn.append((definition, None, str(err)))
        return self.render(request, "definitions.html", drawn=drawn)

    async def login(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return self.render(request, "login.html", target=target, wrong=False)
        form = await request.form()
        given = form.get("token")
        if not await self.guard.csrf_ok(request):
            return self.problem(request, 403, "refused: the login form's CSRF token is missing")
        if self.guard.token is None:
            return RedirectResponse(target, 303)
        if not isinstance(given, str) or not self.guard.token_matches(given):
            return self.render(request, "login.html", 401, target=target, wrong=True)
        response = RedirectResponse(target, 303)
        response.set_cookie(AUTH_COOKIE, self.guard.auth_cookie(), httponly=True, samesite="strict")
        return response


def create_app(
    *,
    store_url: str | None = None,
    store: SagaStore | None = None,
    definitions: Iterable[SagaDefinition] = (),
    token: str | None = None,
    read_only: bool = False,
) -> Starlette:
    """The console on ``store`` (a store the caller opened and closes) or on the store
    at ``store_url`` (opened when the app starts, closed when it stops). ``token``: every
    request must present it (bearer header, or the cookie the login form sets)."""
    if (store is None) == (store_url is None):
        raise ValueError("give exactly one of store and store_url")
    guard = Guard(token)
    holder: dict[str, Console] = {}
    definitions = tuple(definitions)

    def console() -> Console:
        return holder["console"]

    if store is not None:
        holder["console"] = Console(store, definitions, guard, read_only)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if store_url is None:
            yield
            return
        async with open_store(store_url) as opened:
            holder["console"] = Console(opened, definitions, guard, read_only)
            yield

    async def overview(request: Request) -> Response:
        return await console().overview(request)

    async def sagas(request: Request) -> Response:
        return await console().sagas(request)

    async def saga(request: Request) -> Response:
        return await console().saga(request)

    async def confirm(request: Request) -> Response:
        return await console().confirm(request)

    async def act(request: Request) -> Response:
        return await console().act(request)

    async def definitions_page(request: Request) -> Response:
        return await console().definitions_page(request)

    async def login(request: Request) -> Response:
        return await console().login(request)

    routes = [
        Route("/", overview),
        Route("/sagas", sagas),
        Route("/sagas/{saga_id:path}/do/{command}", confirm, methods=["GET"]),
        Route("/sagas/{saga_id:path}/do/{command}", act, methods=["POST"]),
        Route("/sagas/{saga_id:path}", saga),
        Route("/definitions", definitions_page),
        Route("/login", login, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]

    async def store_failed(request: Request, exc: Exception) -> Response:
        # The message names the server (user@host:port/db): it goes to the log, not the page.
        log.error("saga-fsm ui: %s %s: %s", request.method, request.url.path, exc)
        return console().problem(
            request, 503, "the store did not answer; the console's log says why. Try again."
        )

    return Starlette(
        routes=routes,
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        exception_handlers={StoreError: store_failed},
        lifespan=lifespan,
    )


def _inline_svg(svg: bytes) -> Markup:
    text = svg.decode()
    return Markup(text[text.index("<svg") :])


def _json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _total(counts: Sequence[StateCount]) -> int:
    return sum(c.count for c in counts)


def _terminal(state: str) -> bool:
    return state.partition(":")[0] in {s.value for s in TERMINAL_STATUSES}


def _quote(saga_id: str) -> str:
    return quote(saga_id, safe="")

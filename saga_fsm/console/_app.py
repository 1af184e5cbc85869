"""The console's pages: an ASGI app on Starlette, rendered on the server by Jinja2.

Reads go through the store's ``SagaQueries`` (pages, counts) and ``SnapshotStore``
(one saga, its history); the operator commands through ``saga_fsm._operator.operate``
and un-quarantine through the store's ``unquarantine``, exactly as the CLI runs them.
The dead-letter pages are in ``_dead_letters``. No page shows the store's URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
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
from saga_fsm.console._dead_letters import DeadLetterPages, dead_letter_routes, pretty_json
from saga_fsm.console._filters import URL_FILTERS, BadFilter, link, read_filters
from saga_fsm.console._security import (
    AUTH_COOKIE,
    CSRF_FIELD,
    Guard,
    GuardMiddleware,
    safe_next,
)
from saga_fsm.diagrams import DiagramError, definition_diagram, instance_diagram
from saga_fsm.messaging import DeadLetters, TransportError, open_transport
from saga_fsm.stores import (
    PageKey,
    QuarantinedSaga,
    SagaFilter,
    SagaQueries,
    SagaStore,
    StateCount,
    open_store,
)

log = logging.getLogger("saga_fsm.console")
PAGE_SIZE = 50
REFRESH_SECONDS = 2
STUCK_AFTER = timedelta(minutes=5)
_HERE = Path(__file__).parent
_CONFIRM = {
    "cancel": "Compensate this saga: undo the steps it completed, newest first.",
    "retry": (
        "Resume this parked saga where it gave up (a compensation: fresh attempts;"
        " a pivot that may have acted: one more attempt)."
    ),
    "resume": "Take the saga over and run it to the end here (refused while a live worker"
    " holds it).",
    "unquarantine": "Let workers claim this saga again (refused while its stored snapshot"
    " still cannot be decoded: fix the row first).",
}
# The operator commands, and un-quarantine: the store's own ``unquarantine``, as the CLI's.
SagaAction = OperatorCommand | Literal["unquarantine"]
SAGA_ACTIONS: tuple[SagaAction, ...] = (*OPERATOR_COMMANDS, "unquarantine")


class Console:
    """The state behind the pages: the store, the definitions, the access rules."""

    def __init__(
        self,
        store: SagaStore,
        definitions: Sequence[SagaDefinition],
        guard: Guard,
        read_only: bool,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        if not isinstance(store, SagaQueries):
            raise TypeError(f"{type(store).__name__} does not implement SagaQueries")
        self.store = store
        self.queries: SagaQueries = store
        self.definitions = tuple(definitions)
        self.guard = guard
        self.read_only = read_only
        self.dead_letters = DeadLetterPages(self, dead_letters) if dead_letters else None
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
            "has_dlq": self.dead_letters is not None,
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
        counts, started, moved, stuck, quarantined = await asyncio.gather(
            self.queries.counts(),
            self.queries.counts(SagaFilter(created_from=hour_ago)),
            self.queries.counts(SagaFilter(updated_from=hour_ago)),
            self.queries.counts(SagaFilter(stuck_before=now - STUCK_AFTER)),
            self.queries.counts(SagaFilter(quarantined=True)),
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
            quarantined=_total(quarantined),
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
            done=done if done in SAGA_ACTIONS else None,
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
        quarantine = await self.queries.quarantine_of(saga_id)
        svg, diagram_error = self._diagram(snapshot, history) if snapshot else (None, None)
        children = await self._children(snapshot) if snapshot else []
        return {
            "children": children,
            "saga_id": saga_id,
            "snapshot": snapshot,
            "lease": lease,
            "decode_error": error,
            "history": [history_to_dict(h) for h in history],
            "data": pretty_json(snapshot.data) if snapshot else None,
            "steps": [(r, pretty_json(r.result) if r.result else "") for r in snapshot.steps]
            if snapshot
            else [],
            "diagram": svg,
            "diagram_error": diagram_error,
            "moving": snapshot is not None and snapshot.status not in TERMINAL_STATUSES,
            "quarantine": quarantine,
            "commands": self._commands(snapshot, quarantine),
        }

    async def _children(self, snapshot: Snapshot) -> list[Snapshot]:
        """The child sagas it started: only looked for when its table has child steps."""
        try:
            compiled = Definitions(self.definitions).compiled_for(snapshot)
        except SagaError:
            return []
        if not compiled.child_steps:
            return []
        found = await self.store.list(parent=snapshot.saga_id)
        return [child for child in found if isinstance(child, Snapshot)]

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

    def _commands(
        self, snapshot: Snapshot | None, quarantine: QuarantinedSaga | None
    ) -> list[SagaAction]:
        if self.read_only:
            return []
        fixed: list[SagaAction] = ["unquarantine"] if quarantine is not None else []
        if snapshot is None:
            return fixed
        if snapshot.status is SagaStatus.FAILED:
            return [*fixed, "retry"]
        return fixed if snapshot.is_terminal else [*fixed, "cancel", "resume"]

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
        carried: SagaLeased | None = None
        try:
            if command == "unquarantine":
                await self.store.unquarantine(saga_id)
            else:
                operated = await operate(self.store, saga_id, command, definitions=self.definitions)
                carried = operated.carried_on_by
        except SagaNotFound:
            return self.problem(request, 404, f"no saga with id {saga_id!r}")
        except StoreError:
            raise  # not a refusal: the store_failed page
        except (SagaError, ValueError) as refused:
            # TransitionNotAllowed, SagaLeased, a definition that cannot be loaded,
            # NotQuarantined, a snapshot that still cannot be decoded...
            live = await self._live(saga_id)
            if live is None:
                return self.problem(request, 404, f"no saga with id {saga_id!r}")
            return self.render(
                request, "saga.html", 409, refused=str(refused), refresh=REFRESH_SECONDS, **live
            )
        suffix = "&elsewhere=1" if carried is not None else ""
        return RedirectResponse(f"/sagas/{_quote(saga_id)}?done={command}{suffix}", 303)

    def _command(self, request: Request) -> SagaAction | Response:
        name = request.path_params["command"]
        if self.read_only:
            return self.problem(request, 403, "refused: this console is read-only")
        for command in SAGA_ACTIONS:
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
    broker_url: str | None = None,
    dead_letters: DeadLetters | None = None,
) -> Starlette:
    """The console on ``store`` (a store the caller opened and closes) or on the store
    at ``store_url`` (opened when the app starts, closed when it stops). ``token``: every
    request must present it (bearer header, or the cookie the login form sets). The
    dead-letter pages read ``dead_letters`` (the caller's) or the transport at
    ``broker_url`` (opened with the app); neither: no dead-letter pages."""
    if broker_url is not None and dead_letters is not None:
        raise ValueError("give at most one of broker_url and dead_letters")
    if (store is None) == (store_url is None):
        raise ValueError("give exactly one of store and store_url")
    guard = Guard(token)
    holder: dict[str, Console] = {}
    definitions = tuple(definitions)

    def console() -> Console:
        return holder["console"]

    if store is not None and broker_url is None:
        holder["console"] = Console(store, definitions, guard, read_only, dead_letters)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if "console" in holder:
            yield
            return
        async with AsyncExitStack() as opened:
            serving = store
            if serving is None:
                serving = await opened.enter_async_context(open_store(str(store_url)))
            letters = dead_letters
            if broker_url is not None:
                transport = await opened.enter_async_context(open_transport(broker_url))
                letters = transport.dead_letters
            holder["console"] = Console(serving, definitions, guard, read_only, letters)
            try:
                yield
            finally:
                del holder["console"]  # closed: the next start opens them again

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
        *dead_letter_routes(console),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]

    async def store_failed(request: Request, exc: Exception) -> Response:
        # The message names the server (user@host:port/db): it goes to the log, not the page.
        log.error("saga-fsm ui: %s %s: %s", request.method, request.url.path, exc)
        what = "broker" if isinstance(exc, TransportError) else "store"
        return console().problem(
            request, 503, f"the {what} did not answer; the console's log says why. Try again."
        )

    return Starlette(
        routes=routes,
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        exception_handlers={StoreError: store_failed, TransportError: store_failed},
        lifespan=lifespan,
    )


def _inline_svg(svg: bytes) -> Markup:
    text = svg.decode()
    return Markup(text[text.index("<svg") :])


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

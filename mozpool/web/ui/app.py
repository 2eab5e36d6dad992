"""The operator web UI (issue 9): pages under /ui/, rendered from the shared database.

Reads are rendered here, server-side; writes are sent by the browser (static/mozpool.js) to the
JSON API, so there is one write path.  Pages stay current by following ``/api/events`` in the
browser and refetching the parts an event touches (``live_region`` in html.py).

Routes raise :class:`PageNotFound` or :class:`params.BadParameter`; :meth:`OperatorUI._errors`
turns every failure into an HTML error page with the right status, never a traceback.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.internet import defer
from twisted.web.resource import IResource, NoResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import File
from twisted.web.template import tags
from werkzeug import exceptions as wz

from mozpool import liveness
from mozpool.db import catalog, tokens
from mozpool.db.errors import DatabaseUnavailable
from mozpool.db.pool import RETRY_AFTER, Database
from mozpool.timeutil import dbnow
from mozpool.web import auth
from mozpool.web.poolview import PoolView
from mozpool.db import history
from mozpool.health.interfaces import IHealth
from mozpool.broker.interfaces import IBroker
from mozpool.web.ui import pages, params, queries, viewqueries, why
from mozpool.web.ui.html import device_url, flatten, page_bytes, query_url, request_url
from mozpool.web.validate import DEVICE_STATES

log = Logger()

HTML_TYPE = b"text/html; charset=utf-8"
#: Scripts and styles only from this server; API calls may go to another imaging server (the
#: owner of a device, when this one answers 302).
SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:;"
    b" style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",
}
#: The original UI's pages -> ours, so old bookmarks keep working.
OLD_PAGES = {
    "index.html": "/ui/",
    "mozpool.html": "/ui/requests",
    "lifeguard.html": "/ui/devices",
    "bmm.html": "/ui/lab",
}
OVERVIEW_LIMIT = 50


class PageNotFound(Exception):
    """No such device, request or page; the message says which."""


class _StaticFiles(File):
    """The files of static/, without directory listings."""

    def directoryListing(self) -> IResource:
        return NoResource()


class OperatorUI:
    """The pages of one imaging server (``fqdn``) over the shared database."""

    app = Klein()

    def __init__(self, db: Database, fqdn: str, clock: IReactorTime, authority: auth.Authority | None = None,
                 time_scale: float = 1.0, view: PoolView | None = None, health: IHealth | None = None,
                 broker: IBroker | None = None) -> None:
        self.db = db
        #: where waiting requests stand in the queue (issue 14); None: places are not shown
        self.broker = broker
        #: explanations and boot telemetry (issue 15): the "why?" parts and the boot times page
        self.health = health
        #: the pool in memory: when given, the device tables are read from it (ui.viewqueries)
        self.view = view
        #: scales the liveness bound, like every interval of this daemon
        self.time_scale = time_scale
        self.fqdn = fqdn
        self.clock = clock
        self.authority = authority or auth.Authority(db, clock, auth.OPEN)
        self.static = _StaticFiles(_static_dir())

    def resource(self) -> IResource:
        return _SignedInReads(self, self.app.resource())

    # --- plumbing ---------------------------------------------------------------------------

    async def _page(
        self, request: IRequest, title: str, body: Any, section: str, events: str | None = None
    ) -> bytes:
        _html_headers(request)
        return await page_bytes(title, body, section, self.fqdn, events)

    async def _fragment(self, request: IRequest, *parts: Any) -> bytes:
        _html_headers(request)
        return await flatten(list(parts))

    def _read(self, fn: Any, *args: Any) -> Any:
        in_memory = viewqueries.FROM_VIEW.get(fn) if self.view is not None else None
        if in_memory is not None:
            assert self.view is not None
            return defer.Deferred.fromCoroutine(self.view.read(in_memory, *args))
        return self.db.runInteraction(fn, *args)

    @app.handle_errors(Exception)
    async def _errors(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        if isinstance(exc, PageNotFound):
            status, message = 404, str(exc)
        elif isinstance(exc, params.BadParameter):
            status, message = 400, str(exc)
        elif isinstance(exc, wz.MethodNotAllowed):
            status, message = 405, "This page is read with GET; changes go through the JSON API."
            request.setHeader(b"Allow", ", ".join(sorted(exc.valid_methods or ["GET"])).encode("ascii"))
        elif isinstance(exc, wz.HTTPException):
            status, message = 404, "There is no such page."
        elif isinstance(exc, DatabaseUnavailable):
            status, message = 503, f"The database is unavailable ({exc}); try again in a moment."
            request.setHeader(b"Retry-After", str(getattr(exc, "retry_after", RETRY_AFTER)).encode("ascii"))
        else:
            log.failure("bug rendering {uri}", failure, uri=request.uri.decode("latin-1"))
            status, message = 500, "Something went wrong rendering this page; it has been logged."
        request.setResponseCode(status)
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 503: "Unavailable"}.get(
            status, "Error"
        )
        try:
            return await self._page(request, title, pages.error(status, message), "")
        except Exception:
            log.failure("could not render the error page for {uri}", uri=request.uri.decode("latin-1"))
            return b"<!DOCTYPE html>\n<title>MozPool error</title><p>" + title.encode("utf-8") + b"</p>"

    # --- redirects --------------------------------------------------------------------------

    @app.route("/", methods=["GET"])
    @app.route("/ui", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        return _redirect(request, "/ui/", 302)

    @app.route("/ui/<string:old>", methods=["GET"])
    def old_page(self, request: IRequest, old: str) -> bytes:
        """The original's pages; ``log.html?device=NAME`` (or ``?request=ID``) was its log view."""
        if old == "log.html":
            device = params.text(request, "device")
            if device:
                return _redirect(request, device_url(device), 301)
            request_id = params.text(request, "request")
            if request_id.isdigit():
                return _redirect(request, request_url(int(request_id)), 301)
            return _redirect(request, "/ui/devices", 302)
        if old not in OLD_PAGES:
            raise PageNotFound(f"There is no page /ui/{old}.")
        return _redirect(request, OLD_PAGES[old], 301)

    @app.route("/ui/static/", branch=True, methods=["GET"])
    def static_files(self, request: IRequest) -> IResource:
        """Versioned URLs (``?v=``), so browsers may keep them a day."""
        request.setHeader(b"Cache-Control", b"public, max-age=86400")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return self.static

    # --- signing in -------------------------------------------------------------------------

    @app.route("/ui/signin", methods=["GET"])
    async def signin_form(self, request: IRequest) -> bytes:
        body = pages.signin(self.authority.mode, None, _next_url(params.text(request, "next")))
        return await self._page(request, "Sign in", body, "")

    @app.route("/ui/signin", methods=["POST"])
    async def signin(self, request: IRequest) -> bytes:
        """Checks the token, then keeps it in an HttpOnly, SameSite=Strict cookie, with a CSRF
        value beside it that the pages' scripts echo on every change (mozpool.web.auth)."""
        _same_origin_only(request)
        form = _form(request)
        next_url = _next_url(form.get("next", ""))
        token = form.get("token", "").strip()
        caller = None
        if token.startswith(tokens.USER_PREFIX):
            info = await self.db.runInteraction(tokens.lookup, token)
            caller = info
        if caller is None:
            request.setResponseCode(401)
            body = pages.signin(self.authority.mode, "That token is not valid (or it was revoked).", next_url)
            return await self._page(request, "Sign in", body, "")
        secure = request.isSecure()
        request.addCookie(auth.TOKEN_COOKIE, token.encode("ascii"), path=b"/", httpOnly=True, secure=secure,
                          sameSite="strict")
        request.addCookie(auth.CSRF_COOKIE, secrets.token_urlsafe(24).encode("ascii"), path=b"/", secure=secure,
                          sameSite="strict")
        log.info("UI sign-in as {name} ({role})", name=caller.name, role=caller.role)
        return _redirect(request, next_url, 303)

    @app.route("/ui/signout", methods=["POST"])
    def signout(self, request: IRequest) -> bytes:
        _same_origin_only(request)
        for name in (auth.TOKEN_COOKIE, auth.CSRF_COOKIE):
            request.addCookie(name, b"", path=b"/", max_age=b"0", sameSite="strict")
        return _redirect(request, "/ui/", 303)

    # --- pool-wide pages --------------------------------------------------------------------

    @app.route("/ui/", methods=["GET"])
    async def overview(self, request: IRequest) -> bytes:
        counts = await self._read(queries.category_counts)
        needing, needing_total = await self._read(queries.needs_a_human, OVERVIEW_LIMIT)
        failures = await self.db.runInteraction(history.failures_by_name, [d["name"] for d in needing])
        needing = [{**d, "failure": failures.get(d["name"])} for d in needing]
        open_requests, open_total = await self._read(queries.request_page, False, 1, OVERVIEW_LIMIT)
        servers = await self._read(queries.imaging_servers, self._dead_before())
        suspect = await self.db.runInteraction(queries.suspect_boards)
        body = pages.overview(counts, needing, needing_total, open_requests, open_total, servers, self.fqdn,
                              self.clock.seconds(), suspect)
        return await self._page(request, "Pool overview", body, "overview", _pool_events())

    @app.route("/ui/lab", methods=["GET"])
    async def lab(self, request: IRequest) -> bytes:
        """``?server=FQDN`` shows one server's boards (a pool of thousands makes a long map)."""
        server = params.text(request, "server")
        boards = await self._read(queries.relay_boards, server)
        devices = await self._read(queries.wired_devices, server)
        servers = await catalog.server_fqdns(self.db)
        body = pages.lab_map(boards, devices, self.fqdn, servers, server)
        return await self._page(request, "Lab map", body, "lab", _pool_events("device_state", "request_device", "board_health"))

    @app.route("/ui/lab/board/<path:address>", methods=["GET"])
    async def lab_board(self, request: IRequest, address: str) -> bytes:
        """One board of the lab map, refetched when one of its devices changes."""
        board, candidates = await self._read(queries.relay_board, address)
        wired, _ = pages.wiring(candidates)
        if board is None and address not in wired:
            raise PageNotFound(f"There is no relay board {address}.")
        board = board or pages.unknown_board(address)
        return await self._fragment(request, pages.board_section(board, wired.get(address, {})))

    @app.route("/ui/devices", methods=["GET"])
    async def devices(self, request: IRequest) -> bytes:
        query = params.device_query(request)
        if request.getHeader(b"HX-Request"):
            # The address bar shows this view's tidy URL (the filter form sends empty fields too).
            canonical = query_url("/ui/devices", params.device_query_params(query))
            request.setHeader(b"HX-Replace-Url", canonical.encode("utf-8"))
        rows, total = await self._read(queries.device_page, query)
        choices = await self._read(queries.device_filter_choices)
        down = await self._read(queries.down_servers, self._dead_before())
        return await self._page(request, "Devices", pages.devices(rows, total, query, choices, down), "devices",
                                _pool_events())

    @app.route("/ui/requests", methods=["GET"])
    async def requests(self, request: IRequest) -> bytes:
        include_closed = params.flag(request, "closed")
        number, per_page = params.page(request)
        rows, total = await self._read(queries.request_page, include_closed, number, per_page)
        rows = [{**r, "queue": await self._queue_place(r)} for r in rows]
        body = pages.requests(rows, total, include_closed, number, per_page, self.clock.seconds())
        return await self._page(request, "Requests", body, "requests",
                                _pool_events("request_state", "request_device", "device_state"))

    @app.route("/ui/requests/new", methods=["GET"])
    async def new_request(self, request: IRequest) -> bytes:
        device = params.text(request, "device")
        images = await catalog.list_images(self.db)
        environments = await catalog.list_environments(self.db)
        body = pages.new_request(images, environments, device, self.fqdn)
        return await self._page(request, "New request", body, "new-request")

    @app.route("/ui/images", methods=["GET"])
    async def images(self, request: IRequest) -> bytes:
        return await self._page(request, "Images", pages.images(await self._read(queries.images)), "images")

    @app.route("/ui/environments", methods=["GET"])
    async def environments(self, request: IRequest) -> bytes:
        found = await self._read(queries.environments)
        return await self._page(request, "Environments", pages.environments(found), "environments")

    @app.route("/ui/pxe-configs", methods=["GET"])
    async def pxe_configs(self, request: IRequest) -> bytes:
        found = await self._read(queries.pxe_configs)
        return await self._page(request, "PXE configs", pages.pxe_configs(found), "pxe-configs")

    @app.route("/ui/servers", methods=["GET"])
    async def servers(self, request: IRequest) -> bytes:
        found = await self._read(queries.imaging_servers, self._dead_before())
        return await self._page(request, "Imaging servers", pages.servers(found, self.fqdn), "servers")

    # --- one device -------------------------------------------------------------------------

    def _dead_before(self) -> str:
        return liveness.dead_before(self.clock, self.time_scale)

    async def _device(self, name: str) -> dict[str, Any]:
        found = await self._read(queries.device_by_name, name, self._dead_before())
        if found is None:
            raise PageNotFound(f"There is no device {name}.")
        return found

    @app.route("/ui/device/<string:name>", methods=["GET"])
    async def device(self, request: IRequest, name: str) -> bytes:
        found = await self._device(name)
        log_lines = await self._read(queries.newest_log, "device", found["id"], dbnow(self.clock), pages.LOG_LIMIT)
        pxe = [p["name"] for p in await catalog.list_pxe_configs(self.db, True)]
        images = await self._read(queries.images)
        environments = await catalog.list_environments(self.db)
        body = pages.device(found, log_lines, pxe, images, environments, sorted(DEVICE_STATES), self.fqdn,
                            self.clock.seconds())
        body.insert(2, await self._device_health(found["id"], name))
        return await self._page(request, name, body, "devices", "/api/events?device=" + quote(name, safe=""))

    # --- health (issue 15): why?, timelines, boot times -------------------------------------

    async def _device_health(self, device_id: int, name: str) -> Any:
        explained = await self.health.explain_device(name) if self.health is not None else None
        page = await self.db.runInteraction(history.device_history, device_id, why.TIMELINE_LIMIT)
        return why.health_region("device-health", device_url(name) + "/health", "device_state request_device",
                                 explained, page, self.clock.seconds(), device_url(name) + "/why",
                                 why.device_api(name, "history"))

    @app.route("/ui/device/<string:name>/health", methods=["GET"])
    async def device_health(self, request: IRequest, name: str) -> bytes:
        """The device page's why box and timeline, refetched when the device changes."""
        found = await self._device(name)
        return await self._fragment(request, await self._device_health(found["id"], name))

    @app.route("/ui/device/<string:name>/why", methods=["GET"])
    async def device_why(self, request: IRequest, name: str) -> bytes:
        """Everything /api/device/NAME/why/ says, as a page."""
        await self._device(name)
        explained = await self._need_health().explain_device(name)
        back = tags.a(f"← {name}", href=device_url(name))
        return await self._page(request, f"Why is {name} {explained['state']}?",
                                why.why_page(explained, self.clock.seconds(), back, "device"), "devices",
                                "/api/events?device=" + quote(name, safe=""))

    async def _request_health(self, request_id: int) -> Any:
        explained = await self.health.explain_request(request_id) if self.health is not None else None
        page = await self.db.runInteraction(history.request_history, request_id, why.TIMELINE_LIMIT)
        return why.health_region("request-health", request_url(request_id) + "/health",
                                 "request_state request_device", explained, page, self.clock.seconds(),
                                 request_url(request_id) + "/why", f"/api/request/{request_id}/history/",
                                 show_machine=True)

    @app.route("/ui/request/<string:request_id>/health", methods=["GET"])
    async def request_health(self, request: IRequest, request_id: str) -> bytes:
        found = await self._request(request_id)
        return await self._fragment(request, await self._request_health(found["id"]))

    @app.route("/ui/request/<string:request_id>/why", methods=["GET"])
    async def request_why(self, request: IRequest, request_id: str) -> bytes:
        found = await self._request(request_id)
        explained = await self._need_health().explain_request(found["id"])
        back = tags.a(f"← request {found['id']}", href=request_url(found["id"]))
        return await self._page(request, f"Why is request {found['id']} {explained['state']}?",
                                why.why_page(explained, self.clock.seconds(), back, "request"), "requests",
                                f"/api/events?request={found['id']}")

    @app.route("/ui/boots", methods=["GET"])
    async def boots(self, request: IRequest) -> bytes:
        """Boot phase times per image and hardware type (``?hours=``, default 24)."""
        hours = params.number(request, "hours", 24, 24 * 31)
        summary = await self._need_health().boot_summary(hours)
        return await self._page(request, "Boot times", why.boots_page(summary), "boots")

    def _need_health(self) -> IHealth:
        if self.health is None:
            raise PageNotFound("Explanations and boot telemetry are not available on this server.")
        return self.health

    @app.route("/ui/device/<string:name>/summary", methods=["GET"])
    async def device_summary(self, request: IRequest, name: str) -> bytes:
        """The live parts of the device page: state and details, comments and environment."""
        found = await self._device(name)
        environments = await catalog.list_environments(self.db)
        return await self._fragment(
            request, pages.device_summary(found, self.fqdn, self.clock.seconds()),
            pages.device_editors(found, environments),
        )

    @app.route("/ui/device/<string:name>/log", methods=["GET"])
    async def device_log(self, request: IRequest, name: str) -> bytes:
        """The log list alone, refetched after the event stream lost track (``reset``)."""
        lines = await self._read(queries.device_log_by_name, name, dbnow(self.clock), pages.LOG_LIMIT)
        if lines is None:
            raise PageNotFound(f"There is no device {name}.")
        return await self._fragment(
            request, pages.log_list(lines, self.clock.seconds(), "device_log", name, device_url(name) + "/log")
        )

    # --- one request ------------------------------------------------------------------------

    async def _request(self, request_id: str) -> dict[str, Any]:
        number = _request_number(request_id)
        found = await self._read(queries.request_by_id, number) if number is not None else None
        if found is None:
            raise PageNotFound(f"There is no request {request_id}.")
        return found

    async def _queue_place(self, found: dict[str, Any]) -> dict[str, Any] | None:
        """Where a request waiting for a device stands (``position``, ``ahead``, ``eta``,
        ``why``: the API's ``queue``), None for any other request."""
        if self.broker is None or found["state"] != "finding_device" or found["assigned_device"]:
            return None
        place: dict[str, Any] | None = await self.broker.queue_place(found["id"])
        return place

    @app.route("/ui/request/<string:request_id>", methods=["GET"])
    async def request_page(self, request: IRequest, request_id: str) -> bytes:
        found = await self._request(request_id)
        found["queue"] = await self._queue_place(found)
        log_lines = await self._read(queries.newest_log, "request", found["id"], dbnow(self.clock), pages.LOG_LIMIT)
        body = pages.request(found, log_lines, self.fqdn, self.clock.seconds())
        body.insert(2, await self._request_health(found["id"]))
        return await self._page(request, f"Request {found['id']}", body, "requests",
                                f"/api/events?request={found['id']}")

    @app.route("/ui/request/<string:request_id>/summary", methods=["GET"])
    async def request_summary(self, request: IRequest, request_id: str) -> bytes:
        """The live part of the request page: its state, its place in the queue while it waits
        for a device, and its details."""
        found = await self._request(request_id)
        found["queue"] = await self._queue_place(found)
        return await self._fragment(request, pages.request_summary(found, self.clock.seconds()))

    @app.route("/ui/request/<string:request_id>/log", methods=["GET"])
    async def request_log(self, request: IRequest, request_id: str) -> bytes:
        found = await self._request(request_id)
        lines = await self._read(queries.newest_log, "request", found["id"], dbnow(self.clock), pages.LOG_LIMIT)
        return await self._fragment(
            request,
            pages.log_list(
                lines, self.clock.seconds(), "request_log", str(found["id"]), request_url(found["id"]) + "/log"
            ),
        )


class _SignedInReads(Resource):
    """When this server closes reads to anonymous callers (auth required and
    ``anonymous_read`` off), every page but the sign-in form and the static files needs a
    signed-in browser; others are sent to the sign-in form."""

    isLeaf = True

    def __init__(self, ui: OperatorUI, inner: IResource) -> None:
        super().__init__()
        self.ui = ui
        self.inner = inner

    def render(self, request: IRequest) -> Any:
        path = request.path
        if self.ui.authority.reads_are_open or path.startswith((b"/ui/signin", b"/ui/static/")):
            return getChildForRequest(self.inner, request).render(request)

        async def check() -> None:
            try:
                caller = await self.ui.authority.identify(request)
            except Exception:
                caller = auth.ANONYMOUS
            if caller.role is None:
                target = "/ui/signin?" + urlencode({"next": request.uri.decode("latin-1")})
                request.write(_redirect(request, target, 303))
                request.finish()
                return
            request.render(getChildForRequest(self.inner, request))

        defer.Deferred.fromCoroutine(check()).addErrback(
            lambda f: log.failure("sign-in check failed for {uri}", f, uri=request.uri.decode("latin-1"))
        )
        return NOT_DONE_YET


def _form(request: IRequest) -> dict[str, str]:
    """An urlencoded form body (the site leaves bodies unparsed: the API reads JSON)."""
    content = getattr(request, "content", None)
    raw = content.read(65536) if content is not None else b""
    try:
        return {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), max_num_fields=10).items()}
    except (UnicodeDecodeError, ValueError):
        raise params.BadParameter("the form could not be read") from None


def _next_url(value: str) -> str:
    """Only a path on this server (never another site, nor //host)."""
    return value if value.startswith("/ui") and not value.startswith("//") else "/ui/"


def _same_origin_only(request: IRequest) -> None:
    origin = request.getHeader(b"origin")
    if origin is not None and origin.split(b"://", 1)[-1] != (request.getHeader(b"host") or b""):
        raise params.BadParameter("sign-in and sign-out are accepted from this server's own pages only")


def _static_dir() -> str:
    return FilePath(__file__).sibling("static").path


def _html_headers(request: IRequest) -> None:
    request.setHeader(b"Content-Type", HTML_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def _redirect(request: IRequest, location: str, status: int) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Location", location.encode("utf-8"))
    _html_headers(request)
    return b""


def _request_number(text: str) -> int | None:
    if not text.isdigit() or len(text) > 19:
        return None
    return int(text)


def _pool_events(*types: str) -> str:
    """The /api/events URL of a pool-wide page: the given types, or every type but the logs."""
    chosen = types or tuple(pages.POOL_EVENTS.split())
    return "/api/events?type=" + ",".join(chosen)

"""The HTTP API of spec/http-api.md as one Klein application class.

Routes are thin: they parse the call in the order of spec 1.5 (``validate``), check ownership
(``owner``), read the database (``queries`` and mozpool.db) and hand actions to the broker,
LifeGuard or BMM collaborator.  They raise domain exceptions (``errors``); :meth:`_errors`
writes every failure as JSON, so no input produces a 500 or an HTML page.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import replace
from typing import Any, Awaitable, Callable, TypeVar

from klein import Klein
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from werkzeug import exceptions as wz

from mozpool import __version__, liveness
from mozpool.db import catalog, devices, history, logs, requests, summary, tokens
from mozpool.db import health as board_health
from mozpool.db.errors import Conflict as DatabaseConflict
from mozpool.db.errors import DatabaseUnavailable
from mozpool.db.gathered import Gathered
from mozpool.db.pool import RETRY_AFTER, Database
from mozpool.errors import UnknownObject
from mozpool.timeutil import apitime, dbnow
from mozpool.lifeguard.interfaces import DEVICE_EVENTS
from mozpool.web import auth
from mozpool.web import events as event_stream
from mozpool.web import metrics, openapi, queries, validate
from mozpool.web.errors import (
    ApiError,
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotAvailable,
    NotFound,
    ServiceUnavailable,
)
from mozpool.web.interfaces import IBMM, DeviceHeld, IBroker, IHealth, ILifeGuard, StateMismatch
from mozpool.web.owner import OwnerCheck
from mozpool.web.poolview import PoolView
from mozpool.web.statecache import StateSnapshot

log = Logger()

JSON_TYPE = b"application/json; charset=utf-8"
#: The longest window ``/api/pool/boots/`` summarises (boots are purged with the logs anyway).
MAX_BOOT_HOURS = 24 * 31
#: Image look-ups of request creations served by one SELECT at most.
IMAGES_AT_ONCE = 200


class Raw:
    """A body written as is: the stored boot config, the metrics text."""

    def __init__(self, body: bytes, content_type: bytes = JSON_TYPE) -> None:
        self.body = body
        self.content_type = content_type


NO_CONTENT = object()

_STATE_TEMPLATE = "/api/device/{device}/state/"
#: The raw paths the state route matches, for its fast path; names with escapes go the usual way.
_CACHED_STATE_PATH = re.compile(rb"\A/api/device/([^/%]+)/state/?\Z")
#: Query strings that surely hold the ``cache`` flag (any other is parsed in full).
_CACHE_QUERIES = frozenset({b"cache=1", b"cache", b"cache=true"})

_app = Klein()
# Both /x and /x/ are registered explicitly; never redirect, never merge slashes.
_app.url_map.merge_slashes = False
_app.url_map.strict_slashes = True

#: (template, methods) of every route, for the OpenAPI consistency test.
ROUTES: list[tuple[str, tuple[str, ...]]] = []
#: Templates of the redirecting endpoints, which also answer OPTIONS.
REDIRECTING: list[str] = []

Handler = Callable[..., Awaitable[Any]]
#: a collaborator the API may have been built without (see :meth:`MozpoolAPI._need`)
C = TypeVar("C")


def _rule(template: str) -> str:
    return re.sub(r"\{(\w+)\}", r"<\1>", template)


def _register(template: str, methods: tuple[str, ...], name: str, handler: Handler) -> None:
    path = _rule(template)
    other = path[:-1] if path.endswith("/") else path + "/"
    _app.route(path, methods=list(methods), endpoint=name)(handler)
    _app.route(other, methods=list(methods), endpoint=name + "__alt")(handler)


def endpoint(template: str, *methods: str, redirecting: bool = False) -> Callable[[Handler], Handler]:
    """Route ``template`` (spec spelling, ``{name}`` placeholders) with or without its trailing
    slash; the handler returns a dict (JSON 200), :class:`Raw` or ``NO_CONTENT`` (204)."""

    def deco(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(self: "MozpoolAPI", request: IRequest, **kw: str) -> Any:
            return await self._serve(request, template, fn, kw)

        _register(template, tuple(methods), fn.__name__, handler)
        ROUTES.append((template, tuple(methods)))
        if redirecting:
            REDIRECTING.append(template)
            _register(template, ("OPTIONS",), fn.__name__ + "__options", _preflight(template))
        return handler

    return deco


def _preflight(template: str) -> Handler:
    async def preflight(self: "MozpoolAPI", request: IRequest, **kw: str) -> Any:
        async def answer(api: "MozpoolAPI", request: IRequest, **kw: str) -> Any:
            if "id" in kw:
                validate.request_id(kw["id"])
            await api.owners.preflight(request)
            return NO_CONTENT

        return await self._serve(request, template, answer, kw)

    return preflight


def _whole(request: IRequest, body: bytes) -> bytes:
    """``body`` with its Content-Length, as twisted.web sends what a resource returns: Klein
    would send it chunked, which costs a copy of the body (3.7 MB for the details of 10,000
    devices)."""
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


class _Front(Resource):
    """Site root: percent-decoded path segments that are not UTF-8 become U+FFFD (so they
    route like any unknown name instead of Klein's plain-text 400), every call is timed for
    /metrics, and paths outside /api/ and /metrics go to the UI resource when there is one."""

    isLeaf = True

    def __init__(self, api: "MozpoolAPI", inner: IResource, ui: IResource | None) -> None:
        super().__init__()
        self.api = api
        self.inner = inner
        self.ui = ui

    def render(self, request: IRequest) -> Any:
        at_once = self.api.cached_state_at_once(request)  # first: the hottest read (a plain /api/ path)
        if at_once is not None:
            return at_once
        for path in (request.prepath, request.postpath):
            for i, segment in enumerate(path):
                try:
                    segment.decode("utf-8")
                except UnicodeDecodeError:
                    path[i] = segment.decode("utf-8", "replace").encode("utf-8")
        first = request.postpath[0] if request.postpath else b""
        if self.ui is not None and first not in (b"api", b"metrics"):
            return getChildForRequest(self.ui, request).render(request)
        start = self.api.clock.seconds()
        request.notifyFinish().addBoth(lambda _: self.api._observe(request, start))
        return self.inner.render(request)


class MozpoolAPI:
    """The whole /api/ of one imaging server (``fqdn``) over the shared database."""

    app = _app

    def __init__(
        self,
        db: Database,
        fqdn: str,
        clock: IReactorTime,
        *,
        broker: IBroker | None = None,
        lifeguard: ILifeGuard | None = None,
        bmm: IBMM | None = None,
        events: event_stream.EventHub | None = None,
        authority: auth.Authority | None = None,
        time_scale: float = 1.0,
        view: PoolView | None = None,
        health: IHealth | None = None,
    ) -> None:
        self.db = db
        #: the pool in memory (mozpool.web.poolview): when given, the device list, the summary
        #: and ``state/?cache=1`` are answered from it
        self.view = view
        #: explanations and boot telemetry (issue 15; mozpool.health)
        self.health = health
        #: scales the liveness bound, like every other interval of this daemon
        self.time_scale = time_scale
        self.fqdn = fqdn
        self.clock = clock
        self.broker = broker
        self.lifeguard = lifeguard
        self.bmm = bmm
        self.events = events
        #: who may call what; without one, every call is allowed (auth mode ``open``)
        self.authority = authority or auth.Authority(db, clock, auth.OPEN)
        self.owners = OwnerCheck(db, fqdn)
        self.snapshot = StateSnapshot(db, clock)
        #: the image of each request creation, looked up with the others of a burst
        self.images: Gathered[str, dict[str, Any] | None] = Gathered(
            db, lambda names: lambda c: queries.images_named(c, names), IMAGES_AT_ONCE)
        self.http_metrics = metrics.HTTPMetrics()
        self._state_tally = self.http_metrics.tally("GET", _STATE_TEMPLATE, 200)
        self._cache_headers: tuple[Any, bytes, bytes] = (None, b"", b"")
        self._openapi = json.dumps(openapi.document(__version__)).encode("utf-8")

    def resource(self, ui: IResource | None = None) -> IResource:
        """The resource to use as the Site root; ``ui`` serves everything outside /api/."""
        return _Front(self, self.app.resource(), ui)

    # --- plumbing ---------------------------------------------------------------------------

    def cached_state_at_once(self, request: IRequest) -> bytes | None:
        """The answer of :meth:`device_state` for a plain ``GET .../state/?cache=1`` whose
        device is in the pool view (or, without one, a fresh snapshot), by a caller the
        authority allows without reading the database (``Authority.authorize_now``), written
        without Klein's routing and coroutines; None sends the call the usual way, which
        answers the same bytes and headers (tests/web/test_fastpath.py).

        Monitoring polls every device with this call, so it is the API's hottest read: the
        usual way served 0.39 of a bare twisted.web resource's rate (bench/api.py)."""
        found = _CACHED_STATE_PATH.match(request.path)
        if found is None or request.method != b"GET":
            return None
        if request.uri.partition(b"?")[2] not in _CACHE_QUERIES and not validate.flag(request, "cache"):
            return None
        if not getattr(request, "body_bounded", False) and (
            request.getHeader(b"content-length") not in (None, b"0") or request.getHeader(b"transfer-encoding")
        ):
            return None  # a body that may be too large: the route's 413
        if self.authority.authorize_now(request, _STATE_TEMPLATE) is None:
            return None  # a token to look up, or a refusal: the route answers
        start = self.clock.seconds()
        try:
            name = found.group(1).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if self.view is not None:
            state = self.view.state_now(name)
            if state is None:
                return None
            body = self.view.state_body(state)
            expires = self.view.state_expires()
        else:
            snapshot = self.snapshot.at_once()  # fresh, or from memory while the database is away
            if snapshot is None:
                return None
            states, expires = snapshot
            state = states.get(name)
            if state is None:
                return None
            body = json.dumps({"state": state}).encode("utf-8")
        request.mozpool_route = _STATE_TEMPLATE  # type: ignore[attr-defined]
        self._set_cache_headers(request, expires, start)
        request.setHeader(b"Content-Type", JSON_TYPE)
        took = self.clock.seconds() - start
        if 0.0 <= took <= metrics.FIRST_BUCKET:
            tally = self._state_tally
            tally[0] += 1
            tally[1] += took
        else:
            self.http_metrics.observe("GET", _STATE_TEMPLATE, 200, took)
        return body

    def _set_cache_headers(self, request: IRequest, expires: float, now: float | None = None) -> None:
        max_age = max(int(expires - (self.clock.seconds() if now is None else now)), 0) + 1
        key = (max_age, int(expires))
        if self._cache_headers[0] != key:  # made once per second, not once per call
            self._cache_headers = (key, b"public, max-age=%d" % max_age, http.datetimeToString(int(expires)))
        _, control, expiry = self._cache_headers
        request.setHeader(b"Cache-Control", control)
        request.setHeader(b"Expires", expiry)

    async def _serve(self, request: IRequest, template: str, fn: Handler, kw: dict[str, str]) -> Any:
        request.mozpool_route = template  # type: ignore[attr-defined]
        if request.method == b"HEAD" and template in REDIRECTING:
            # werkzeug answers HEAD with the GET handler; the GETs kept for the original's
            # clients act (power-off, events), and a HEAD must never act.
            methods = dict(ROUTES)[template]
            raise MethodNotAllowed("HEAD does not run actions", sorted({*methods, "OPTIONS"}))
        caller = await self.authority.authorize(request, template, kw)
        request.mozpool_caller = caller  # type: ignore[attr-defined]
        validate.read_body(request)  # 413 comes right after routing
        result = await fn(self, request, **kw)
        if request.method not in (b"OPTIONS", b"HEAD") and not auth.rule_for(template, request.method.decode()).reads:
            await self._audit(request, caller, kw, result)
        if result is NO_CONTENT:
            request.setResponseCode(204)
            return b""
        if isinstance(result, Raw):
            request.setHeader(b"Content-Type", result.content_type)
            return _whole(request, result.body)
        if IResource.providedBy(result):
            return result  # Klein renders it: a stream that writes as it goes
        request.setHeader(b"Content-Type", JSON_TYPE)
        return _whole(request, json.dumps(result).encode("utf-8"))

    def _observe(self, request: IRequest, start: float) -> None:
        route = getattr(request, "mozpool_route", "(unmatched)")
        method = request.method.decode("latin-1")
        self.http_metrics.observe(method, route, request.code, self.clock.seconds() - start)

    @_app.handle_errors(Exception)
    def _errors(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        err: ApiError
        if isinstance(exc, ApiError):
            err = exc
        elif isinstance(exc, wz.MethodNotAllowed):
            err = MethodNotAllowed("method not allowed here", sorted(exc.valid_methods or []))
        elif isinstance(exc, wz.HTTPException):
            err = NotFound("no such endpoint")
        elif isinstance(exc, DatabaseUnavailable):
            err = ServiceUnavailable(str(exc) or "database unavailable", getattr(exc, "retry_after", RETRY_AFTER))
        elif isinstance(exc, UnknownObject):
            err = NotFound(str(exc))
        elif isinstance(exc, DeviceHeld):
            err = ApiError(exc.message, request=exc.request)
            err.status = 409
        elif isinstance(exc, DatabaseConflict):
            # A write refused by a unique index, or a transaction that kept losing to concurrent
            # work (mozpool.db.pool): someone else got there first, which the caller may retry.
            err = Conflict(f"conflicting concurrent change: {exc}")
        elif isinstance(exc, StateMismatch):
            err = ApiError(str(exc))
            err.status = 409
        elif isinstance(exc, defer.CancelledError):
            return b""  # the client went away
        else:
            log.failure(
                "bug answering {method} {uri}",
                failure,
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
            )
            err = ApiError("internal error")
        request.setResponseCode(err.status)
        for name, value in err.headers.items():
            request.setHeader(name.encode("ascii"), value if isinstance(value, bytes) else value.encode("utf-8"))
        request.setHeader(b"Content-Type", JSON_TYPE)
        return json.dumps(err.body()).encode("utf-8")

    async def _audit(self, request: IRequest, caller: auth.Caller, kw: dict[str, str], result: Any) -> None:
        """One line in the object's log for an authorised change, naming the caller.  Machines
        are not audited: another server's call and a device's live-boot events are recorded by
        the machines they drive."""
        if caller.kind in ("server", "device") or kw.get("event") in DEVICE_EVENTS:
            return
        who = f"{caller.name} ({caller.role})" if caller.role else f"{caller.name} (auth {self.authority.mode})"
        path = request.path.decode("utf-8", "replace")
        line = logs.printable(f"{request.method.decode('ascii', 'replace')} {path} by {who}")
        log.info("audit: {line}", line=line)
        if isinstance(result, dict) and isinstance(result.get("request"), dict):
            target: tuple[str, Any] | None = ("request", result["request"]["id"])  # a new request
        elif "device" in kw:
            target = ("device", kw["device"])
        elif "id" in kw:
            target = ("request", validate.request_id(kw["id"]))
        else:
            target = None
        if target is None:
            return
        kind, key = target
        try:
            if kind == "device":
                await self.db.runInteraction(logs.add_device_log_by_name, key, "audit", line, self.now())
            else:
                await self.db.runInteraction(logs.add_log, "request", key, "audit", line, self.now())
        except Exception as e:
            log.warn("audit line not written ({error}): {line}", error=e, line=line)

    def body(self, request: IRequest) -> dict[str, Any]:
        return validate.json_object(validate.read_body(request))

    def _need(self, collaborator: C | None, what: str) -> C:
        if collaborator is None:
            raise NotAvailable(f"{what} is not available in this version")
        return collaborator

    def now(self) -> str:
        return dbnow(self.clock)

    # --- MozPool layer ----------------------------------------------------------------------

    @endpoint("/api/version/", "GET")
    async def version(self, request: IRequest) -> Any:
        return {"version": __version__}

    @endpoint("/api/device/list/", "GET")
    async def device_list(self, request: IRequest) -> Any:
        if self.view is not None:
            await self.view.sync()
            return Raw(self.view.details_body() if validate.flag(request, "details") else self.view.names_body())
        if validate.flag(request, "details"):
            return {"devices": await devices.list_details(self.db, liveness.dead_before(self.clock, self.time_scale))}
        return {"devices": await devices.list_names(self.db)}

    @endpoint("/api/device/{device}/request/", "POST")
    async def request_device(self, request: IRequest, device: str) -> Any:
        if device != "any" and await self.db.runInteraction(queries.device_id, device) is None:
            raise NotFound(f"unknown device {device}")
        await self.owners.check_origin(request)
        body = self.body(request)
        spec = validate.request_creation(body)
        image = await self.images.submit(spec.image)
        if image is None:
            raise NotFound(f"unknown image {spec.image}")
        boot_config = validate.boot_config_from(body, image["boot_config_keys"])
        broker = self._need(self.broker, "request creation")
        caller: auth.Caller = request.mozpool_caller  # type: ignore[attr-defined]
        created_by = caller.name if caller.kind == "token" else None
        created = await broker.create_request(device, replace(spec, boot_config=boot_config, created_by=created_by))
        return {"request": created}

    @endpoint("/api/request/list/", "GET")
    async def request_list(self, request: IRequest) -> Any:
        include_closed = validate.flag(request, "include_closed")
        return {"requests": await requests.list_requests(self.db, include_closed)}

    @endpoint("/api/request/{id}/details/", "GET")
    async def request_details(self, request: IRequest, id: str) -> Any:
        request_id = validate.request_id(id)
        found = await self.db.runInteraction(queries.request_details, request_id)
        if found is None:
            raise NotFound(f"unknown request {request_id}")
        return requests.public_request(found)

    @endpoint("/api/request/{id}/status/", "GET")
    async def request_status(self, request: IRequest, id: str) -> Any:
        request_id = validate.request_id(id)
        found = await self.db.runInteraction(queries.request_status, request_id, self.now())
        if found is None:
            raise NotFound(f"unknown request {request_id}")
        if found["state"] == "finding_device" and self.broker is not None:
            found["queue"] = await self.broker.queue_place(request_id)
        return found

    @endpoint("/api/request/{id}/log/", "GET")
    async def request_log(self, request: IRequest, id: str) -> Any:
        request_id = validate.request_id(id)
        timeperiod, limit, bad = self._log_params(request)
        found = await self.db.runInteraction(queries.request_log, request_id, self.now(), timeperiod, limit)
        if found is None:
            raise NotFound(f"unknown request {request_id}")
        if bad is not None:
            raise bad
        return {"log": found}

    @endpoint("/api/request/{id}/renew/", "POST", redirecting=True)
    async def request_renew(self, request: IRequest, id: str) -> Any:
        request_id = validate.request_id(id)
        await self.owners.require(request, "request", request_id)
        duration = validate.duration(self.body(request))
        await self._need(self.broker, "renewing requests").renew(request_id, duration)
        return NO_CONTENT

    @endpoint("/api/request/{id}/return/", "POST", redirecting=True)
    async def request_return(self, request: IRequest, id: str) -> Any:
        request_id = validate.request_id(id)
        await self.owners.require(request, "request", request_id)
        await self._need(self.broker, "returning requests").return_request(request_id)
        return NO_CONTENT

    @endpoint("/api/request/{id}/event/{event}/", "GET", "POST", redirecting=True)
    async def request_event(self, request: IRequest, id: str, event: str) -> Any:
        request_id = validate.request_id(id)
        await self.owners.require(request, "request", request_id)
        body = self.body(request) if request.method == b"POST" else {}
        checked = validate.request_event_body(event, body)
        await self._need(self.broker, "request events").request_event(request_id, event, checked)
        return {}

    @endpoint("/api/image/list/", "GET")
    async def image_list(self, request: IRequest) -> Any:
        return {"images": await catalog.list_images(self.db)}

    # --- LifeGuard layer --------------------------------------------------------------------

    @endpoint("/api/device/{device}/event/{event}/", "GET", "POST", redirecting=True)
    async def device_event(self, request: IRequest, device: str, event: str) -> Any:
        await self.owners.require(request, "device", device)
        body = self.body(request) if request.method == b"POST" else {}
        checked = validate.device_event_body(event, body)
        await self._need(self.lifeguard, "device events").device_event(device, event, checked)
        return {}

    @endpoint("/api/device/{device}/state-change/{old}/to/{new}/", "POST", redirecting=True)
    async def state_change(self, request: IRequest, device: str, old: str, new: str) -> Any:
        await self.owners.require(request, "device", device)
        validate.state_name(new)
        await self._need(self.lifeguard, "state changes").state_change(device, old, new)
        return {}

    @endpoint("/api/device/{device}/status/", "GET")
    async def device_status(self, request: IRequest, device: str) -> Any:
        found = await self.db.runInteraction(queries.device_status, device, self.now())
        if found is None:
            raise NotFound(f"unknown device {device}")
        return found

    @endpoint(_STATE_TEMPLATE, "GET")
    async def device_state(self, request: IRequest, device: str) -> Any:
        """(Most ``?cache=1`` calls are answered by :meth:`cached_state_at_once`.)"""
        if not validate.flag(request, "cache"):
            state = await self.db.runInteraction(queries.device_state, device)
        elif self.view is not None:
            state = self.view.state_of(device) if self.view.usable() else None
            if state is None:
                state = await self.db.runInteraction(queries.device_state, device)
            if state is not None:
                self._set_cache_headers(request, self.view.state_expires())
        else:
            states, expires = await self.snapshot.states()
            state = states.get(device)
            if state is None:
                state = await self.db.runInteraction(queries.device_state, device)
            if state is not None:
                self._set_cache_headers(request, expires)
        if state is None:
            raise NotFound(f"unknown device {device}")
        return {"state": state}

    # --- BMM layer --------------------------------------------------------------------------

    @endpoint("/api/device/{device}/power-cycle/", "POST", redirecting=True)
    async def power_cycle(self, request: IRequest, device: str) -> Any:
        await self.owners.require(request, "device", device)
        pxe, boot_config = validate.power_cycle_body(self.body(request))
        if pxe is not None and await self.db.runInteraction(queries.pxe_config, pxe) is None:
            raise NotFound(f"unknown PXE config {pxe}")
        await self._need(self.bmm, "power control").power_cycle(device, pxe, boot_config)
        return {}

    @endpoint("/api/device/{device}/power-off/", "GET", "POST", redirecting=True)
    async def power_off(self, request: IRequest, device: str) -> Any:
        await self.owners.require(request, "device", device)
        await self._need(self.bmm, "power control").power_off(device)
        return {}

    @endpoint("/api/device/{device}/clear-pxe/", "POST", redirecting=True)
    async def clear_pxe(self, request: IRequest, device: str) -> Any:
        await self.owners.require(request, "device", device)
        await self._need(self.bmm, "PXE control").clear_pxe(device)
        return {}

    @endpoint("/api/device/{device}/ping/", "GET", redirecting=True)
    async def ping(self, request: IRequest, device: str) -> Any:
        await self.owners.require(request, "device", device)
        result = await self._need(self.bmm, "ping").ping(device)
        return {"success": bool(result)}

    @endpoint("/api/relay/{relay}/test/", "GET", redirecting=True)
    async def relay_test(self, request: IRequest, relay: str) -> Any:
        await self.owners.require(request, "relay", relay)
        result = await self._need(self.bmm, "relay tests").relay_test(relay)
        return {"success": bool(result)}

    @endpoint("/api/device/{device}/log/", "GET")
    async def device_log(self, request: IRequest, device: str) -> Any:
        timeperiod, limit, bad = self._log_params(request)
        found = await self.db.runInteraction(queries.device_log, device, self.now(), timeperiod, limit)
        if found is None:
            raise NotFound(f"unknown device {device}")
        if bad is not None:
            raise bad
        return {"log": found}

    @endpoint("/api/device/{device}/bootconfig/", "GET")
    async def bootconfig(self, request: IRequest, device: str) -> Any:
        exists, text = await self.db.runInteraction(queries.next_boot_config, device)
        if not exists:
            raise NotFound(f"unknown device {device}")
        return Raw((text or "{}").encode("utf-8"))

    @endpoint("/api/device/{device}/set-comments/", "POST", redirecting=True)
    async def set_comments(self, request: IRequest, device: str) -> Any:
        device_id = await self.owners.require(request, "device", device)
        comments = validate.comments(self.body(request))
        await self.db.runInteraction(queries.set_comments, device_id, comments, self.now())
        return {}

    @endpoint("/api/device/{device}/set-environment/", "POST", redirecting=True)
    async def set_environment(self, request: IRequest, device: str) -> Any:
        device_id = await self.owners.require(request, "device", device)
        environment = validate.environment(self.body(request))
        await self.db.runInteraction(queries.set_environment, device_id, environment, self.now())
        return {}

    @endpoint("/api/environment/list/", "GET")
    async def environment_list(self, request: IRequest) -> Any:
        return {"environments": await catalog.list_environments(self.db)}

    @endpoint("/api/bmm/pxe_config/list/", "GET")
    async def pxe_config_list(self, request: IRequest) -> Any:
        configs = await catalog.list_pxe_configs(self.db, validate.flag(request, "active_only"))
        return {"pxe_configs": [c["name"] for c in configs]}

    @endpoint("/api/bmm/pxe_config/{pxe}/details/", "GET")
    async def pxe_config_details(self, request: IRequest, pxe: str) -> Any:
        found = await self.db.runInteraction(queries.pxe_config, pxe)
        if found is None:
            raise NotFound(f"unknown PXE config {pxe}")
        return {"details": found}

    # --- additions (section 7) --------------------------------------------------------------

    @endpoint("/api/openapi.json", "GET")
    async def openapi_document(self, request: IRequest) -> Any:
        return Raw(self._openapi)

    @endpoint("/api/events", "GET")
    async def event_stream(self, request: IRequest) -> Any:
        """Server-Sent Events of the whole pool's changes (``mozpool.web.events``)."""
        devices_, requests_, types = validate.event_filter(request, event_stream.TYPES)
        last = validate.last_event_id(request)
        hub = self._need(self.events, "the event stream")
        return event_stream.EventStream(hub, event_stream.EventFilter(devices_, requests_, types), last)

    @endpoint("/api/server/list/", "GET")
    async def server_list(self, request: IRequest) -> Any:
        """Every imaging server sharing the database: alive while its heartbeats keep coming."""
        cutoff = liveness.dead_before(self.clock, self.time_scale)
        servers = await self.db.runInteraction(catalog.server_list)
        return {"servers": [
            {"fqdn": s["fqdn"], "alive": liveness.alive(s["last_seen"], cutoff),
             "last_seen": apitime(s["last_seen"]), "devices": s["devices"]}
            for s in servers
        ]}

    @endpoint("/api/whoami/", "GET")
    async def whoami(self, request: IRequest) -> Any:
        """The caller as this server sees it, and what it may do (the UI hides the rest)."""
        caller: auth.Caller = request.mozpool_caller  # type: ignore[attr-defined]
        role = caller.role
        if self.authority.mode == auth.OPEN and role is None:
            role = "admin"  # open: anyone may do anything
        elif role is None and self.authority.anonymous_read:
            role = "reader"
        return {"name": caller.name, "kind": caller.kind, "role": role, "mode": self.authority.mode}

    @endpoint("/api/token/list/", "GET")
    async def token_list(self, request: IRequest) -> Any:
        rows = await self.db.runInteraction(tokens.list_tokens)
        return {"tokens": [{"name": t.name, "role": t.role, "created": t.created.replace(" ", "T"),
                            "revoked": t.revoked and t.revoked.replace(" ", "T")} for t in rows]}

    @endpoint("/api/token/create/", "POST")
    async def token_create(self, request: IRequest) -> Any:
        body = self.body(request)
        name = validate.string(body, "name")
        role = validate.string(body, "role")
        try:
            token = await self.db.runInteraction(tokens.create, name, role, self.now())
        except tokens.TokenError as e:
            raise (Conflict(str(e)) if "exists" in str(e) else BadRequest(str(e))) from None
        return {"name": name, "role": role, "token": token}

    @endpoint("/api/token/{name}/revoke/", "POST")
    async def token_revoke(self, request: IRequest, name: str) -> Any:
        try:
            await self.db.runInteraction(tokens.revoke, name, self.now())
        except tokens.TokenError as e:
            raise NotFound(str(e)) from None
        return {}

    @endpoint("/api/pool/summary/", "GET")
    async def pool_summary(self, request: IRequest) -> Any:
        generated_at = apitime(self.now())
        if self.view is not None:
            await self.view.sync()
            return Raw(self.view.summary_body(generated_at))
        report = await summary.pool_summary(self.db, liveness.dead_before(self.clock, self.time_scale))
        return {"generated_at": generated_at, **report}

    @endpoint("/metrics", "GET")
    async def metrics_text(self, request: IRequest) -> Any:
        boots = None
        try:
            pool = await self.db.runInteraction(queries.metrics)
            if self.health is not None:
                boots = await self.health.boot_summary(metrics.BOOT_HOURS)
        except DatabaseUnavailable as e:
            log.warn("metrics scrape without the database: {error}", error=e)
            pool = None
        return Raw(metrics.render(__version__, pool, self.http_metrics, self.events, boots), metrics.CONTENT_TYPE)

    # --- health (issue 15): history, explanations, boot telemetry ------------------------------

    @endpoint("/api/device/{device}/history/", "GET")
    async def device_history(self, request: IRequest, device: str) -> Any:
        """The device's transitions, newest first, a page at a time (``?limit=&before=``)."""
        limit, before, bad = self._history_params(request)
        found = await self.db.runInteraction(history.device_history_by_name, device, limit, before)
        if found is None:
            raise NotFound(f"unknown device {device}")
        if bad is not None:
            raise bad
        return found

    @endpoint("/api/request/{id}/history/", "GET")
    async def request_history(self, request: IRequest, id: str) -> Any:
        """The request's transitions and its device's while it held it, newest first, paged."""
        request_id = validate.request_id(id)
        limit, before, bad = self._history_params(request)
        found = await self.db.runInteraction(history.request_history_if_known, request_id, limit, before)
        if found is None:
            raise NotFound(f"unknown request {request_id}")
        if bad is not None:
            raise bad
        return found

    @endpoint("/api/device/{device}/why/", "GET")
    async def device_why(self, request: IRequest, device: str) -> Any:
        """Why the device is in its state, and what happens next (mozpool.health.explain)."""
        return await self._need(self.health, "explanations").explain_device(device)

    @endpoint("/api/request/{id}/why/", "GET")
    async def request_why(self, request: IRequest, id: str) -> Any:
        request_id = validate.request_id(id)
        return await self._need(self.health, "explanations").explain_request(request_id)

    @endpoint("/api/pool/boots/", "GET")
    async def boot_summary(self, request: IRequest) -> Any:
        """p50/p95 of each boot phase per image and hardware type, over the last ``?hours=``."""
        hours = min(validate.int_param(request, "hours") or metrics.BOOT_HOURS, MAX_BOOT_HOURS)
        found = await self._need(self.health, "boot telemetry").boot_summary(hours)
        return {"generated_at": apitime(self.now()), **found}

    # --- fault isolation (issue 15): power controllers and quarantines ------------------------

    @endpoint("/api/health/", "GET")
    async def health_report(self, request: IRequest) -> Any:
        """Every power controller's health, and each server's quarantines within this server's
        window (its cap and window are this server's settings)."""
        status = await self.lifeguard.quarantine_status() if self.lifeguard is not None else None
        window = status["window"] if status else 600.0
        since = dbnow(self.clock, -window * self.time_scale)
        return await self.db.runInteraction(board_health.report, since, status)

    @endpoint("/api/relay/{relay}/health/", "GET")
    async def relay_health(self, request: IRequest, relay: str) -> Any:
        found = await self.db.runInteraction(board_health.relay_report, relay)
        if found is None:
            raise NotFound(f"unknown relay board {relay}")
        return found

    # --- helpers ----------------------------------------------------------------------------

    def _history_params(self, request: IRequest) -> tuple[int, int | None, BadRequest | None]:
        """limit and before, or the error to raise once the object is known to exist."""
        try:
            before = validate.int_param_any(request, "before") if validate.flag(request, "before") else None
            return validate.int_param(request, "limit"), before, None
        except BadRequest as e:
            return 0, None, e

    def _log_params(self, request: IRequest) -> tuple[int, int, BadRequest | None]:
        """timeperiod and limit, or the error to raise once the object is known to exist."""
        try:
            return validate.int_param(request, "timeperiod"), validate.int_param(request, "limit"), None
        except BadRequest as e:
            return 0, 0, e

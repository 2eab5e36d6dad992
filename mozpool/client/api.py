"""The API table of the client: each call of spec/http-api.md as a :class:`Call` (method, path,
body) and the parsing of its answer.  Pure functions, no I/O: the Twisted client
(:mod:`mozpool.client.tx`) and the blocking one (:mod:`mozpool.client.sync`) both send these,
so the API is written down once on the client side.

The same calls work against the original MozPool 4.2.1, whose wire format this project keeps;
only ``/api/events``, ``/api/pool/summary/`` and ``/api/server/list/`` are newer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode

from mozpool.client import errors

#: How the client tells the server which kind of stream it reads.
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Call:
    """One HTTP call of the API, before a server is chosen."""

    method: str
    #: path and query, starting with ``/api/``
    path: str
    #: sent as JSON; None sends no body
    body: dict[str, Any] | None = None
    #: statuses that mean success
    ok: tuple[int, ...] = (200,)
    #: turns the decoded JSON of a success (None for an empty body) into the result
    parse: Callable[[Any], Any] = field(default=lambda body: body, compare=False)
    #: for messages: ``"request 12 status"``
    what: str = ""
    #: False for calls that must not be sent twice (request creation): after a timeout past
    #: sending, no other server is asked
    idempotent: bool = True
    #: an event stream: the driver hands back the open response instead of reading it
    stream: bool = False
    #: builds the error for a 409 (a busy device); None: :class:`errors.Conflict`
    conflict: Callable[[int, str, Any], errors.ApiError] | None = field(default=None, compare=False)

    def data(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode("utf-8")


def segment(name: str | int) -> str:
    """One path segment: ``/`` and everything unsafe percent-encoded (http-api.md 1.1)."""
    return quote(str(name), safe="")


def _request_path(request_id: int, tail: str) -> str:
    return f"/api/request/{segment(request_id)}/{tail}"


def _device_path(device: str, tail: str) -> str:
    return f"/api/device/{segment(device)}/{tail}"


def _query(**params: Any) -> str:
    """``?a=1&b=2`` of the parameters that are not None/0/False (flags are sent as ``=1``)."""
    items = {k: (1 if v is True else v) for k, v in params.items() if v not in (None, 0, False, "", ())}
    return "?" + urlencode(items, doseq=True) if items else ""


def _key(key: str) -> Callable[[Any], Any]:
    return lambda body: body[key]


# --- the request object -------------------------------------------------------------------


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class QueuePlace:
    """Where a request waiting for a device stands (the ``queue`` of its status, issue 14):
    ``position`` 1 is served next among all waiting requests, ``ahead`` counts those before it
    that could take the same devices, ``eta`` is the UTC time (``YYYY-MM-DDTHH:MM:SS``) it
    should be ready, or None when the server cannot tell."""

    position: int
    ahead: int
    eta: str | None = None
    why: str = ""

    @classmethod
    def from_status(cls, status: Any) -> "QueuePlace | None":
        """The place a status answer carries; None when it has none (not waiting, or a server
        without a queue) or it is not one (a wait must not break on a malformed extra)."""
        place = status.get("queue") if isinstance(status, dict) else None
        if not isinstance(place, dict):
            return None
        try:
            position, ahead = int(place["position"]), int(place["ahead"])
        except (KeyError, TypeError, ValueError):
            return None
        eta = place.get("eta")
        return cls(position, ahead, eta if isinstance(eta, str) and eta else None, str(place.get("why") or ""))

    def eta_text(self, today: str | None = None) -> str:
        """``~12:04 UTC``, to the minute (an estimate); with the date (``~2030-01-02 12:04
        UTC``) when ``today`` (``YYYY-MM-DD``, UTC) is given and the ETA is another day."""
        if self.eta is None:
            return "no estimate yet"
        day, _, clock = self.eta.partition("T")
        shown = clock[:5] if today is None or day == today else f"{day} {clock[:5]}"
        return f"~{shown} UTC"

    def text(self, today: str | None = None) -> str:
        """``3rd in queue (2 ahead), ready by ~12:04 UTC``."""
        ready = f"ready by {self.eta_text(today)}" if self.eta else self.eta_text()
        return f"{ordinal(self.position)} in queue ({self.ahead} ahead), {ready}"

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "ahead": self.ahead, "eta": self.eta, "why": self.why}


class Request:
    """A request as the server describes it (http-api.md 3.4, 3.6), with its state when known.
    ``data`` keeps every key the server sent, so JSON output loses nothing; ``queue`` is its
    place in the queue when its status was read while it waited for a device."""

    def __init__(self, data: dict[str, Any], state: str | None = None) -> None:
        self.data = dict(data)
        self.state = state if state is not None else data.get("state")
        self.queue: QueuePlace | None = None

    @property
    def id(self) -> int:
        return int(self.data["id"])

    @property
    def url(self) -> str:
        return str(self.data.get("url") or "")

    @property
    def assigned_device(self) -> str:
        return str(self.data.get("assigned_device") or "")

    @property
    def server(self) -> str | None:
        """The base URL of the server that owns the request (its ``url`` up to ``/api/``):
        every later call for it goes there."""
        head, sep, _ = self.url.partition("/api/")
        return head if sep else None

    @property
    def priority(self) -> int | None:
        """0-100, higher served first; None from a server without a queue."""
        value = self.data.get("priority")
        return None if value is None else int(value)

    @property
    def queue_timeout(self) -> int | None:
        """Seconds it may wait for a device; None from a server without a queue."""
        value = self.data.get("queue_timeout")
        return None if value is None else int(value)

    def to_json(self) -> dict[str, Any]:
        out = {**self.data, "state": self.state}
        if self.queue is not None:
            out["queue"] = self.queue.to_json()
        return out

    def __repr__(self) -> str:
        return f"<Request {self.id} {self.state or '?'} {self.assigned_device or '-'} {self.url}>"


def is_final(state: str) -> bool:
    """A request state after which nothing happens (http-api.md 6.1; ``expired`` is the name old
    databases and the original used for ``closed``)."""
    return state in ("closed", "expired") or state.startswith("failed_")


# --- errors -----------------------------------------------------------------------------


def result(call: Call, status: int, body: bytes) -> Any:
    """The result of ``call`` from its answer, or the :mod:`errors` exception it means.
    (Redirects and 503 are the server rotation's business and never reach here.)"""
    decoded: Any = None
    if body.strip():
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
            if status in call.ok:
                raise errors.ServerError(status, f"{call.what}: the answer is not JSON") from None
    if status in call.ok:
        try:
            return call.parse(decoded)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise errors.ServerError(status, f"{call.what}: unexpected answer ({e!r})", decoded) from None
    message = decoded.get("error") if isinstance(decoded, dict) else None
    if not isinstance(message, str) or not message:
        message = f"{call.what}: HTTP {status}"
    if status == 409 and call.conflict is not None:
        raise call.conflict(status, message, decoded)
    kind = {400: errors.BadRequest, 401: errors.NotAllowed, 403: errors.NotAllowed, 404: errors.NotFound,
            409: errors.Conflict}.get(status)
    if kind is None:
        kind = errors.ServerError if status >= 500 else errors.ApiError
    if status == 404 and message == "no such endpoint":
        message = f"{call.what}: this server has no {call.path.split('?')[0]}"
    raise kind(status, message, decoded)


# --- the calls --------------------------------------------------------------------------


def version() -> Call:
    return Call("GET", "/api/version/", parse=_key("version"), what="version")


def device_names() -> Call:
    return Call("GET", "/api/device/list/", parse=_key("devices"), what="device list")


def devices(state: str | None = None, environment: str | None = None) -> Call:
    """Every device with its details (http-api.md 3.2), or those whose state and environment
    match the shell-style patterns given (``failed_*``)."""

    def wanted(body: Any) -> list[dict[str, Any]]:
        return [row for row in body["devices"]
                if (state is None or fnmatchcase(str(row.get("state")), state))
                and (environment is None or fnmatchcase(str(row.get("environment")), environment))]

    return Call("GET", "/api/device/list/?details=1", parse=wanted, what="device list")


def device(name: str) -> Call:
    """One device's details.  The API has no per-device details call, so this reads the list,
    as the original client did."""

    def pick(body: Any) -> dict[str, Any]:
        for row in body["devices"]:
            if row.get("name") == name:
                return dict(row)
        raise errors.NotFound(404, f"unknown device {name}")

    return Call("GET", "/api/device/list/?details=1", parse=pick, what=f"device {name}")


def images() -> Call:
    return Call("GET", "/api/image/list/", parse=_key("images"), what="image list")


def environments() -> Call:
    return Call("GET", "/api/environment/list/", parse=_key("environments"), what="environment list")


def request_device(device: str, image: str, duration: int, assignee: str, environment: str | None = None,
                   boot_config: dict[str, Any] | None = None, priority: int | None = None,
                   queue_timeout: int | None = None) -> Call:
    """Ask for ``device`` (a name or ``any``).  ``boot_config``'s keys go into the body next to
    the others, as the server reads them (e.g. ``{"b2gbase": URL}`` for ``b2g``).  ``priority``
    (0-100) and ``queue_timeout`` (seconds to wait for a device) are sent only when given, so
    the server's defaults apply otherwise and an older server sees the body it knows."""
    body: dict[str, Any] = dict(boot_config or {})
    body.update(assignee=assignee, duration=int(duration), image=image)
    if environment not in (None, "", "any"):
        body["environment"] = environment
    if priority is not None:
        body["priority"] = int(priority)
    if queue_timeout is not None:
        body["queue_timeout"] = int(queue_timeout)

    def busy(status: int, message: str, answer: Any) -> errors.ApiError:
        return errors.DeviceBusy(status, message, answer, device)

    return Call("POST", _device_path(device, "request/"), body,
                parse=lambda answer: Request(answer["request"], "new"),
                what=f"request for {device}", idempotent=False, conflict=busy)


def requests(include_closed: bool = False) -> Call:
    return Call("GET", "/api/request/list/" + _query(include_closed=include_closed), parse=_key("requests"),
                what="request list")


def request_details(request_id: int) -> Call:
    return Call("GET", _request_path(request_id, "details/"), parse=lambda body: Request(body),
                what=f"request {request_id} details")


def request_status(request_id: int) -> Call:
    """``{"state", "log"}`` of a request."""
    return Call("GET", _request_path(request_id, "status/"), what=f"request {request_id} status")


def request_log(request_id: int, timeperiod: int = 0, limit: int = 0) -> Call:
    return Call("GET", _request_path(request_id, "log/") + _query(timeperiod=timeperiod, limit=limit),
                parse=_key("log"), what=f"request {request_id} log")


def renew(request_id: int, duration: int) -> Call:
    return Call("POST", _request_path(request_id, "renew/"), {"duration": int(duration)}, ok=(200, 204),
                parse=lambda body: None, what=f"renewing request {request_id}")


def return_request(request_id: int) -> Call:
    return Call("POST", _request_path(request_id, "return/"), {}, ok=(200, 204), parse=lambda body: None,
                what=f"returning request {request_id}")


def request_event(request_id: int, event: str, body: dict[str, Any] | None = None) -> Call:
    return Call("POST", _request_path(request_id, f"event/{segment(event)}/"), body or {},
                parse=lambda answer: None, what=f"event {event} of request {request_id}")


def device_status(name: str) -> Call:
    """``{"state", "log"}`` of a device (its 100 latest log lines)."""
    return Call("GET", _device_path(name, "status/"), what=f"device {name} status")


def device_state(name: str) -> Call:
    return Call("GET", _device_path(name, "state/"), parse=_key("state"), what=f"device {name} state")


def device_log(name: str, timeperiod: int = 0, limit: int = 0) -> Call:
    return Call("GET", _device_path(name, "log/") + _query(timeperiod=timeperiod, limit=limit),
                parse=_key("log"), what=f"device {name} log")


def device_event(name: str, event: str, body: dict[str, Any] | None = None) -> Call:
    return Call("POST", _device_path(name, f"event/{segment(event)}/"), body or {}, parse=lambda answer: None,
                what=f"event {event} of device {name}")


#: The ``please_*`` events an operator sends a device's LifeGuard (http-api.md 4.1).
PLEASE = ("image", "power_cycle", "self_test", "start_maintenance")


def please(name: str, action: str, image: str | None = None, boot_config: dict[str, Any] | str | None = None) -> Call:
    """``please_<action>``: ``image`` (needs ``image``), ``power_cycle``, ``self_test`` or
    ``start_maintenance``."""
    if action not in PLEASE:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(PLEASE)}")
    body: dict[str, Any] = {}
    if action == "image":
        if not image:
            raise ValueError("please_image needs an image")
        body["image"] = image
        if boot_config is not None:
            body["boot_config"] = boot_config if isinstance(boot_config, str) else json.dumps(boot_config)
    return device_event(name, "please_" + action, body)


def state_change(name: str, old: str, new: str) -> Call:
    return Call("POST", _device_path(name, f"state-change/{segment(old)}/to/{segment(new)}/"), {},
                parse=lambda answer: None, what=f"state change of {name}")


def power_cycle(name: str, pxe_config: str | None = None, boot_config: dict[str, Any] | str | None = None) -> Call:
    body: dict[str, Any] = {}
    if pxe_config is not None:
        body["pxe_config"] = pxe_config
        if boot_config is not None:
            body["boot_config"] = boot_config if isinstance(boot_config, str) else json.dumps(boot_config)
    return Call("POST", _device_path(name, "power-cycle/"), body, parse=lambda answer: None,
                what=f"power-cycle of {name}")


def power_off(name: str) -> Call:
    return Call("POST", _device_path(name, "power-off/"), {}, parse=lambda answer: None,
                what=f"power-off of {name}")


def ping(name: str) -> Call:
    return Call("GET", _device_path(name, "ping/"), parse=lambda body: bool(body["success"]),
                what=f"ping of {name}")


def pool_summary() -> Call:
    return Call("GET", "/api/pool/summary/", what="pool summary")


def server_list() -> Call:
    """``[{"fqdn", "alive", "last_seen", "devices"}]``; only newer servers have it (see
    :func:`servers_from_devices` for the others)."""
    return Call("GET", "/api/server/list/", parse=_key("servers"), what="server list")


def servers_from_devices(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The imaging servers named by a detailed device list, with their device counts: the server
    list of a server without ``/api/server/list/``.  Whether each is alive is not known there."""
    counts: dict[str, int] = {}
    for row in rows:
        name = row.get("imaging_server") or ""
        counts[name] = counts.get(name, 0) + 1
    return [{"fqdn": name, "alive": None, "last_seen": None, "devices": n} for name, n in sorted(counts.items())]


def events(devices: Iterable[str] = (), requests: Iterable[int] = (), types: Iterable[str] = (),
           last_event_id: int | None = None) -> Call:
    """The pool's event stream (README "Following the pool live"), filtered: the filters of
    one kind are alternatives, different kinds must all match.  ``last_event_id`` resumes after
    that event."""
    query = _query(device=",".join(devices), request=",".join(str(r) for r in requests), type=",".join(types),
                   last_event_id=last_event_id)
    return Call("GET", "/api/events" + query, stream=True, what="event stream")

"""What a client call does, written once without I/O ("sans-IO"), for both clients.

A *plan* is a generator.  It yields instructions and gets their outcomes back:

- :class:`Attempt`: one HTTP exchange with one server.  The driver sends back a :class:`Reply`,
  or an :class:`Unreachable` when the server could not be reached or did not answer in time.
- :class:`Pause`: wait this long (between two polls of a request).
- :class:`Emit`: hand this value to the caller's callback (a request's progress).

and returns the call's result, or raises one of :mod:`mozpool.client.errors`.  The Twisted
driver (:mod:`mozpool.client.tx`) performs the instructions with treq and the reactor's clock,
the blocking driver (:mod:`mozpool.client.sync`) with ``http.client``; the rules below (which
server, in what order, what is retried, when to give up) are the same for both and are tested
without a network.

Servers (issue 13, from the seed: "Clients should be pre-configured with a list of servers, and
retry servers in random order until successful"): :func:`exchange` tries the configured servers
in random order, moving on from one that refuses the connection, does not answer within the
attempt bound, or answers 503; the whole call is bounded too.  A request's calls go to the server
that owns it (its ``url``) first.  Redirects (302 to the owner of a device or request) are
followed with the same method and body, and the token, at most :data:`MAX_REDIRECTS` times.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, TypeVar
from urllib.parse import urljoin, urlsplit

from mozpool import __version__
from mozpool.client import api, errors
from mozpool.client.config import ClientConfig

T = TypeVar("T")

#: Statuses whose Location is followed with the same method and body.
REDIRECTS = (301, 302, 307, 308)
MAX_REDIRECTS = 3
#: Seconds between two polls of a request being waited for.
POLL_INTERVAL = 1.0
USER_AGENT = f"mozpool-client/{__version__}"


@dataclass(frozen=True)
class Attempt:
    """One HTTP exchange with one server, bounded by ``timeout`` seconds."""

    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]
    timeout: float
    #: keep the response open and hand it back (an event stream) instead of reading it
    stream: bool = False


@dataclass
class Reply:
    """A server's answer.  ``headers`` names are lower case.  For a stream answered 200,
    ``body`` is empty and ``stream`` is the driver's open response."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: Any = None


@dataclass(frozen=True)
class Unreachable:
    """The server could not be reached, or did not answer in time.  ``sent``: the call may have
    reached the server (it timed out or broke after the request was written)."""

    reason: str
    sent: bool = False


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Emit:
    value: Any


Instruction = Attempt | Pause | Emit
Plan = Generator[Instruction, Any, T]


@dataclass(frozen=True)
class Progress:
    """Where a request being waited for stands: its state and its device's, and its place in
    the queue while it waits for a device (issue 14)."""

    request_id: int
    state: str
    device: str | None = None
    device_state: str | None = None
    queue: api.QueuePlace | None = None

    def line(self, state: Callable[[str | None], str] = lambda name: name or "?", today: str | None = None) -> str:
        """``request 12: pending, device panda-0003 android_downloading``, or while queued
        ``request 12: finding_device, no device yet — 3rd in queue (2 ahead), ready by ~12:04
        UTC``; ``state`` writes a state name (the CLI colours it), ``today`` (``YYYY-MM-DD``)
        lets an ETA on another day show its date."""
        device = f"device {self.device} {state(self.device_state)}" if self.device else "no device yet"
        place = f" — {self.queue.text(today)}" if self.queue is not None else ""
        return f"request {self.request_id}: {state(self.state)}, {device}{place}"


class Context:
    """The settings every plan reads: servers, token, bounds, the clock and the randomness."""

    def __init__(self, config: ClientConfig, now: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.now = now
        self.random = rng or random.Random()

    def order(self, prefer: str | None = None) -> list[str]:
        """The servers to try, in random order; ``prefer`` (a request's owner) first."""
        others = [s for s in self.config.servers if s != prefer]
        self.random.shuffle(others)
        return ([prefer] if prefer else []) + others

    def headers(self, call: api.Call) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT,
                   "Accept": api.EVENT_STREAM if call.stream else "application/json"}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        return headers


def server_of(url: str) -> str:
    """The base URL (scheme, host, port) of an absolute URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def exchange(ctx: Context, call: api.Call, prefer: str | None = None) -> Plan[Any]:
    """Send ``call`` to one server after another until one answers; its result (see the module
    docstring for the rules).  :class:`errors.NoServerReachable` when none did in time."""
    deadline = ctx.now() + ctx.config.timeout
    body = call.data()
    headers = ctx.headers(call)
    problems: list[str] = []
    order = ctx.order(prefer)
    for index, server in enumerate(order):
        url = server + call.path
        for _hop in range(MAX_REDIRECTS + 1):
            left = deadline - ctx.now()
            if left <= 0:
                untried = [server_of(url)] + order[index + 1:]
                problems.append(f"not tried, the call's {ctx.config.timeout:g} s were up: {', '.join(untried)}")
                raise errors.NoServerReachable(call.what, problems)
            outcome = yield Attempt(call.method, url, body, headers, min(ctx.config.attempt_timeout, left),
                                    call.stream)
            if isinstance(outcome, Unreachable):
                if outcome.sent and not call.idempotent:
                    raise errors.MaybeSent(f"{call.what}: {server_of(url)}: {outcome.reason}, after the call was "
                                           f"sent; not repeated on another server (it may have been made there)")
                problems.append(f"{server_of(url)}: {outcome.reason}")
                break
            location = outcome.headers.get("location")
            if outcome.status in REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if outcome.status == 503:
                problems.append(f"{server_of(url)}: 503 {_error_text(outcome.body) or 'unavailable'}")
                break
            if call.stream and outcome.status == 200:
                return outcome
            return api.result(call, outcome.status, outcome.body)
        else:
            problems.append(f"{server_of(url)}: more than {MAX_REDIRECTS} redirects")
    raise errors.NoServerReachable(call.what, problems)


def no_answer(timeout: float) -> str:
    """Why a server that stayed silent was left: the drivers' words for an attempt's timeout."""
    return f"no answer within {round(timeout, 1):g} s"


def _error_text(body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        return ""
    return str(decoded.get("error", "")) if isinstance(decoded, dict) else ""


# --- composite plans ----------------------------------------------------------------------


RequestRef = int | str | api.Request


def request_id(ref: RequestRef) -> int:
    """The id of a request given as a :class:`api.Request`, an int or a string of digits."""
    if isinstance(ref, api.Request):
        return ref.id
    text = str(ref).strip()
    if not text.isdigit():
        raise ValueError(f"a request id is a number, not {ref!r}")
    return int(text)


def owner(ref: RequestRef) -> str | None:
    return ref.server if isinstance(ref, api.Request) else None


def request_view(ctx: Context, ref: RequestRef) -> Plan[api.Request]:
    """A request's details and state, both from the server that owns it."""
    rid = request_id(ref)
    details: api.Request = yield from exchange(ctx, api.request_details(rid), owner(ref))
    status = yield from exchange(ctx, api.request_status(rid), details.server)
    details.state = status["state"]
    details.queue = api.QueuePlace.from_status(status)
    return details


def wait_ready(ctx: Context, ref: RequestRef, timeout: float, interval: float = POLL_INTERVAL) -> Plan[api.Request]:
    """Poll a request until it is ``ready`` (returned with its details) or final
    (:class:`errors.RequestFailed`), emitting a :class:`Progress` whenever its line would read
    differently: the request's or its device's state, or its place in the queue (an ETA that
    moves within the minute is not a change); :class:`errors.WaitTimeout` after ``timeout``
    seconds."""
    rid = request_id(ref)
    deadline = ctx.now() + timeout
    request: api.Request | None = ref if isinstance(ref, api.Request) else None
    server = owner(ref)
    seen: str | None = None
    shown: Progress | None = None
    while True:
        status = yield from exchange(ctx, api.request_status(rid), server)
        state = status["state"]
        if state != seen or request is None:
            # The device may change as the request moves on (a retry on another device).
            request = yield from exchange(ctx, api.request_details(rid), server)
            server = request.server or server
            seen = state
        request.state = state
        request.queue = api.QueuePlace.from_status(status)
        device = request.assigned_device or None
        device_state = None
        if device and not api.is_final(state):
            try:
                device_state = yield from exchange(ctx, api.device_state(device), server)
            except errors.NotFound:
                pass
        progress = Progress(rid, state, device, device_state, request.queue)
        if shown is None or progress.line() != shown.line():
            yield Emit(progress)
            shown = progress
        if state == "ready":
            return request
        if api.is_final(state):
            raise errors.RequestFailed(rid, state)
        left = deadline - ctx.now()
        if left <= 0:
            raise errors.WaitTimeout(rid, timeout, state, device, request.queue)
        yield Pause(min(interval, left))


@dataclass
class Handover:
    """A ready request and its device's details (``name``, ``fqdn``, ``imaging_server``, ...)."""

    request: api.Request
    device: dict[str, Any]


def acquire(ctx: Context, device: str, image: str, duration: int, *, environment: str | None = None,
            boot_config: dict[str, Any] | None = None, assignee: str | None = None,
            priority: int | None = None, queue_timeout: int | None = None,
            timeout: float = 3600, interval: float = POLL_INTERVAL) -> Plan[Handover]:
    """Request a device, wait until it is ready, look up its details.  If anything after the
    request's creation fails (including an interrupt the driver throws in), the request is
    returned before the error goes on, so no device stays held for a caller that gave up."""
    created: api.Request = yield from exchange(ctx, api.request_device(
        device, image, duration, assignee or ctx.config.assignee, environment, boot_config, priority, queue_timeout))
    yield Emit(Progress(created.id, "new", created.assigned_device or None))
    try:
        ready = yield from wait_ready(ctx, created, timeout, interval)
        row = yield from exchange(ctx, api.device(ready.assigned_device), ready.server)
    except BaseException as e:
        yield from release_after_failure(ctx, created, e)
        raise
    return Handover(ready, row)


def release_after_failure(ctx: Context, request: api.Request, error: BaseException) -> Plan[None]:
    """Return ``request`` because ``error`` ended its use; a failure to return it is added to
    the error's notes instead of replacing it."""
    try:
        yield from exchange(ctx, api.return_request(request.id), request.server)
    except errors.MozpoolError as e:
        error.add_note(f"returning request {request.id} failed too: {e}")
    else:
        error.add_note(f"request {request.id} was returned")


def servers(ctx: Context) -> Plan[list[dict[str, Any]]]:
    """The imaging servers: ``/api/server/list/`` where the server has it, otherwise the servers
    named in the detailed device list, with their device counts (``alive`` then unknown)."""
    try:
        return (yield from exchange(ctx, api.server_list()))
    except errors.NotFound:
        rows = yield from exchange(ctx, api.devices())
        return api.servers_from_devices(rows)


def new_log_entries(entries: Iterable[dict[str, Any]], after: int | None) -> list[dict[str, Any]]:
    """Log entries with an id above ``after`` (all when None), oldest first."""
    return [e for e in entries if after is None or int(e.get("id", 0)) > after]


def log_entry(event: Any) -> dict[str, Any] | None:
    """The log entry a ``device_log``/``request_log`` event carries (the four keys of a log
    list, http-api.md 1.4), or None for other events."""
    data = getattr(event, "data", None)
    if getattr(event, "type", None) not in ("device_log", "request_log") or not isinstance(data, dict):
        return None
    try:
        return {"id": int(data["id"]), "timestamp": data.get("timestamp"), "source": data.get("source"),
                "message": data.get("message")}
    except (KeyError, TypeError, ValueError):
        return None


def poll_log(ctx: Context, name: str, after: int | None, interval: float,
             deadline: float | None) -> Plan[None]:
    """Follow a device's log without an event stream (an older server): poll its latest
    entries and emit the new ones, until ``deadline`` (None: forever)."""
    while deadline is None or ctx.now() < deadline:
        entries = yield from exchange(ctx, api.device_log(name, limit=100))
        for entry in new_log_entries(entries, after):
            after = int(entry["id"])
            yield Emit(entry)
        left = interval if deadline is None else min(interval, deadline - ctx.now())
        if left > 0:
            yield Pause(left)


class Finished(Exception):
    """A plan's end, carrying its result (see :func:`advance`)."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def advance(plan: Plan[Any], value: Any, error: BaseException | None) -> Instruction:
    """Hand the plan the outcome of its last instruction (or throw ``error`` into it, so its
    clean-up runs) and get its next instruction; :class:`Finished` when it is done."""
    try:
        return plan.throw(error) if error is not None else plan.send(value)
    except StopIteration as stop:
        raise Finished(stop.value) from None

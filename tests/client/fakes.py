"""A pretend lab for the client's unit tests: servers by base URL, each a function that answers
calls (or a dead or silent server), a fake clock, and the three ways the client's code meets
HTTP (a plan's ``perform``, ``http.client`` connections, treq's ``request``) over it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.web.http_headers import Headers

from mozpool.client.config import ClientConfig
from mozpool.client.plans import Attempt, Reply, Unreachable, no_answer

#: A server that refuses connections.
DEAD = "dead"
#: A server that accepts the connection and never answers.
SILENT = "silent"

#: (status, JSON body, extra headers) or (status, JSON body)
Answer = tuple[Any, ...]
Handler = Callable[[str, str, Any], Answer]


@dataclass
class Sent:
    """One call a fake server received."""

    method: str
    url: str
    body: Any
    headers: dict[str, str]


class FakeClock:
    def __init__(self) -> None:
        self.time = 1000.0

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.time += seconds


@dataclass
class Lab:
    """Servers by base URL: a :data:`Handler`, :data:`DEAD` or :data:`SILENT`."""

    servers: dict[str, Handler | str] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    clock: FakeClock = field(default_factory=FakeClock)

    def answer(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
               timeout: float) -> tuple[int, dict[str, str], bytes] | str:
        """A server's answer, or DEAD / SILENT (time passes as the client would wait)."""
        parts = urlsplit(url)
        server = self.servers.get(f"{parts.scheme}://{parts.netloc}", DEAD)
        if server == DEAD:
            return DEAD
        decoded = json.loads(body) if body else None
        self.sent.append(Sent(method, url, decoded, dict(headers)))
        if server == SILENT:
            self.clock.sleep(timeout)
            return SILENT
        assert callable(server)
        answer = server(method, parts.path + (f"?{parts.query}" if parts.query else ""), decoded)
        status, payload = answer[0], answer[1]
        extra = answer[2] if len(answer) > 2 else {}
        data = payload if isinstance(payload, bytes) else b"" if payload is None else json.dumps(payload).encode()
        return status, {"content-type": "application/json", **extra}, data

    def perform(self, attempt: Attempt) -> Reply | Unreachable:
        """A plan's ``perform``, as the drivers do it."""
        out = self.answer(attempt.method, attempt.url, attempt.body, attempt.headers, attempt.timeout)
        if out == DEAD:
            return Unreachable("connection refused")
        if out == SILENT:
            return Unreachable(no_answer(attempt.timeout), sent=True)
        status, headers, data = out  # type: ignore[misc]
        return Reply(status, headers, data)

    # --- http.client, for mozpool.client.sync ----------------------------------------------

    def connect(self, scheme: str, netloc: str, timeout: float) -> "FakeConnection":
        return FakeConnection(self, scheme, netloc, timeout)

    # --- treq, for mozpool.client.tx --------------------------------------------------------

    def treq(self) -> "FakeTreq":
        return FakeTreq(self)


def config(*servers: str, **kw: Any) -> ClientConfig:
    kw.setdefault("assignee", "tester@example.com")
    return ClientConfig(servers=tuple(servers), **kw)


class FakeSocket:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def settimeout(self, value: float) -> None:
        self.timeouts.append(value)


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = False

    def getheaders(self) -> list[tuple[str, str]]:
        return list(self.headers.items())

    def read1(self, n: int = -1) -> bytes:
        data, self.body = self.body[:n], self.body[n:]
        return data

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    """Enough of ``http.client.HTTPConnection`` for the blocking client."""

    def __init__(self, lab: Lab, scheme: str, netloc: str, timeout: float) -> None:
        self.lab = lab
        self.url = f"{scheme}://{netloc}"
        self.timeout = timeout
        self.sock: FakeSocket | None = None
        self.request_args: tuple[str, str, bytes | None, dict[str, str]] | None = None
        self.closed = False

    def connect(self) -> None:
        parts = urlsplit(self.url)
        if self.lab.servers.get(f"{parts.scheme}://{parts.netloc}", DEAD) == DEAD:
            raise ConnectionRefusedError(111, "Connection refused")
        self.sock = FakeSocket()

    def request(self, method: str, target: str, body: bytes | None = None, headers: Any = None) -> None:
        self.request_args = (method, target, body, dict(headers or {}))

    def getresponse(self) -> FakeResponse:
        assert self.request_args is not None
        method, target, body, headers = self.request_args
        out = self.lab.answer(method, self.url + target, body, headers, self.timeout)
        if out == SILENT:
            raise TimeoutError("timed out")
        status, answer_headers, data = out  # type: ignore[misc]
        return FakeResponse(status, answer_headers, data)

    def close(self) -> None:
        self.closed = True


class FakeTxResponse:
    def __init__(self, code: int, headers: dict[str, str], body: bytes) -> None:
        self.code = code
        self.headers = Headers({k: [v] for k, v in headers.items()})
        self.body = body

    def content(self) -> defer.Deferred[bytes]:
        return defer.succeed(self.body)


class FakeTreq:
    """treq's ``HTTPClient.request`` over the lab: a dead server fails at once, a silent one
    never answers (until the client cancels)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pending: list[defer.Deferred[Any]] = []

    def request(self, method: str, url: str, data: bytes | None = None, headers: Any = None,
                allow_redirects: bool = True, unbuffered: bool = False) -> defer.Deferred[Any]:
        assert not allow_redirects, "the client follows redirects itself"
        parts = urlsplit(url)
        server = self.lab.servers.get(f"{parts.scheme}://{parts.netloc}", DEAD)
        if server == DEAD:
            return defer.fail(error.ConnectionRefusedError("Connection refused"))
        if server == SILENT:
            self.lab.sent.append(Sent(method, url, json.loads(data) if data else None, dict(headers or {})))
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d
        out = self.lab.answer(method, url, data, dict(headers or {}), 0)
        status, answer_headers, body = out  # type: ignore[misc]
        return defer.succeed(FakeTxResponse(status, answer_headers, body))


class FakePool:
    """One MozPool server as a :data:`Handler`, over a few devices: requests get the first free
    device (or, when none is free, the first free one as they leave ``finding_device``) and walk
    through ``script``, one state per status poll.  ``queue[rid]``: the queue
    places (or None) its status answers carry while ``finding_device``, one per poll like the
    states; a request echoes the ``priority`` and ``queue_timeout`` it was made with (or 50 and
    600, the server's defaults)."""

    IMAGES = ("android", "b2g")

    def __init__(self, url: str, devices: tuple[str, ...] = ("panda-0001", "panda-0002"),
                 script: tuple[str, ...] = ("finding_device", "pending", "ready"), first_id: int = 1) -> None:
        self.url = url
        self.devices = {name: {"name": name, "fqdn": f"{name}.lab.example.com", "state": "ready",
                               "imaging_server": urlsplit(url).netloc, "environment": "prod", "request_id": None}
                        for name in devices}
        self.script = script
        self.requests: dict[int, dict[str, Any]] = {}
        self.states: dict[int, list[str]] = {}
        self.queue: dict[int, list[dict[str, Any] | None]] = {}
        self.next_id = first_id

    def __call__(self, method: str, path: str, body: Any) -> Answer:
        parts = [p for p in urlsplit(path).path.split("/") if p]
        if parts[:2] == ["api", "version"]:
            return 200, {"version": "test"}
        if parts[:3] == ["api", "device", "list"]:
            return 200, {"devices": list(self.devices.values())}
        if parts[:2] == ["api", "device"] and len(parts) >= 4:
            name, what = parts[2], parts[3]
            if what == "request" and method == "POST":
                return self.create(name, body)
            if name not in self.devices:
                return 404, {"error": f"unknown device {name}"}
            if what == "state":
                return 200, {"state": self.devices[name]["state"]}
        if parts[:2] == ["api", "request"] and len(parts) >= 4 and parts[2].isdigit():
            rid, what = int(parts[2]), parts[3]
            if rid not in self.requests:
                return 404, {"error": f"unknown request {rid}"}
            if what == "status":
                states = self.states[rid]
                state = states.pop(0) if len(states) > 1 else states[0]
                self.requests[rid]["state"] = state
                if state in ("pending", "ready") and not self.requests[rid]["assigned_device"]:
                    self.take_free_device(rid)
                places = self.queue.get(rid) or [None]
                place = places.pop(0) if len(places) > 1 else places[0]
                if state == "finding_device" and place is not None:
                    return 200, {"state": state, "log": [], "queue": place}
                return 200, {"state": state, "log": []}
            if what == "details":
                return 200, {k: v for k, v in self.requests[rid].items() if k != "state"}
            if what == "return" and method == "POST":
                self.close(rid)
                return 204, None
            if what == "renew" and method == "POST":
                self.requests[rid]["renewed"] = body["duration"]
                return 204, None
        return 404, {"error": "no such endpoint"}

    def create(self, name: str, body: dict[str, Any]) -> Answer:
        if name != "any" and name not in self.devices:
            return 404, {"error": f"unknown device {name}"}
        if body["image"] not in self.IMAGES:
            return 404, {"error": f"unknown image {body['image']}"}
        rid, self.next_id = self.next_id, self.next_id + 1
        request = {"id": rid, "requested_device": name, "assignee": body["assignee"], "expires": "2030-01-01T00:00:00",
                   "environment": body.get("environment", "any"), "image": body["image"], "boot_config": "{}",
                   "assigned_device": "", "url": f"{self.url}/api/request/{rid}/", "state": "new",
                   "priority": body.get("priority", 50), "queue_timeout": body.get("queue_timeout", 600)}
        self.requests[rid] = request
        candidates = [name] if name != "any" else [d for d, row in self.devices.items() if row["request_id"] is None]
        device = candidates[0] if candidates else None
        if device is not None and self.devices[device]["request_id"] is not None:
            request["state"] = "closed"
            self.states[rid] = ["closed"]
            held = self.devices[device]["request_id"]
            return 409, {"error": f"device {device} is held by request {held}", "request": request}
        if device is not None:
            request["assigned_device"] = device
            self.devices[device]["request_id"] = rid
        self.states[rid] = list(self.script)
        return 200, {"request": {k: v for k, v in request.items() if k != "state"}}

    def take_free_device(self, rid: int) -> None:
        """A request that waited for a device (none was free when it was made) takes the first
        free one as it moves on."""
        free = [name for name, row in self.devices.items() if row["request_id"] is None]
        if free:
            self.requests[rid]["assigned_device"] = free[0]
            self.devices[free[0]]["request_id"] = rid

    def close(self, rid: int) -> None:
        self.requests[rid]["state"] = "closed"
        self.states[rid] = ["closed"]
        for row in self.devices.values():
            if row["request_id"] == rid:
                row["request_id"] = None

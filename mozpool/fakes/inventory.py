"""Simulated inventories: Mozilla's inventory (the bulk export with its status and server-model
look-ups, and the older paginated API; spec bmm-protocols 7.2, 7.3) and NetBox (paged device and
interface lists, a token, custom fields), as real HTTP servers on loopback serving the
documented JSON shapes.

Switches for what a sync must survive, plain attributes a test may change at any moment:

- ``fail``: request number (1 = the first) -> HTTP status answered instead, e.g. ``{2: 500}``
- ``garble``: request numbers answered with a body that is not JSON
- ``drop``: request numbers whose connection closes half-way through the body
- ``delay``: seconds before every answer, on the clock given (``hold``: never answer)
- ``empty``: list no system at all
- ``page_size``: the most results a page holds, whatever ``limit`` the client asks for
- ``on_request(n)``: called as request ``n`` arrives (e.g. to add a device between two pages)

``requests`` records each request: its path, who sent it, and when it started and ended.

``python -m mozpool.fakes.inventory mozilla|netbox --devices N --imaging-server FQDN`` serves one
for trying ``mozpool-inventorysync`` by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

MOZILLA_STATUSES = {"production": 1, "spare": 2, "decommissioned": 3, "loaner": 4}
#: Mozilla's system statuses as NetBox's device statuses
NETBOX_STATUSES = {"production": "active", "spare": "inventory", "decommissioned": "decommissioning"}


@dataclass
class FakeSystem:
    """One system in a simulated inventory.  None leaves a field out."""

    hostname: str
    pk: int
    mac: str | None = None
    relay: str | None = None
    #: a power location with its driver (Mozilla's system.power.0, NetBox's mozpool_power)
    power: str | None = None
    imaging_server: str | None = None
    vendor: str | None = "PandaBoard"
    model: str = "ES"
    status: str = "production"
    #: NetBox's interfaces, name -> MAC; default one ``eth0`` with ``mac``
    interfaces: dict[str, str] | None = None
    role: str = "panda"
    site: str = "lab"

    def nics(self) -> dict[str, str]:
        if self.interfaces is not None:
            return self.interfaces
        return {"eth0": self.mac} if self.mac else {}


def pandas(count: int, imaging_server: str, *, first: int = 1, domain: str = "lab.example.com",
           relay_domain: str | None = None) -> list[FakeSystem]:
    """``count`` pandas ``panda-0001.<domain>`` ..., inventory ids from ``first``, wired 32 to a
    relay board (``relay-1.<relay_domain>`` ...), bank (i mod 32) div 8 + 1, relay i mod 8 + 1."""
    systems = []
    for i in range(first - 1, first - 1 + count):
        board, slot = divmod(i, 32)
        pk = i + 1
        systems.append(FakeSystem(
            hostname=f"panda-{pk:04d}.{domain}", pk=pk, mac=f"02:00:00:00:{pk >> 8 & 255:02x}:{pk & 255:02x}",
            relay=f"relay-{board + 1}.{relay_domain or domain}:bank{slot // 8 + 1}:relay{slot % 8 + 1}",
            imaging_server=imaging_server,
        ))
    return systems


@dataclass
class Recorded:
    """One request as the simulated inventory saw it."""

    path: str
    who: str | None
    started: float
    ended: float | None = None
    code: int | None = None


class _FakeInventory(Resource):
    """What both simulated inventories share: the switches, the record, the answering."""

    isLeaf = True

    def __init__(self, clock: IReactorTime, systems: list[FakeSystem] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.systems: list[FakeSystem] = list(systems or [])
        self.fail: dict[int, int] = {}
        self.garble: set[int] = set()
        self.drop: set[int] = set()
        self.delay = 0.0
        self.hold = False
        self.empty = False
        self.page_size = 1000
        self.on_request: Callable[[int], None] | None = None
        self.requests: list[Recorded] = []
        self._waiting: list[Deferred[Recorded]] = []
        self._timers: set[IDelayedCall] = set()

    def listed(self) -> list[FakeSystem]:
        return [] if self.empty else sorted(self.systems, key=lambda s: s.pk)

    def next_request(self) -> "Deferred[Recorded]":
        """Fires with the next request as it arrives (before it is answered)."""
        d: Deferred[Recorded] = Deferred()
        self._waiting.append(d)
        return d

    def in_flight(self) -> int:
        return sum(1 for r in self.requests if r.ended is None)

    def stop(self) -> None:
        """Cancel every answer still waiting for its delay."""
        for t in list(self._timers):
            if t.active():
                t.cancel()
        self._timers.clear()

    # -- subclasses -------------------------------------------------------------------------

    def who(self, request: Request) -> str | None:
        """Who the request says it is (None: nobody)."""
        raise NotImplementedError

    def refuse(self, request: Request) -> tuple[int, Any] | None:
        """An answer refusing the request's credentials, or None."""
        raise NotImplementedError

    def answer(self, request: Request, path: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        raise NotImplementedError

    # -- serving ----------------------------------------------------------------------------

    def render_GET(self, request: Request) -> Any:
        n = len(self.requests) + 1
        record = Recorded(request.uri.decode("latin-1"), self.who(request), self.clock.seconds())
        self.requests.append(record)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(record)
        if self.on_request is not None:
            self.on_request(n)

        def gone(_: Any) -> None:
            if record.ended is None:
                record.ended = self.clock.seconds()
            return None

        request.notifyFinish().addBoth(gone)
        if self.hold:
            return NOT_DONE_YET
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        refused = self.refuse(request)
        if refused is not None:
            code, body = refused
        elif n in self.fail:
            code, body = self.fail[n], {"error": "simulated failure"}
        else:
            code, body = self.answer(request, request.path.decode(), args)
        data = json.dumps(body).encode()
        if n in self.garble:
            data = data[: len(data) // 2] + b"<html>"

        def send() -> None:
            if record.ended is not None:
                return  # the client went away
            record.code = code
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", str(len(data)).encode())
            if n in self.drop:
                request.write(data[: len(data) // 2])
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
                return
            request.write(data)
            request.finish()

        if self.delay:
            timer = self.clock.callLater(self.delay, send)
            self._timers.add(timer)
            request.notifyFinish().addBoth(lambda _: timer.cancel() if timer.active() else None)
        else:
            send()
        return NOT_DONE_YET

    def site(self) -> Site:
        return Site(self)

    async def listen(self, reactor: Any, endpoint: str = "tcp:0:interface=127.0.0.1") -> tuple[Any, str]:
        """Serve on ``endpoint`` (e.g. ``ssl:0:interface=127.0.0.1:privateKey=...:certKey=...``);
        (listening port, base URL)."""
        port = await serverFromString(reactor, endpoint).listen(self.site())
        scheme = "https" if endpoint.startswith("ssl:") else "http"
        return port, f"{scheme}://127.0.0.1:{port.getHost().port}"


def _page(args: dict[str, list[str]], default_limit: int, most: int) -> tuple[int, int]:
    """(limit, offset) of a page request; the limit capped as servers cap it."""
    try:
        limit, offset = int(args.get("limit", [default_limit])[0]), int(args.get("offset", [0])[0])
    except ValueError:
        limit, offset = default_limit, 0
    return max(1, min(limit, most)), max(0, offset)


class FakeMozillaInventory(_FakeInventory):
    """Mozilla's inventory, with HTTP basic authentication when ``username`` is set."""

    def __init__(self, clock: IReactorTime, systems: list[FakeSystem] | None = None, *, username: str = "",
                 password: str = "") -> None:
        super().__init__(clock, systems)
        self.username = username
        self.password = password

    def who(self, request: Request) -> str | None:
        return request.getUser().decode() or None

    def refuse(self, request: Request) -> tuple[int, Any] | None:
        if self.username and (request.getUser().decode(), request.getPassword().decode()) != (self.username, self.password):
            return 401, {"detail": "Authentication credentials were not provided."}
        return None

    def _models(self) -> dict[tuple[str, str], int]:
        pairs = sorted({(s.vendor, s.model) for s in self.systems if s.vendor})
        return {p: i + 1 for i, p in enumerate(pairs)}  # type: ignore[misc]

    def _bulk(self, s: FakeSystem) -> dict[str, Any]:
        kv = {}
        for key, value in (("system.relay.0", s.relay), ("system.power.0", s.power),
                           ("system.imaging_server.0", s.imaging_server)):
            if value is not None:
                kv[key] = {"key": key, "value": value, "pk": len(kv) + 1}
        staticreg = {"nic0": {"hwadapter_set": {"hw0": {"mac": s.mac}}}} if s.mac else {}
        return {
            "hostname": s.hostname, "pk": s.pk, "system_status": MOZILLA_STATUSES.get(s.status, 99),
            "server_model": self._models().get((s.vendor, s.model)) if s.vendor else None,  # type: ignore[arg-type]
            "keyvalue_set": kv, "staticreg_set": staticreg, "asset_tag": None, "serial": f"SN{s.pk}",
        }

    def _paged(self, s: FakeSystem) -> dict[str, Any]:
        kv = [{"key": k, "value": v} for k, v in (("system.relay.0", s.relay), ("system.power.0", s.power),
                                                    ("system.imaging_server.0", s.imaging_server),
                                                    ("nic.0.mac_address.0", s.mac)) if v is not None]
        model = {"vendor": s.vendor, "model": s.model} if s.vendor else None
        return {"hostname": s.hostname, "id": s.pk, "key_value": kv, "server_model": model,
                "resource_uri": f"/en-US/tasty/v3/system/{s.pk}/"}

    def answer(self, request: Request, path: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/en-US/bulk_action/export/":
            q = args.get("q", [""])[0]
            listed = self.listed()
            if q.startswith("/"):
                listed = [s for s in listed if re.search(q[1:], s.hostname)]
            elif q:
                listed = [s for s in listed if q in s.hostname]
            return 200, {"systems": {s.hostname: self._bulk(s) for s in listed}}
        m = re.fullmatch(r"/en-US/core/api/v1_core/systemstatus/(\d+)/", path)
        if m:
            names = {pk: name for name, pk in MOZILLA_STATUSES.items()}
            pk = int(m.group(1))
            return (200, {"status": names[pk], "pk": pk, "color": "green"}) if pk in names else (404, {})
        m = re.fullmatch(r"/en-US/core/api/v1_core/servermodel/(\d+)/", path)
        if m:
            found = [pair for pair, pk in self._models().items() if pk == int(m.group(1))]
            if not found:
                return 404, {}
            return 200, {"vendor": found[0][0], "model": found[0][1], "pk": int(m.group(1)), "description": ""}
        if path == "/en-US/tasty/v3/system/":
            limit, offset = _page(args, 20, self.page_size)
            listed = self.listed()
            prefix = args.get("hostname__startswith", [""])[0]
            listed = [s for s in listed if s.hostname.startswith(prefix)]
            rest = {k: v for k, v in args.items() if k not in ("limit", "offset")}
            following = None
            if offset + limit < len(listed):
                following = path + "?" + urlencode({"limit": limit, "offset": offset + limit, **rest}, doseq=True)
            meta = {"limit": limit, "offset": offset, "total_count": len(listed), "next": following, "previous": None}
            return 200, {"meta": meta, "objects": [self._paged(s) for s in listed[offset:offset + limit]]}
        return 404, {"detail": "Not found."}


class FakeNetBox(_FakeInventory):
    """NetBox's REST API (4.x shapes), with token authentication when ``token`` is set.

    ``advertised`` is the origin NetBox puts in its ``next`` links (as one behind a proxy that
    names itself wrongly); ``primary_mac_only`` leaves out interfaces' ``mac_address`` as a
    client of 4.2+ may find it only in ``primary_mac_address``."""

    def __init__(self, clock: IReactorTime, systems: list[FakeSystem] | None = None, *, token: str = "",
                 relay_field: str = "mozpool_relay", imaging_server_field: str = "mozpool_imaging_server") -> None:
        super().__init__(clock, systems)
        self.token = token
        self.relay_field = relay_field
        self.imaging_server_field = imaging_server_field
        self.advertised: str | None = None
        self.primary_mac_only = False

    def who(self, request: Request) -> str | None:
        header = (request.getHeader(b"authorization") or b"").decode()
        return header.split(" ", 1)[-1] or None

    def refuse(self, request: Request) -> tuple[int, Any] | None:
        if not self.token:
            return None
        header = (request.getHeader(b"authorization") or b"").decode()
        kind = "Bearer" if self.token.startswith("nbt_") else "Token"
        if header != f"{kind} {self.token}":
            return 403, {"detail": "Invalid token"}
        return None

    def _device(self, s: FakeSystem, base: str) -> dict[str, Any]:
        manufacturer = {"id": 1, "name": s.vendor, "slug": (s.vendor or "").lower()} if s.vendor else None
        status = NETBOX_STATUSES.get(s.status, s.status)
        return {
            "id": s.pk, "url": f"{base}/api/dcim/devices/{s.pk}/", "display": s.hostname, "name": s.hostname.split(".")[0],
            "device_type": {"id": 1, "manufacturer": manufacturer, "model": s.model, "slug": s.model.lower()},
            "role": {"id": 1, "name": s.role, "slug": s.role}, "site": {"id": 1, "name": s.site, "slug": s.site},
            "status": {"value": status, "label": status.title()}, "primary_ip4": None,
            "custom_fields": {self.relay_field: s.relay, "mozpool_power": s.power,
                              self.imaging_server_field: s.imaging_server},
        }

    def _interfaces(self, s: FakeSystem) -> list[dict[str, Any]]:
        out = []
        for i, (name, mac) in enumerate(sorted(s.nics().items())):
            entry: dict[str, Any] = {
                "id": s.pk * 10 + i, "device": {"id": s.pk, "name": s.hostname.split(".")[0]}, "name": name,
                "primary_mac_address": {"id": s.pk * 10 + i, "mac_address": mac.upper()},
            }
            if not self.primary_mac_only:
                entry["mac_address"] = mac.upper()
            out.append(entry)
        return out

    def _paged(self, request: Request, path: str, args: dict[str, list[str]], results: list[Any]) -> dict[str, Any]:
        limit, offset = _page(args, 50, self.page_size)
        host = (request.getHeader(b"host") or b"127.0.0.1").decode()
        base = self.advertised or f"http://{host}"
        following = None
        if offset + limit < len(results):
            rest = {k: v for k, v in args.items() if k not in ("limit", "offset")}
            following = f"{base}{path}?" + urlencode({**rest, "limit": limit, "offset": offset + limit}, doseq=True)
        return {"count": len(results), "next": following, "previous": None, "results": results[offset:offset + limit]}

    def answer(self, request: Request, path: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        host = (request.getHeader(b"host") or b"127.0.0.1").decode()
        if path == "/api/dcim/devices/":
            listed = self.listed()
            for key, attr in (("role", "role"), ("site", "site")):
                if key in args:
                    listed = [s for s in listed if getattr(s, attr) in args[key]]
            if "status" in args:
                listed = [s for s in listed if NETBOX_STATUSES.get(s.status, s.status) in args["status"]]
            return 200, self._paged(request, path, args, [self._device(s, f"http://{host}") for s in listed])
        if path == "/api/dcim/interfaces/":
            ids = {int(i) for i in args.get("device_id", []) if i.isdigit()}
            names = args.get("name")
            results = [i for s in self.listed() if not ids or s.pk in ids for i in self._interfaces(s)
                       if not names or i["name"] in names]
            return 200, self._paged(request, path, args, results)
        return 404, {"detail": "Not found."}


def main(argv: list[str] | None = None) -> None:
    """Serve a simulated inventory until interrupted."""
    import argparse

    from twisted.internet import task

    p = argparse.ArgumentParser(prog="python -m mozpool.fakes.inventory", description=main.__doc__)
    p.add_argument("kind", choices=("mozilla", "netbox"))
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--imaging-server", default="127.0.0.1:8010", help="the devices' imaging server fqdn")
    p.add_argument("--port", type=int, default=8111)
    p.add_argument("--username", default="", help="mozilla: require this user (and --password)")
    p.add_argument("--password", default="")
    p.add_argument("--token", default="", help="netbox: require this token")
    args = p.parse_args(argv)

    async def serve(reactor: Any) -> None:
        systems = pandas(args.devices, args.imaging_server)
        fake: _FakeInventory
        if args.kind == "mozilla":
            fake = FakeMozillaInventory(reactor, systems, username=args.username, password=args.password)
        else:
            fake = FakeNetBox(reactor, systems, token=args.token)
        _, url = await fake.listen(reactor, f"tcp:{args.port}:interface=127.0.0.1")
        print(f"simulated {args.kind} inventory of {args.devices} devices at {url}", flush=True)
        await Deferred()

    task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))


if __name__ == "__main__":
    main()

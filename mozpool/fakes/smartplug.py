"""Simulated smart plug: a Tasmota power strip's HTTP command API, a real HTTP server on loopback.

Devices of the simulated pool may be wired behind these plugs instead of ProXR boards; the
daemon then reaches them through a real pdudaemon whose ``tasmota`` driver speaks to the plug
(``pdudaemon://PDUDAEMON/127.0.0.1:PLUGPORT/OUTLET``; :func:`pdudaemon_config` writes
pdudaemon's configuration for a set of plugs).

What pdudaemon's ``tasmota`` driver sends, and Tasmota answers (Tasmota's documented
``/cm?cmnd=`` web commands):

- ``GET /cm?cmnd=Power<N> <on|off|toggle|1|0|2>`` -> ``{"POWER<N>": "ON"}`` (the state after
  the command); ``Power<N>`` alone reads the state.  ``Power`` without a number is relay 1,
  answered as ``POWER``.  With a web password set, ``user=admin&password=...`` must come with it.
- An outlet outside 1..relays, or another command: ``{"Command": "Unknown"}``.

Fault switches (attributes a test may flip at any moment): ``hang`` (accept, never answer),
``error_status`` (answer with that HTTP status), ``stuck`` (outlets that answer with their
state but do not switch: pdudaemon's driver sees the wrong state and gives up after its
retries), and :meth:`refuse` / :meth:`accept` (stop / start listening).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mozpool.logconfig import Logger

log = Logger()

#: outlets of a simulated strip (a four-socket Tasmota power strip)
DEFAULT_RELAYS = 4

PowerListener = Callable[[int, bool], None]


class FakeTasmotaPlug:
    """One simulated strip: ``relays`` outlets, all powered at first unless ``device_on`` is False."""

    def __init__(self, reactor: Any, *, port: int = 0, interface: str = "127.0.0.1", relays: int = DEFAULT_RELAYS,
                 device_on: bool = True, password: Optional[str] = None) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.relays = relays
        self.password = password
        self.state: dict[int, bool] = {r: device_on for r in range(1, relays + 1)}
        #: every command received: (outlet, argument or "" for a read)
        self.actions: list[tuple[int, str]] = []
        self._listeners: list[PowerListener] = []
        # faults
        self.hang = False
        self.error_status: Optional[int] = None
        self.stuck: set[int] = set()
        self._listening: Optional[IListeningPort] = None
        self._hung: list[Request] = []
        self._site = _PlugSite(_Commands(self))

    # ----------------------------------------------------------------- life cycle

    def start(self) -> int:
        """Listen (port 0 picks a free one) and return the bound port."""
        self._listening = self._reactor.listenTCP(self.port, self._site, interface=self.interface)
        self.port = self._listening.getHost().port
        return self.port

    def refuse(self) -> Deferred[None]:
        """Stop listening (connections are refused) until :meth:`accept`."""
        listening, self._listening = self._listening, None
        return succeed(None) if listening is None else Deferred.fromCoroutine(_stop(listening))

    def accept(self) -> None:
        if self._listening is None:
            self.start()

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every connection (hung requests included)."""
        stopping = self.refuse()
        self._hung.clear()
        for channel in list(self._site.channels):
            # twisted.web wraps each HTTPChannel (HTTP/1.x or 2) in a protocol of its own
            transport = getattr(getattr(channel, "_channel", channel), "transport", None)
            if transport is not None:
                transport.abortConnection()
        return stopping

    @property
    def address(self) -> str:
        return f"{self.interface}:{self.port}"

    # ----------------------------------------------------------------- the outlets

    def device_on(self, outlet: int) -> bool:
        return self.state[outlet]

    def add_listener(self, listener: PowerListener) -> None:
        """``listener(outlet, on)`` after every change of an outlet's state."""
        self._listeners.append(listener)

    def set_power(self, outlet: int, on: bool) -> None:
        if outlet in self.stuck or self.state[outlet] == on:
            return
        self.state[outlet] = on
        for listener in list(self._listeners):
            listener(outlet, on)

    def command(self, text: str, args: Mapping[str, str]) -> Optional[dict[str, str]]:
        """One ``cmnd`` -> Tasmota's JSON answer (None: the request is to hang)."""
        if self.password is not None and (args.get("user") != "admin" or args.get("password") != self.password):
            return {"WARNING": "Need user=<username>&password=<password>"}
        name, _, argument = text.strip().partition(" ")
        word, number = name[:5].lower(), name[5:]
        if word != "power" or (number and not number.isdigit()):
            return {"Command": "Unknown"}
        outlet = int(number) if number else 1
        if outlet not in self.state:
            return {"Command": "Unknown"}
        argument = argument.strip().lower()
        self.actions.append((outlet, argument))
        if argument in ("on", "1"):
            self.set_power(outlet, True)
        elif argument in ("off", "0"):
            self.set_power(outlet, False)
        elif argument in ("toggle", "2"):
            self.set_power(outlet, not self.state[outlet])
        elif argument:
            return {"Command": "Unknown"}
        return {f"POWER{number}": "ON" if self.state[outlet] else "OFF"}


async def _stop(listening: IListeningPort) -> None:
    await listening.stopListening()


class _PlugSite(Site):
    """A site that knows its connections, so :meth:`FakeTasmotaPlug.stop` can drop them."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> None:
            self.channels.discard(channel)
            lost(reason)

        channel.connectionLost = connection_lost
        return channel

    def log(self, request: Request) -> None:
        """No access log: pdudaemon calls every power operation."""


class _Commands(Resource):
    isLeaf = True

    def __init__(self, plug: FakeTasmotaPlug) -> None:
        super().__init__()
        self.plug = plug

    def render_GET(self, request: Request) -> Any:
        plug = self.plug
        if request.path != b"/cm":
            request.setResponseCode(404)
            return b"Not found"
        if plug.hang:
            plug._hung.append(request)
            return NOT_DONE_YET
        if plug.error_status is not None:
            request.setResponseCode(plug.error_status)
            return b"simulated failure"
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in (request.args or {}).items()}
        answer = plug.command(args.get("cmnd", ""), args)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer, separators=(",", ":")).encode()


def start_plugs(reactor: Any, ports: Iterable[int], **options: Any) -> list[FakeTasmotaPlug]:
    plugs = []
    for port in ports:
        plug = FakeTasmotaPlug(reactor, port=port, **options)
        plug.start()
        plugs.append(plug)
    return plugs


def stop_plugs(plugs: Iterable[FakeTasmotaPlug]) -> Deferred[Any]:
    return DeferredList([plug.stop() for plug in plugs])


def pdudaemon_config(plugs: Mapping[str, str], listen_host: str, listen_port: int, *, relays: int = DEFAULT_RELAYS,
                     retries: int = 2, retrydelay: int = 1) -> dict[str, Any]:
    """pdudaemon's JSON configuration: its HTTP listener on ``listen_host:listen_port`` and one
    ``tasmota`` PDU per plug (``plugs``: pdudaemon's name for it -> the plug's ``host:port``).
    Few, short retries: a failing plug is given up within MozPool's 30 s deadline."""
    return {
        "daemon": {"hostname": listen_host, "port": listen_port, "logging_level": "INFO", "listener": "http"},
        "pdus": {
            name: {"driver": "tasmota", "ip": address, "port_count": relays, "retries": retries,
                   "retrydelay": retrydelay}
            for name, address in sorted(plugs.items())
        },
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m mozpool.fakes.smartplug --devices N --plug-base-port P [--pdudaemon HOST:PORT]``
    prints the pdudaemon configuration a ``--fakes`` pool with ``[fakes] pdudaemon = N`` and
    ``plug_base_port = P`` will use, so pdudaemon can start before the daemon."""
    import argparse
    import sys

    from mozpool.db.fixtures import DEFAULT_PDUDAEMON, OUTLETS_PER_PLUG

    parser = argparse.ArgumentParser(prog="python -m mozpool.fakes.smartplug", description=main.__doc__)
    parser.add_argument("--devices", type=int, required=True, help="[fakes] pdudaemon: devices behind plugs")
    parser.add_argument("--plug-base-port", type=int, required=True, help="[fakes] plug_base_port")
    parser.add_argument("--pdudaemon", default=DEFAULT_PDUDAEMON, help="where pdudaemon listens, HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.pdudaemon.rpartition(":")
    plugs = -(-args.devices // OUTLETS_PER_PLUG)
    names = [f"127.0.0.1:{args.plug_base_port + k}" for k in range(plugs)]
    json.dump(pdudaemon_config({n: n for n in names}, host.strip("[]"), int(port)), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

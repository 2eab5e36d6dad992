"""A simulated pool over the real wires: relay boards (ProXR over TCP), smart plugs (Tasmota's
HTTP API, driven by a real pdudaemon), SUT agents (TCP) and devices that read their PXE configs
from our TFTP server and post events to our HTTP API.

``--fakes N`` builds one :class:`FakePool` from this server's device rows (DESIGN.md, "Simulated
devices"; bmm-protocols.md 1.8).  Only the far end of each wire is simulated: the daemon's relay
client, pdudaemon client, SUT client, TFTP server and API are the production code (pdudaemon
itself runs beside the daemon: :meth:`FakePool.pdudaemon_config` is its configuration).  Ping has no wire here: the
pinger's ``simulated`` hook asks :meth:`FakePool.simulated_ping` (bmm-protocols.md 3).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred, succeed
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.bmm.sut import default_address
from mozpool.fakes import tftpclient
from mozpool.fakes.device import DEFAULT_SUT_IMAGES, EVENT_TIMEOUT, FailureSettings, SimulatedDevice
from mozpool.fakes.boardfaults import BoardFault
from mozpool.fakes.relayboard import RELAYS_PER_BOARD, FakeRelayBoard
from mozpool.fakes.smartplug import FakeTasmotaPlug, pdudaemon_config
from mozpool.fakes.sutagent import SimulatedSUTAgent

log = Logger()

_WILDCARD_HOSTS = {"", "0.0.0.0", "localhost"}


@dataclass
class DeviceRow:
    """What the simulator needs of a ``devices`` row."""

    name: str
    fqdn: str
    mac: str
    relay_info: Optional[str]
    state: Optional[str] = None
    image: Optional[str] = None

    @classmethod
    def of(cls, row: Union["DeviceRow", Mapping[str, Any]]) -> "DeviceRow":
        """Accepts this class or a mapping such as ``mozpool.db.devices.list_details`` gives."""
        if isinstance(row, DeviceRow):
            return row
        return cls(
            name=row["name"],
            fqdn=row.get("fqdn") or row["name"],
            mac=row.get("mac") or row["mac_address"],
            relay_info=row.get("relay_info"),
            state=row.get("state"),
            image=row.get("image"),
        )


def rows_for_server(details: Iterable[Mapping[str, Any]], server_fqdn: str) -> list[DeviceRow]:
    """The rows of the devices ``server_fqdn`` owns (``list_details`` shape), as in the original."""
    return [DeviceRow.of(d) for d in details if d.get("imaging_server") == server_fqdn]


def loopback_location(relay_info: Optional[str]) -> Optional[tuple[str, int, int, int]]:
    """``(host, port, bank, relay)`` for a loopback ``relay_info`` with a port, else None.

    Only such boards can be simulated here; anything else is a real board (or no board).
    """
    if not relay_info:
        return None
    try:
        board, bank, relay = relay_info.rsplit(":", 2)
        host, port = board.rsplit(":", 1)
        if not (bank.startswith("bank") and relay.startswith("relay")):
            return None
        location = host, int(port), int(bank[4:]), int(relay[5:])
    except ValueError:
        return None
    if host != "localhost" and not host.startswith("127."):
        return None
    return location


def loopback_plug(relay_info: Optional[str]) -> Optional[tuple[str, int, int, int]]:
    """``(pdudaemon host, pdudaemon port, plug port, outlet)`` for a device behind a simulated
    plug: ``pdudaemon://HOST[:PORT]/127.0.0.1:PLUGPORT/OUTLET`` (pdudaemon's name for the PDU is
    the plug's loopback address), else None."""
    if not relay_info or not relay_info.strip().lower().startswith("pdudaemon://"):
        return None
    from mozpool.bmm.interfaces import PowerConfigError
    from mozpool.bmm.pdudaemon import parse_location

    try:
        where = parse_location(relay_info)
        host, _, port = where.pdu.rpartition(":")
        location = where.host, where.port, int(port), int(where.outlet)
    except (PowerConfigError, ValueError):
        return None
    if host != "localhost" and not host.startswith("127."):
        return None
    return location


def default_http_client(reactor: Any) -> Any:
    """treq over a non-persistent Agent: events are rare, and shutdown leaves no sockets."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class FakePool:
    """Boards, agents and devices for ``devices``; :meth:`start` / :meth:`stop` return Deferreds.

    - ``api_url``: the daemon's base URL, e.g. ``http://127.0.0.1:8010``.
    - ``tftp_address``: ``(host, port)`` of the daemon's TFTP server; a wildcard or ``localhost``
      host means ``127.0.0.1``.
    - ``http``: a treq-like client (``get``/``post`` returning treq responses); default real treq.
    - ``failures``: a :class:`FailureSettings` shared by every device (default: none injected).
    - ``rng``: seeds one generator per device, in row order, so a seeded pool replays exactly.
    - ``board_options``: extra keywords for every :class:`FakeRelayBoard`.
    - ``pdudaemon_config_path``: where :meth:`start` writes pdudaemon's configuration for the
      simulated plugs (when there are any), for the operator to start pdudaemon with.
    """

    def __init__(
        self,
        reactor: Any,
        devices: Iterable[Union[DeviceRow, Mapping[str, Any]]],
        *,
        api_url: str,
        tftp_address: tuple[str, int],
        http: Any = None,
        time_scale: float = 1.0,
        failures: Optional[FailureSettings] = None,
        rng: Optional[random.Random] = None,
        sut_images: Iterable[str] = DEFAULT_SUT_IMAGES,
        interface: str = "127.0.0.1",
        board_options: Optional[Mapping[str, Any]] = None,
        event_timeout: float = EVENT_TIMEOUT,
        tftp_deadline: float = tftpclient.DEFAULT_DEADLINE,
        pdudaemon_config_path: Optional[str] = None,
        board_faults: Iterable[BoardFault] = (),
    ) -> None:
        self._reactor = reactor
        self.api_url = api_url
        host, port = tftp_address
        self.tftp_address = ("127.0.0.1" if host in _WILDCARD_HOSTS else host, port)
        self._http = http if http is not None else default_http_client(reactor)
        self.time_scale = time_scale
        self.failures = failures if failures is not None else FailureSettings()
        self.interface = interface
        self._board_options = dict(board_options or {})
        #: whole-board faults applied at start (mozpool.fakes.boardfaults)
        self.board_faults = list(board_faults)
        self._fault_timers: list[Any] = []
        self._tftp_deadline = tftp_deadline
        self.pdudaemon_config_path = pdudaemon_config_path
        rng = rng if rng is not None else random.Random()
        self._rng = random.Random(rng.getrandbits(64))

        #: port -> board (created at start); "localhost:P" and "127.0.0.1:P" are one board
        self.boards: dict[int, FakeRelayBoard] = {}
        #: port -> simulated smart plug (created at start)
        self.plugs: dict[int, FakeTasmotaPlug] = {}
        #: pdudaemon listeners named by the plugged devices' relay_info
        self.pdudaemons: set[tuple[str, int]] = set()
        self.devices: dict[str, SimulatedDevice] = {}
        self.agents: dict[str, SimulatedSUTAgent] = {}
        #: names of rows that cannot be simulated (no loopback relay with a port)
        self.skipped: list[str] = []
        self._by_fqdn: dict[str, SimulatedDevice] = {}
        self._locations: dict[str, tuple[int, int, int]] = {}
        self._by_relay: dict[tuple[int, int, int], SimulatedDevice] = {}
        self._board_ports: set[int] = set()
        self._plug_locations: dict[str, tuple[int, int]] = {}
        self._by_outlet: dict[tuple[int, int], SimulatedDevice] = {}
        self.running = False

        for raw in devices:
            row = DeviceRow.of(raw)
            location = loopback_location(row.relay_info)
            plugged = None if location is not None else loopback_plug(row.relay_info)
            if location is None and plugged is None:
                log.warn("fakes: {device} has no loopback relay or plug ({relay!r}); not simulated",
                         device=row.name, relay=row.relay_info)
                self.skipped.append(row.name)
                continue
            agent = SimulatedSUTAgent(reactor, interface=interface)
            device = SimulatedDevice(
                row.name,
                clock=reactor,
                http=self._http,
                api_url=api_url,
                fetch_pxe=self._fetch,
                mac=row.mac,
                fqdn=row.fqdn,
                rng=random.Random(rng.getrandbits(64)),
                failures=self.failures,
                time_scale=time_scale,
                sdcard_image=row.image,
                stored_state=row.state,
                agent=agent,
                sut_images=sut_images,
                event_timeout=event_timeout,
            )
            self.devices[row.name] = device
            self.agents[row.name] = agent
            self._by_fqdn[row.fqdn] = device
            if location is not None:
                _, key, bank, relay = location
                self._board_ports.add(key)
                self._locations[row.name] = (key, bank, relay)
                self._by_relay[(key, bank, relay)] = device
            elif plugged is not None:
                pdud_host, pdud_port, plug_port, outlet = plugged
                self.pdudaemons.add((pdud_host, pdud_port))
                self._plug_locations[row.name] = (plug_port, outlet)
                self._by_outlet[(plug_port, outlet)] = device

    # ------------------------------------------------------------------ hooks for BMM

    def simulated_ping(self, fqdn: str) -> Optional[bool]:
        """The pinger's override: True/False for our devices, None for everyone else."""
        device = self._by_fqdn.get(fqdn)
        return None if device is None else device.ping()

    def sut_address(self, fqdn: str) -> tuple[str, int]:
        """Where the SUT client reaches this device's agent (the usual address for others)."""
        device = self._by_fqdn.get(fqdn)
        if device is None:
            return default_address(fqdn)
        return self.interface, self.agents[device.name].port

    def device(self, name: str) -> SimulatedDevice:
        return self.devices[name]

    def board_for(self, name: str) -> tuple[FakeRelayBoard, int, int]:
        key, bank, relay = self._locations[name]
        return self.boards[key], bank, relay

    def plug_for(self, name: str) -> tuple[FakeTasmotaPlug, int]:
        port, outlet = self._plug_locations[name]
        return self.plugs[port], outlet

    # ------------------------------------------------------------------ whole-board faults

    def board_numbers(self) -> dict[int, int]:
        """Board number (1 for the first 32 devices, in name order) -> the board's port."""
        numbers: dict[int, int] = {}
        for index, name in enumerate(sorted(self._locations)):
            if index % RELAYS_PER_BOARD == 0:
                numbers.setdefault(index // RELAYS_PER_BOARD + 1, self._locations[name][0])
        return numbers

    def find_board(self, board: str) -> Union[FakeRelayBoard, FakeTasmotaPlug]:
        """A started board or plug by number or name (``localhost-40001``, ``127.0.0.1:40001``);
        KeyError when there is none."""
        text = board.strip()
        if text.isdigit() and len(text) < 5:
            port = self.board_numbers().get(int(text))
            if port is None or port not in self.boards:
                raise KeyError(f"no simulated board number {text} (there are {len(self.boards)})")
            return self.boards[port]
        tail = text.replace("-", ":").rsplit(":", 1)[-1]
        if tail.isdigit():
            port = int(tail)
            if port in self.boards:
                return self.boards[port]
            if port in self.plugs:
                return self.plugs[port]
        raise KeyError(f"no simulated board or plug named {board!r}")

    def set_board_fault(self, board: str, mode: str, probability: float = 1.0) -> None:
        """Give a whole board a fault (``hang``, ``dead``, ``flaky`` with ``probability``) or
        none (``ok``); KeyError for an unknown board, ValueError for a mode it cannot have."""
        found = self.find_board(board)
        if mode not in ("hang", "dead", "flaky", "ok"):
            raise ValueError(f"unknown board fault {mode!r}")
        if mode == "flaky" and not isinstance(found, FakeRelayBoard):
            raise ValueError("flaky applies to relay boards")
        found.hang = mode == "hang"
        if isinstance(found, FakeRelayBoard):
            found.flaky = probability if mode == "flaky" else 0.0
        if mode == "dead":
            found.refuse()
        else:
            found.accept()
        log.warn("fakes: board {board} (port {port}) is now {mode}", board=board, port=found.port,
                 mode=mode if mode != "flaky" else f"flaky (drops {probability:g} of connections)")

    def _schedule_fault(self, fault: BoardFault) -> None:
        """A fault now, or at its window's start; cleared at its window's end (scaled)."""
        self.find_board(fault.board)  # an unknown board is refused at start, not later
        if fault.start is None:
            self.set_board_fault(fault.board, fault.mode, fault.probability)
        else:
            self._fault_timers.append(self._reactor.callLater(
                fault.start * self.time_scale, self.set_board_fault, fault.board, fault.mode, fault.probability))
        if fault.end is not None:
            self._fault_timers.append(self._reactor.callLater(
                fault.end * self.time_scale, self.set_board_fault, fault.board, "ok"))

    def powered(self, name: str) -> bool:
        """Whether the device's relay or outlet gives it power now."""
        if name in self._plug_locations:
            plug, outlet = self.plug_for(name)
            return plug.device_on(outlet)
        board, bank, relay = self.board_for(name)
        return board.device_on(bank, relay)

    def pdudaemon_config(self) -> Optional[dict[str, Any]]:
        """pdudaemon's configuration for the simulated plugs (None when there are none): its
        HTTP listener where the devices' relay_info names it, one ``tasmota`` PDU per plug."""
        if not self._plug_locations:
            return None
        host, port = sorted(self.pdudaemons)[0]
        if len(self.pdudaemons) > 1:
            log.warn("fakes: devices name {n} pdudaemons; the configuration is for {host}:{port}",
                     n=len(self.pdudaemons), host=host, port=port)
        plugs = {f"127.0.0.1:{p}": f"127.0.0.1:{p}" for p in sorted({p for p, _ in self._plug_locations.values()})}
        return pdudaemon_config(plugs, host, port)

    # ------------------------------------------------------------------ life cycle

    def _fetch(self, path: str) -> "Deferred[bytes]":
        host, port = self.tftp_address
        return tftpclient.fetch(self._reactor, host, port, path, deadline=self._tftp_deadline)

    def start(self) -> "Deferred[None]":
        """Listen on every board's own port and give each agent a port; then power the devices."""
        if self.running:
            return succeed(None)
        try:
            for port in sorted(self._board_ports):
                board = FakeRelayBoard(self._reactor, port=port, interface=self.interface,
                                       rng=random.Random(self._rng.getrandbits(64)), **self._board_options)
                board.start()
                board.add_listener(self._power_listener(port))
                self.boards[port] = board
            for port in sorted({p for p, _ in self._plug_locations.values()}):
                plug = FakeTasmotaPlug(self._reactor, port=port, interface=self.interface)
                plug.start()
                plug.add_listener(self._outlet_listener(port))
                self.plugs[port] = plug
            self._write_pdudaemon_config()
            for fault in self.board_faults:
                self._schedule_fault(fault)
            # Each agent takes a free port once and keeps it, so sut_address is stable.
            releasing = []
            for agent in self.agents.values():
                agent.start()
                releasing.append(maybeDeferred(agent.stop))
        except Exception:
            failure = Failure()
            log.failure("fakes: cannot start the simulated pool", failure)
            return self._stop_parts().addCallback(lambda _: failure)  # type: ignore[return-value]
        self.running = True

        def power_up(_: Any) -> None:
            for name, device in self.devices.items():
                device.start(self.powered(name))
            log.info("fakes: {n} simulated devices on {b} relay boards and {p} smart plugs", n=len(self.devices),
                     b=len(self.boards), p=len(self.plugs))

        return DeferredList(releasing).addCallback(power_up)

    def _power_listener(self, key: int) -> Callable[[int, int, bool], None]:
        def changed(bank: int, relay: int, on: bool) -> None:
            device = self._by_relay.get((key, bank, relay))
            if device is not None:
                device.set_power(on)

        return changed

    def _outlet_listener(self, port: int) -> Callable[[int, bool], None]:
        def changed(outlet: int, on: bool) -> None:
            device = self._by_outlet.get((port, outlet))
            if device is not None:
                device.set_power(on)

        return changed

    def _write_pdudaemon_config(self) -> None:
        config = self.pdudaemon_config()
        if config is None or not self.pdudaemon_config_path:
            return
        import json

        with open(self.pdudaemon_config_path, "w") as f:
            json.dump(config, f, indent=2)
        log.info("fakes: {n} devices sit behind {p} smart plugs driven by pdudaemon at {host}:{port}; start it with"
                 " `pdudaemon --conf {path}`", n=len(self._plug_locations), p=len(self.plugs),
                 host=config["daemon"]["hostname"], port=config["daemon"]["port"], path=self.pdudaemon_config_path)

    def stop(self) -> "Deferred[None]":
        self.running = False
        for timer in self._fault_timers:
            if timer.active():
                timer.cancel()
        self._fault_timers = []
        for device in self.devices.values():
            device.stop()
        return self._stop_parts()

    def _stop_parts(self) -> "Deferred[None]":
        stopping = [maybeDeferred(agent.stop, dropConnections=True) for agent in self.agents.values()]
        stopping += [board.stop() for board in self.boards.values()]
        stopping += [plug.stop() for plug in self.plugs.values()]
        self.boards = {}
        self.plugs = {}
        return DeferredList(stopping).addCallback(lambda _: None)


PoolSource = Union[FakePool, Callable[[], Union[FakePool, "Deferred[FakePool]"]]]


class FakePoolService(Service):
    """The pool as a child service of the daemon.

    ``source`` is a pool or a callable giving one (or a Deferred of one), so the tap can read the
    device rows once the database is ready.  The hooks answer "not simulated" until it runs.
    ``on_failure`` is called with the failure when the pool cannot start (a port another process
    holds): the tap stops the daemon then, rather than run with its devices wired to someone
    else's board.
    """

    name = "fakes"

    def __init__(self, source: PoolSource, on_failure: Optional[Callable[[Failure], None]] = None) -> None:
        self._source = source
        self._on_failure = on_failure
        self.pool: Optional[FakePool] = None
        self.ready: Deferred[FakePool] = Deferred()
        self._starting: Optional[Deferred[Any]] = None

    def startService(self) -> None:
        super().startService()
        source = self._source
        d = succeed(source) if isinstance(source, FakePool) else maybeDeferred(source)

        def start(pool: FakePool) -> Deferred[Any]:
            self.pool = pool
            return pool.start().addCallback(lambda _: pool)

        def started(pool: FakePool) -> None:
            self._starting = None
            if not self.ready.called:
                self.ready.callback(pool)

        def failed(f: Failure) -> None:
            self._starting = None
            log.failure("fakes: the simulated pool did not start", f)
            if self._on_failure is not None and not f.check(CancelledError):  # not: stopped while starting
                self._on_failure(f)

        d.addCallback(start)
        d.addCallbacks(started, failed)
        self._starting = d

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._starting is not None:
            self._starting.cancel()
        if self.pool is None:
            return succeed(None)
        return self.pool.stop()

    def simulated_ping(self, fqdn: str) -> Optional[bool]:
        return None if self.pool is None else self.pool.simulated_ping(fqdn)

    def sut_address(self, fqdn: str) -> tuple[str, int]:
        return default_address(fqdn) if self.pool is None else self.pool.sut_address(fqdn)

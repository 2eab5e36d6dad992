"""``twistd mozpool``: command-line options and the service tree.

The plugin (twisted/plugins/mozpool_plugin.py) and mozpool.tac both call :func:`makeService`;
nothing else in the package touches the global reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogPublisher
from twisted.python import usage

from mozpool import __version__, heap
from mozpool.config import Config, ConfigError, load_config
from mozpool.db import catalog, devices, fixtures, schema, tokens
from mozpool.db.pool import Database
from mozpool.db.purge import purge
from mozpool.logconfig import Logger, hygiene
from mozpool.serverurl import base_url
from mozpool.serverurl import host as server_host
from mozpool.serverurl import host_port
from mozpool.timeutil import dbnow

log = Logger()

#: option name -> (Config attribute, converter)
_OVERRIDES = {
    "port": ("port", int),
    "listen-host": ("listen_host", str),
    "tftp-port": ("tftp_port", int),
    "tftp-root": ("tftp_root", str),
    "tftp-workers": ("tftp_workers", int),
    "db": ("db_url", str),
    "fqdn": ("fqdn", str),
    "fakes": ("fakes", int),
    "time-scale": ("time_scale", float),
    "manhole": ("manhole_endpoint", str),
    "auth": ("auth_mode", str),
    "endpoint": ("http_endpoint", str),
}

#: In fakes mode, unless given: an unprivileged TFTP port, a local TFTP root and database.
#: Simulated devices fetch only PXE configs, which the daemon answers itself: no TFTP workers.
FAKES_DEFAULTS = {"tftp_port": 6969, "tftp_root": "tftproot", "db_url": "sqlite:///mozpool.sqlite", "tftp_workers": 0}

#: [fakes] keys that are settings, not failure probabilities
FAKES_SETTINGS = ("seed", "relay_base_port", "pdudaemon", "pdudaemon_url", "plug_base_port", "pdudaemon_config",
                  "fail_board")

PURGE_INTERVAL = 3600.0
RETRY_START_INTERVAL = 5.0


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "MozPool: a device-pool manager (HTTP API, LifeGuard, BMM) in one Twisted process."
    optParameters = [
        ["config", "c", None, "INI configuration file (default: $MOZPOOL_CONFIG)."],
        ["port", "p", None, "HTTP API port (default 8010)."],
        ["listen-host", None, None, "Interface the HTTP API listens on (default 0.0.0.0)."],
        ["tftp-port", None, None, "UDP port of the TFTP server (default 69; 0 disables it)."],
        ["tftp-root", None, None, "Directory served over TFTP (PXE configs go to pxelinux.cfg/)."],
        ["tftp-workers", None, None, "TFTP worker processes for large files (default: one per CPU; 0: none)."],
        ["db", None, None, "Database URL: sqlite:///file.sqlite or mysql://user:pw@host:port/db."],
        ["fqdn", None, None, "This server's name as others reach it, NAME[:PORT]."],
        ["fakes", None, None, "Run N simulated devices (seeds an empty SQLite database)."],
        ["time-scale", None, None, "Multiply every state-machine timeout and simulated delay by X."],
        ["manhole", None, None, "Endpoint of the Python console, e.g. tcp:2222:interface=127.0.0.1."],
        ["endpoint", None, None, "Twisted endpoint of the HTTP API, e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem "
                                 "(instead of --port and --listen-host)."],
        ["auth", None, None, "required (mutating calls need a token) or open (trusted network). "
                             "Default: open on loopback, else required."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.fail: list[tuple[str | None, str, float]] = []
        self.fail_board: list[str] = []

    def opt_fail(self, value: str) -> None:
        """Make a simulated device fail: DEVICE:PHASE[:P] (P defaults to 1; DEVICE * means every
        device), e.g. --fail panda-0003:android_extracting. Repeatable."""
        parts = value.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise usage.UsageError(f"--fail wants DEVICE:PHASE[:P], not {value!r}")
        try:
            p = float(parts[2]) if len(parts) == 3 else 1.0
        except ValueError:
            raise usage.UsageError(f"--fail: bad probability in {value!r}") from None
        self.fail.append((None if parts[0] == "*" else parts[0], parts[1], p))

    def opt_fail_board(self, value: str) -> None:
        """Give a whole simulated board a fault: BOARD:hang|dead|flaky[:P] (BOARD: its number, 1 for
        the first 32 devices, or its name), e.g. --fail-board 1:hang. Repeatable."""
        from mozpool.fakes.boardfaults import parse_board_fault

        try:
            parse_board_fault(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.fail_board.append(value)

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {"fail": self.fail or None, "fail_board": self.fail_board or None}
        for option, (attr, convert) in _OVERRIDES.items():
            if self[option] is not None:
                try:
                    overrides[attr] = convert(self[option])
                except ValueError:
                    raise usage.UsageError(f"--{option}: invalid value {self[option]!r}") from None
        try:
            config = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if config.fakes:
            for attr, default in FAKES_DEFAULTS.items():
                explicit = attr in overrides or _in_file(config, attr)
                if not explicit:
                    setattr(config, attr, default)
        if config.manhole_endpoint:
            from mozpool.manhole import check_endpoint

            try:
                check_endpoint(config.manhole_endpoint, config.manhole_allow_remote)
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        try:
            logging_settings(config)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if config.fakes:
            try:
                fake_failures(config)
            except ValueError as e:
                raise usage.UsageError(f"fault injection: {e}") from None
            try:
                fake_pdudaemon(config)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        elif config.fail:
            raise usage.UsageError("--fail applies to simulated devices: add --fakes N")
        elif config.fail_board:
            raise usage.UsageError("--fail-board applies to simulated boards: add --fakes N")
        if config.fakes:
            try:
                fake_board_faults(config)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        try:
            health_settings(config)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.config = config


def logging_settings(config: Config) -> dict[str, Any]:
    """``[logging]``: level, syslog target and facility, JSON file; ValueError when wrong."""
    from mozpool.logconfig import level_named
    from mozpool.syslog import FACILITIES, parse_target

    section = "logging"
    get = lambda key, default: config.extra.get(section, key, fallback=default).strip()  # noqa: E731
    settings = {"level": level_named(get("level", "info")), "syslog": get("syslog", ""),
                "facility": get("facility", "local0"), "json": get("json", "")}
    if settings["syslog"]:
        parse_target(settings["syslog"])
    if settings["facility"] not in FACILITIES:
        raise ValueError(f"[logging] facility must be one of {', '.join(FACILITIES)}")
    return settings


def _in_file(config: Config, attr: str) -> bool:
    from mozpool.config import _KEYS

    return any(a == attr and config.extra.has_option(s, k) for (s, k), a in _KEYS.items())


#: The HTTP listener's accept queue: a burst of CI jobs connecting at once is queued by the
#: kernel instead of refused (Twisted's default is 50; a refused SYN is retried after 1 s).
HTTP_BACKLOG = 1024


def _listen(port: int, host: str, proto: str = "tcp") -> str:
    iface = host.replace(":", "\\:")
    return f"{proto}:{port}:backlog={HTTP_BACKLOG}" + (f":interface={iface}" if host else "")


async def check_ping_tool(db: Database, config: Config) -> None:
    """Say clearly at start-up when this server has real devices and fping cannot run."""
    from mozpool.bmm.ping import FpingMissing, check_fping

    if config.fakes or config.extra.get("ping", "method", fallback="fping") != "fping":
        return
    owned = await db.runInteraction(devices.count_owned, config.server_fqdn)
    if owned:
        try:
            check_fping(config.extra.get("ping", "fping", fallback=None))
        except FpingMissing as e:
            log.error("{devices} devices need ping, but {problem}", devices=owned, problem=str(e))


async def prepare_database(db: Database, config: Config, clock: Any) -> None:
    """Make sure the schema is current and this server has its row; with ``--fakes`` on an
    empty database create the schema, and seed devices when this server owns none yet."""
    have = await schema.current_version(db)
    if have is None and config.fakes:
        await schema.create_schema(db)
    else:
        await schema.require_current(db)
    fqdn = config.server_fqdn
    await catalog.ensure_server(db, fqdn)
    if config.fakes:
        owned = await db.runInteraction(devices.count_owned, fqdn)
        if not owned:
            from mozpool.fakes import ports

            taken = set(await devices.list_names(db))
            prefix = "panda" if not taken else fake_name_prefix(fqdn)
            base = config.extra.getint("fakes", "relay_base_port", fallback=fixtures.DEFAULT_RELAY_BASE_PORT)
            plugged, pdudaemon = fake_pdudaemon(config)
            plugs = -(-plugged // fixtures.OUTLETS_PER_PLUG)
            avoid = ports.referenced_ports(await db.runInteraction(ports.all_relay_infos))
            board_ports = None
            if not config.extra.has_option("fakes", "relay_base_port"):
                # Ports free now and named by no other server's devices (several daemons may
                # share this machine and its loopback).
                boards = -(-(config.fakes - plugged) // fixtures.DEVICES_PER_BOARD)
                board_ports = await ports.free_ports(clock, boards, avoid)
            if config.extra.has_option("fakes", "plug_base_port"):
                plug_base = config.extra.getint("fakes", "plug_base_port")
                plug_ports = [plug_base + k for k in range(plugs)]
            else:
                plug_ports = await ports.free_ports(clock, plugs, avoid | set(board_ports or ()))
            n = await fixtures.load_fixture(db, fqdn, config.fakes, dbnow(clock), prefix=prefix, relay_base_port=base,
                                            board_ports=board_ports, pdudaemon=plugged, pdudaemon_address=pdudaemon,
                                            plug_ports=plug_ports)
            log.info("seeded {n} simulated devices for {fqdn}", n=n, fqdn=fqdn)
    await check_ping_tool(db, config)


def fake_pdudaemon(config: Config) -> tuple[int, str]:
    """``[fakes] pdudaemon``: how many simulated devices sit behind smart plugs driven by
    pdudaemon (the last ones), and ``pdudaemon_url``: where that pdudaemon listens, as
    ``(count, host:port)``; ValueError when wrong."""
    from urllib.parse import urlsplit

    from mozpool.db.fixtures import DEFAULT_PDUDAEMON

    text = config.extra.get("fakes", "pdudaemon", fallback="0").strip() or "0"
    if not text.isdigit() or int(text) > config.fakes:
        raise ValueError(f"[fakes] pdudaemon must be a number of devices from 0 to {config.fakes}, not {text!r}")
    url = config.extra.get("fakes", "pdudaemon_url", fallback=f"http://{DEFAULT_PDUDAEMON}").strip()
    try:
        split = urlsplit(url)
        scheme, host, port = split.scheme, split.hostname, split.port or 16421
    except ValueError:
        scheme, host, port = "", None, 0
    if scheme != "http" or not host:
        raise ValueError(f"[fakes] pdudaemon_url must be http://HOST[:PORT], not {url!r}")
    return int(text), (f"[{host}]" if ":" in host else host) + f":{port}"


def fake_name_prefix(fqdn: str) -> str:
    """The simulated devices' name prefix of a server that is not the first: its host's first
    label, and its port when it has one, so every daemon on one host has its own names
    (``127.0.0.1:8011`` -> ``127-8011-panda``, ``imaging2.example.com`` -> ``imaging2-panda``)."""
    hp = host_port(fqdn)
    host, _, port = hp.rpartition(":") if hp.count(":") == 1 else (hp, "", "")
    label = host.strip("[]").split(".")[0].replace(":", "-") or "server"
    return f"{label}-{port}-panda" if port else f"{label}-panda"


class FakePortTaken(Exception):
    """A simulated smart plug's port is held by another process: the daemon does not start."""


async def wire_fake_boards(db: Database, fqdn: str, reactor: Any) -> list[Any]:
    """This server's device rows, after moving any simulated board whose port is busy (not
    ours: another process has it) to a free port no device names.  A busy smart-plug port is
    not moved (pdudaemon's configuration names the plug by its address, and a pdudaemon already
    running would switch the other process's outlets): FakePortTaken."""
    from mozpool.fakes import ports
    from mozpool.fakes.pool import loopback_plug, rows_for_server

    rows = rows_for_server(await devices.list_details(db), fqdn)
    for plug in sorted({p[2] for p in map(loopback_plug, (r.relay_info for r in rows)) if p is not None}):
        if not await ports.bindable(reactor, plug):
            raise FakePortTaken(
                f"simulated smart plug port {plug} is in use by another process; pdudaemon's configuration names"
                " that plug by its address, so it cannot move: free the port (or give this server's plugs"
                " other ports with [fakes] plug_base_port on an empty database) and start again")
    for port in sorted(ports.board_ports(r.relay_info for r in rows)):
        if await ports.bindable(reactor, port):
            continue
        avoid = ports.referenced_ports(await db.runInteraction(ports.all_relay_infos))
        (new_port,) = await ports.free_ports(reactor, 1, avoid)
        moved = await db.runInteraction(ports.move_board, fqdn, port, new_port, dbnow(reactor))
        log.warn("simulated relay board port {port} is in use by another process: moved its {n} devices to port "
                 "{new}", port=port, n=moved, new=new_port)
    return rows_for_server(await devices.list_details(db), fqdn)


class MozpoolService(MultiService):
    """Runs the children (HTTP, TFTP, purge, manhole, ...) once the database is ready, and
    keeps trying to get it ready while it is not: a daemon started before its database
    comes up on its own."""

    def __init__(self, config: Config, db: Database, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.db = db
        self.reactor = reactor
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._children_running = False
        #: the BMM facade, whose PXE address is resolved at start-up when not configured
        self.hardware: Any = None
        #: the API's authority, which learns the cluster secret from the database at start-up
        self.authority: Any = None
        #: observers of the whole log (syslog, JSON file), attached before anything else starts
        self.log_observers: list[Any] = []

    def startService(self) -> None:
        Service.startService(self)
        hygiene.limit_repeats = True
        for observer in self.log_observers:
            if isinstance(observer, Service):
                observer.startService()
            globalLogPublisher.addObserver(observer)
        defer.Deferred.fromCoroutine(self._prepare_then_start()).addErrback(
            lambda f: log.failure("start-up failed", f)
        )

    async def _prepare_then_start(self) -> None:
        while self.running:
            try:
                await prepare_database(self.db, self.config, self.reactor)
                if self.authority is not None:
                    self.authority.cluster_secret = await self.db.runInteraction(tokens.cluster_secret)
                break
            except Exception as e:
                # Not ready yet, or racing another server that is creating the same schema:
                # every step of the preparation is safe to run again.
                log.error("database not ready ({error}); retrying in {s:g} s", error=e, s=RETRY_START_INTERVAL)
                await task.deferLater(self.reactor, RETRY_START_INTERVAL, lambda: None)
        if not self.running:
            return
        if self.authority is not None:
            if self.authority.mode == "open":
                log.warn(
                    "auth mode open: anyone who can reach this server's API may change anything "
                    "(set [auth] mode = required, or listen on loopback only)"
                )
            else:
                log.info("auth mode required: changes need a token (mozpool-token create NAME --role ROLE)")
        if self.hardware is not None and not self.hardware.ipaddress:
            host = server_host(self.config.server_fqdn)
            try:
                self.hardware.ipaddress = await self.reactor.resolve(host)
            except Exception as e:
                log.critical(
                    "cannot resolve {host} for %IPADDRESS% in PXE configs ({error}); set [server] ipaddress",
                    host=host, error=e,
                )
                self.reactor.stop()
                return
        for child in self:
            child.startService()
        self._children_running = True
        log.info("mozpool {version} serving as {fqdn}", version=__version__, fqdn=self.config.server_fqdn)
        self.ready.callback(None)

    def stopService(self) -> "defer.Deferred[Any]":
        """Children stop one after another, last started first: the drivers finish their work
        in hand while the (simulated) hardware and the API they use are still there."""
        Service.stopService(self)
        running, self._children_running = self._children_running, False

        async def stop_all() -> None:
            if running:
                for child in reversed(list(self)):
                    try:
                        await defer.maybeDeferred(child.stopService)
                    except Exception:
                        log.failure("stopping {name} failed", name=child.name)
            self.db.close()
            hygiene.flush(self.reactor.seconds())
            hygiene.limit_repeats = False
            for observer in self.log_observers:
                globalLogPublisher.removeObserver(observer)
                if isinstance(observer, Service):
                    await defer.maybeDeferred(observer.stopService)
                elif hasattr(observer, "close"):
                    observer.close()

        return defer.Deferred.fromCoroutine(stop_all())


def _loopback_or(host: str) -> str:
    return host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"


def makeService(options: Options | dict, reactor: Any = None) -> MozpoolService:
    """The whole daemon: HTTP API, TFTP, LifeGuard and MozPool drivers, purge, fakes, manhole."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    import random

    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    from mozpool.bmm.facade import BMMActions, Hardware, database_boot_tokens, database_logger
    from mozpool.bmm.ping import FpingPinger, TCPProbePinger
    from mozpool.bmm.interfaces import DriverContext
    from mozpool.bmm.power import PowerControl
    from mozpool.bmm.pxe import PXEConfigBackend, PXEConfigs
    from mozpool.bmm.sut import SUT_PORT, SUTClient, default_address
    from mozpool.broker.queue import wakes_queue
    from mozpool.broker.service import Broker, BrokerService
    from mozpool.lifeguard.service import LifeGuard
    from mozpool.web.api import MozpoolAPI
    from mozpool.web.auth import Authority, SignedClient
    from mozpool.web.events import ChangeFeed, EventHub
    from mozpool.web.poolview import PoolView
    from mozpool.web.site import make_site
    from mozpool.web.ui.app import OperatorUI

    config: Config = options.config if isinstance(options, Options) else options["config"]
    fqdn = config.server_fqdn
    db = Database.fromURL(config.db_url, reactor)
    top = MozpoolService(config, db, reactor)
    logs = logging_settings(config)
    hygiene.level = logs["level"]
    if logs["syslog"]:
        from mozpool.syslog import SyslogObserver

        top.log_observers.append(SyslogObserver(reactor, logs["syslog"], logs["facility"]))
    if logs["json"]:
        from mozpool.logconfig import json_observer

        top.log_observers.append(json_observer(logs["json"]))

    from mozpool.endpoints import tls_policy

    tls = tls_policy(config.ca_certs)
    http_client = treq.client.HTTPClient(
        Agent(reactor, contextFactory=tls, pool=HTTPConnectionPool(reactor, persistent=True))
    )

    fakes = None
    if config.fakes:
        from mozpool.fakes.pool import FakePool, FakePoolService

        def build_pool() -> Any:
            return defer.Deferred.fromCoroutine(wire_fake_boards(db, fqdn, reactor)).addCallback(
                lambda rows: FakePool(
                    reactor,
                    rows,
                    api_url=(base_url(fqdn) if config.http_endpoint
                             else f"http://{_loopback_or(config.listen_host)}:{config.port}"),
                    http=treq.client.HTTPClient(
                        Agent(reactor, contextFactory=tls, pool=HTTPConnectionPool(reactor, persistent=False))
                    ),
                    tftp_address=(_loopback_or(config.listen_host), config.tftp_port),
                    time_scale=config.time_scale,
                    failures=fake_failures(config),
                    rng=random.Random(config.extra.getint("fakes", "seed", fallback=None) if config.extra.has_section("fakes") else None),
                    board_options={"recovery_pause": 0.9 * config.time_scale},
                    board_faults=fake_board_faults(config),
                    pdudaemon_config_path=config.extra.get("fakes", "pdudaemon_config",
                                                           fallback="pdudaemon-fakes.json"),
                )
            )

        def cannot_start(failure: Any) -> None:
            # Never run with devices wired to another process's board or plug (issue 12).
            log.critical("the simulated pool cannot start ({error}); stopping: its devices would be driven through"
                         " another process's board or plug", error=failure.getErrorMessage())
            if reactor.running:
                reactor.stop()

        fakes = FakePoolService(build_pool, on_failure=cannot_start)

    simulated = fakes.simulated_ping if fakes else None
    if config.extra.get("ping", "method", fallback="fping") == "tcp":
        port = config.extra.getint("ping", "tcp_port", fallback=SUT_PORT)
        pinger: Any = TCPProbePinger(reactor, port, simulated=simulated)
    else:
        pinger = FpingPinger(reactor, fping=config.extra.get("ping", "fping", fallback=None), simulated=simulated)
    sut = SUTClient(reactor, address_for=fakes.sut_address if fakes else default_address)
    ipaddress = config.ipaddress or ("127.0.0.1" if config.fakes else "")
    # Each device's relay_info names its power driver (ProXR, pdudaemon, ...); under --fakes the
    # drivers scale their pauses like every simulated delay.
    power = PowerControl(DriverContext(reactor, http_client, simulated=bool(config.fakes), time_scale=config.time_scale))
    # The devices' PXE configs, which our TFTP server answers from memory; the files under the
    # root are kept too unless [tftp] pxe_files is off (always without our TFTP server: another
    # one must be serving them).
    pxe_configs = PXEConfigs(config.tftp_root, files=config.tftp_pxe_files or not config.tftp_port)
    hardware = Hardware(
        power, pinger, sut, config.tftp_root, ipaddress, database_logger(db, reactor),
        database_boot_tokens(db), pxe_configs=pxe_configs,
    )
    top.hardware = hardware

    authority = Authority(db, reactor, config.effective_auth_mode, config.anonymous_read)
    top.authority = authority
    servers_client = SignedClient(http_client, authority, fqdn)
    broker = Broker(db, reactor, fqdn, config.time_scale, servers_client, random.Random())
    # Fault isolation by blast radius (issue 15): [health]; controllers are probed with the relay test.
    lifeguard = LifeGuard(db, reactor, hardware, fqdn, config.time_scale, servers_client, broker.request_event,
                          health=health_settings(config), probe=power.test_controller)
    # Issue 15: boot telemetry sees every device transition (in its transaction) and our TFTP
    # server's reads; the health layer explains devices and requests to the API and the UI.
    from mozpool.health.explain import Explainer
    from mozpool.health.telemetry import BootTelemetry

    telemetry = BootTelemetry(db, reactor)
    lifeguard.runner.observers.append(telemetry.observe)
    health = Explainer(db, reactor, telemetry)
    hub = EventHub(reactor)
    # Waiting requests are matched the moment a device may have freed up, on any server.
    hub.listeners.append(lambda kind, data: broker.matcher.wake() if wakes_queue(kind, data) else None)
    # The pool in memory, kept by the change feed: the device list, the summary, cached states
    # and the UI's device tables are answered from it (issue 17).
    view = PoolView(db, reactor, config.time_scale)
    api = MozpoolAPI(
        db, fqdn, reactor, broker=broker, lifeguard=lifeguard, bmm=BMMActions(db, hardware), events=hub,
        authority=authority, time_scale=config.time_scale, view=view, health=health,
    )

    feed = ChangeFeed(db, hub, reactor)
    view.attach(feed)
    feed.setName("events")
    feed.setServiceParent(top)

    http = StreamServerEndpointService(
        serverFromString(reactor, config.http_endpoint or _listen(config.port, config.listen_host)),
        make_site(
            api,
            ui=OperatorUI(db, fqdn, reactor, authority, config.time_scale, view=view, health=health,
                        broker=broker).resource(),
            access_log=config.extra.getboolean("server", "access_log", fallback=False),
        ),
    )
    http.setName("http")
    http.setServiceParent(top)

    if config.tftp_port:
        from mozpool.bmm.tftp import make_tftp_service
        from mozpool.bmm.tftp.backend import FilesystemBackend

        tftp = make_tftp_service(
            config.tftp_root, config.tftp_port, config.listen_host, reactor,
            max_transfers=config.tftp_max_transfers, max_transfers_per_client=config.tftp_max_transfers_per_client,
            backend=PXEConfigBackend(pxe_configs, FilesystemBackend(config.tftp_root)),
            workers=config.tftp_workers, busy_poll=config.tftp_busy_poll_us / 1e6, on_read=telemetry.tftp_read,
        )
        tftp.setName("tftp")
        tftp.setServiceParent(top)

    if fakes is not None:
        # The simulated hardware comes up before LifeGuard watches it, and goes after.
        fakes.setServiceParent(top)

    lifeguard.makeService().setServiceParent(top)
    brokers = BrokerService(broker)
    brokers.setName("broker")
    brokers.setServiceParent(top)
    if config.warm_pool.enabled:
        # Issue 14's warm pool: this server's share of [warm_pool], imaged ahead of demand.
        from mozpool.broker.warm import WarmPool, WarmPoolService

        warm = WarmPool(db, reactor, fqdn, config.warm_pool, lifeguard, config.time_scale)
        lifeguard.runner.observers.append(warm.observe)
        hub.listeners.append(lambda kind, data: warm.wake() if wakes_queue(kind, data) else None)
        WarmPoolService(warm).setServiceParent(top)

    from mozpool.liveness import Heartbeat

    heartbeat = Heartbeat(db, fqdn, reactor, config.time_scale,
                          config.extra.get("server", "heartbeat_file", fallback="") or None)
    heartbeat.setServiceParent(top)
    broker.intake.servers_alive = lambda: heartbeat.servers_alive
    if heartbeat.heartbeat_file:
        # The seed's watchdog file: touched on every timeout pass of either layer, too.
        lifeguard.driver.on_pass = brokers.driver.on_pass = heartbeat.touch_file

    async def purge_step() -> None:
        try:
            counts = await purge(db, dbnow(reactor), config.log_retention_days, config.request_retention_days)
            if any(counts.values()):
                log.info("purged {counts}", counts=counts)
        except Exception:
            log.failure("purge failed; will retry at the next interval")

    purger = TimerService(PURGE_INTERVAL, lambda: defer.Deferred.fromCoroutine(purge_step()))
    purger.clock = reactor
    purger.setName("purge")
    purger.setServiceParent(top)

    if config.inventory.timed:
        from mozpool.inventory.service import make_sync_service

        make_sync_service(db, config.inventory, reactor, fqdn).setServiceParent(top)

    if config.manhole_endpoint:
        from mozpool.manhole import make_manhole_service

        namespace = {
            "config": config, "db": db, "services": top, "api": api, "reactor": reactor,
            "broker": broker, "lifeguard": lifeguard, "hardware": hardware, "fakes": fakes, "events": hub,
        }
        console = make_manhole_service(
            config.manhole_endpoint, config.manhole_username, config.manhole_password, namespace, reactor,
            allow_remote=config.manhole_allow_remote,
        )
        console.setName("manhole")
        console.setServiceParent(top)

    async def freeze_when_settled() -> None:
        """Once start-up has settled (serving, the simulated pool up, the pool view built), what
        it made lives as long as the daemon: out of the cyclic collector's sight (mozpool.heap)."""
        await defer.DeferredList([top.ready] + ([fakes.ready] if fakes is not None else []))
        try:
            await view.sync()
        except Exception as e:
            log.info("pool view not built yet ({error}); freezing start-up without it", error=e)
        heap.freeze_start_up()

    defer.Deferred.fromCoroutine(freeze_when_settled())
    return top


def health_settings(config: Config) -> Any:
    """``[health]``: fault isolation's thresholds (mozpool.lifeguard.health); ValueError when wrong."""
    from mozpool.lifeguard.health import HealthSettings

    return HealthSettings.from_config(config.extra)


def fake_board_faults(config: Config) -> list[Any]:
    """Whole-board faults for the simulated pool: ``[fakes] fail_board`` and every ``--fail-board``."""
    from mozpool.fakes.boardfaults import parse_board_faults

    configured = config.extra.get("fakes", "fail_board", fallback="") if config.extra.has_section("fakes") else ""
    return parse_board_faults(configured) + parse_board_faults(list(config.fail_board))


def fake_failures(config: Config) -> Any:
    """Failure probabilities for simulated devices from ``[fakes]``: ``PHASE = P`` for every
    device, ``DEVICE.PHASE = P`` for one (e.g. ``panda-0003.android_extracting = 1``)."""
    from mozpool.fakes.device import FailureSettings

    failures = FailureSettings()
    if config.extra.has_section("fakes"):
        for key, value in config.extra.items("fakes"):
            if key in FAKES_SETTINGS:
                continue
            device, _, phase = key.rpartition(".")
            failures.set(phase, float(value), device=device or None)
    for device, phase, p in config.fail:
        failures.set(phase, p, device=device)
    return failures

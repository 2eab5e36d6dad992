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
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from mozpool import __version__
from mozpool.config import Config, ConfigError, load_config
from mozpool.db import catalog, devices, fixtures, schema
from mozpool.db.errors import DatabaseError
from mozpool.db.pool import Database
from mozpool.db.purge import purge
from mozpool.timeutil import dbnow

log = Logger()

#: option name -> (Config attribute, converter)
_OVERRIDES = {
    "port": ("port", int),
    "listen-host": ("listen_host", str),
    "tftp-port": ("tftp_port", int),
    "tftp-root": ("tftp_root", str),
    "db": ("db_url", str),
    "fqdn": ("fqdn", str),
    "fakes": ("fakes", int),
    "time-scale": ("time_scale", float),
    "manhole": ("manhole_endpoint", str),
}

#: In fakes mode, unless given: an unprivileged TFTP port, a local TFTP root and database.
FAKES_DEFAULTS = {"tftp_port": 6969, "tftp_root": "tftproot", "db_url": "sqlite:///mozpool.sqlite"}

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
        ["db", None, None, "Database URL: sqlite:///file.sqlite or mysql://user:pw@host:port/db."],
        ["fqdn", None, None, "This server's name as others reach it, NAME[:PORT]."],
        ["fakes", None, None, "Run N simulated devices (seeds an empty SQLite database)."],
        ["time-scale", None, None, "Multiply every state-machine timeout and simulated delay by X."],
        ["manhole", None, None, "Endpoint of the Python console, e.g. tcp:2222:interface=127.0.0.1."],
    ]

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {}
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
        self.config = config


def _in_file(config: Config, attr: str) -> bool:
    from mozpool.config import _KEYS

    return any(a == attr and config.extra.has_option(s, k) for (s, k), a in _KEYS.items())


def _listen(port: int, host: str, proto: str = "tcp") -> str:
    iface = host.replace(":", "\\:")
    return f"{proto}:{port}:interface={iface}" if host else f"{proto}:{port}"


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
        owned = await db.runInteraction(
            lambda c: c.scalar(
                "SELECT COUNT(*) FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id WHERE s.fqdn = ?",
                (fqdn,),
            )
        )
        if not owned:
            taken = set(await devices.list_names(db))
            prefix = "panda" if not taken else fqdn.split(".")[0].replace(":", "-") + "-panda"
            n = await fixtures.load_fixture(db, fqdn, config.fakes, dbnow(clock), prefix=prefix)
            log.info("seeded {n} simulated devices for {fqdn}", n=n, fqdn=fqdn)


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

    def startService(self) -> None:
        Service.startService(self)
        defer.Deferred.fromCoroutine(self._prepare_then_start()).addErrback(
            lambda f: log.failure("start-up failed", f)
        )

    async def _prepare_then_start(self) -> None:
        while self.running:
            try:
                await prepare_database(self.db, self.config, self.reactor)
                break
            except (DatabaseError, OSError) as e:
                log.error("database not ready ({error}); retrying in {s:g} s", error=e, s=RETRY_START_INTERVAL)
                await task.deferLater(self.reactor, RETRY_START_INTERVAL, lambda: None)
        if not self.running:
            return
        for child in self:
            child.startService()
        self._children_running = True
        log.info("mozpool {version} serving as {fqdn}", version=__version__, fqdn=self.config.server_fqdn)
        self.ready.callback(None)

    def stopService(self) -> "defer.Deferred[Any]":
        Service.stopService(self)
        stopping = []
        if self._children_running:
            self._children_running = False
            for child in reversed(list(self)):
                stopping.append(defer.maybeDeferred(child.stopService))
        d = defer.DeferredList(stopping)
        d.addBoth(lambda _: self.db.close())
        return d


def makeService(options: Options | dict, reactor: Any = None) -> MozpoolService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    config: Config = options.config if isinstance(options, Options) else options["config"]
    db = Database.fromURL(config.db_url, reactor)
    top = MozpoolService(config, db, reactor)

    from mozpool.web.api import MozpoolAPI

    api = MozpoolAPI(db, config.server_fqdn, reactor)
    site = Site(api.resource())
    site.displayTracebacks = False
    http = StreamServerEndpointService(serverFromString(reactor, _listen(config.port, config.listen_host)), site)
    http.setName("http")
    http.setServiceParent(top)

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

    if config.tftp_port:
        from mozpool.bmm.tftp import makeTFTPService

        tftp = makeTFTPService(config.tftp_root, config.tftp_port, config.listen_host, reactor)
        tftp.setName("tftp")
        tftp.setServiceParent(top)

    if config.manhole_endpoint:
        from mozpool.manhole import makeManholeService

        namespace = {"config": config, "db": db, "services": top, "api": api, "reactor": reactor}
        console = makeManholeService(
            config.manhole_endpoint, config.manhole_username, config.manhole_password, namespace, reactor,
            allow_remote=config.manhole_allow_remote,
        )
        console.setName("manhole")
        console.setServiceParent(top)
    return top

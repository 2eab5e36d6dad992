"""Ping (bmm-protocols.md section 3): fping children through reactor.spawnProcess, batched,
bounded, at most 16 at once; simulated devices answer from the simulation instead.

Batching: every ping requested within ``window`` seconds (0 = the same reactor turn) goes into
one ``fping -a`` run; fping lists the live targets on stdout, so each caller gets its own
host's answer. The original pinged one host per child and read only the exit status.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, ProcessProtocol
from mozpool.logconfig import Logger
from twisted.python.failure import Failure
from twisted.python.procutils import which
from mozpool.bmm.endpoints import tcp_endpoint
from zope.interface import Interface, implementer

log = Logger()

HOST_RE = re.compile(r"^[A-Za-z0-9.-]+$")
PING_BOUND = 10.0
MAX_CHILDREN = 16

#: returns True/False for a simulated device, None for "not simulated, really ping it"
SimulatedLookup = Callable[[str], "bool | None"]


class IPinger(Interface):
    """Is a device's network stack answering? Fires True/False within the bound, never errbacks."""

    def ping(fqdn: str) -> "Deferred[bool]":
        """Ping one host."""


class FpingMissing(Exception):
    """fping cannot be run; the message is the one-line start-up error."""


def find_fping(configured: str | None = None) -> str | None:
    """The fping to run: the configured path if executable, else the first on PATH."""
    if configured:
        return configured if os.path.isfile(configured) and os.access(configured, os.X_OK) else None
    found = which("fping")
    return found[0] if found else None


def fping_available(configured: str | None = None) -> bool:
    return find_fping(configured) is not None


def check_fping(configured: str | None = None) -> str:
    """Start-up check (option A of section 3): the fping path, or FpingMissing with a clear message."""
    path = find_fping(configured)
    if path is None:
        where = f"at {configured!r}" if configured else "on PATH"
        raise FpingMissing(
            f"fping not found {where}: install the 'fping' package or set [ping] fping "
            f"(or choose [ping] method = tcp)"
        )
    return path




def valid_host(host: str) -> bool:
    # A leading '-' would read as an fping option; no real host name starts with one [ours].
    return bool(HOST_RE.match(host)) and not host.startswith("-")


@dataclass
class _Waiter:
    host: str
    deferred: Deferred[bool]
    deadline: float
    timer: IDelayedCall | None = None

    def fire(self, alive: bool) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.deferred.called:
            self.deferred.callback(alive)


@dataclass
class _Batch:
    hosts: list[str]
    waiters: list[_Waiter]
    stdout: bytes = b""
    stderr: bytes = b""
    killed: bool = False
    transport: Any = None
    kill_timer: IDelayedCall | None = None
    done: bool = False


class _FpingProtocol(ProcessProtocol):
    def __init__(self, pinger: "FpingPinger", batch: _Batch) -> None:
        self.pinger = pinger
        self.batch = batch

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.batch.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.batch.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.pinger._batch_ended(self.batch, reason)


@dataclass
class PingStats:
    """Counters for tests and the daemon's health view."""

    spawned: int = 0
    killed: int = 0
    simulated: int = 0
    hosts_pinged: int = 0
    exit_codes: dict[int, int] = field(default_factory=dict)


@implementer(IPinger)
class FpingPinger:
    """Batched, bounded fping; ``simulated`` is consulted first for every host."""

    def __init__(
        self,
        reactor: IReactorProcess,
        fping: str | None = None,
        simulated: SimulatedLookup | None = None,
        bound: float = PING_BOUND,
        window: float = 0.0,
        max_children: int = MAX_CHILDREN,
        max_batch: int = 64,
        retries: int = 4,
        timeout_ms: int = 50,
    ) -> None:
        self._reactor = reactor
        self._clock = cast(IReactorTime, reactor)  # one reactor, both interfaces
        self.fping = find_fping(fping)
        self._configured = fping
        self.simulated = simulated
        self.bound = bound
        self.window = window
        self.max_children = max_children
        self.max_batch = max_batch
        self.retries = retries
        self.timeout_ms = timeout_ms
        self._queue: list[_Waiter] = []
        self._flush_call: IDelayedCall | None = None
        self._running: set[int] = set()
        self._batches: list[_Batch] = []
        self.stats = PingStats()
        if self.fping is None:
            log.error("{message}", message=self._missing_message())

    def _missing_message(self) -> str:
        try:
            check_fping(self._configured)
        except FpingMissing as e:
            return str(e)
        return ""

    @property
    def running(self) -> int:
        """fping children alive now."""
        return len(self._batches)

    def ping(self, fqdn: str) -> "Deferred[bool]":
        if self.simulated is not None:
            try:
                answer = self.simulated(fqdn)
            except Exception:
                log.failure("simulated ping lookup failed for {fqdn}", fqdn=fqdn)
                return succeed(False)
            if answer is not None:
                self.stats.simulated += 1
                return succeed(bool(answer))
        if not valid_host(fqdn):
            log.error("refusing to ping invalid host name {fqdn!r}", fqdn=fqdn)
            return succeed(False)
        if self.fping is None:
            log.error("cannot ping {fqdn}: {message}", fqdn=fqdn, message=self._missing_message())
            return succeed(False)
        waiter = _Waiter(fqdn, Deferred(), self._clock.seconds() + self.bound)
        waiter.timer = self._clock.callLater(self.bound, self._expired, waiter)
        self._queue.append(waiter)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self.window, self._flush)
        return waiter.deferred

    def _expired(self, waiter: _Waiter) -> None:
        waiter.timer = None
        if waiter in self._queue:
            self._queue.remove(waiter)
            log.warn("ping {host}: still queued after {bound} s", host=waiter.host, bound=self.bound)
        else:
            log.warn("ping {host}: no answer within {bound} s", host=waiter.host, bound=self.bound)
        waiter.fire(False)

    def _flush(self) -> None:
        self._flush_call = None
        while self._queue and len(self._batches) < self.max_children:
            hosts: list[str] = []
            waiters: list[_Waiter] = []
            keys: set[str] = set()
            for w in list(self._queue):
                key = w.host.lower()
                if key not in keys:
                    if len(hosts) >= self.max_batch:
                        continue
                    keys.add(key)
                    hosts.append(w.host)
                waiters.append(w)
                self._queue.remove(w)
            self._spawn(_Batch(hosts, waiters))

    def _spawn(self, batch: _Batch) -> None:
        assert self.fping is not None
        args = [self.fping, "-a", f"-r{self.retries}", f"-t{self.timeout_ms}", "--", *batch.hosts]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
        try:
            batch.transport = self._reactor.spawnProcess(
                _FpingProtocol(self, batch), self.fping, args, env=env, childFDs={0: "w", 1: "r", 2: "r"}
            )
        except Exception:
            log.failure("cannot start {fping}", fping=self.fping)
            for w in batch.waiters:
                w.fire(False)
            return
        self.stats.spawned += 1
        self.stats.hosts_pinged += len(batch.hosts)
        self._batches.append(batch)
        latest = max(w.deadline for w in batch.waiters)
        batch.kill_timer = self._clock.callLater(max(0.0, latest - self._clock.seconds()), self._kill, batch)

    def _kill(self, batch: _Batch) -> None:
        batch.kill_timer = None
        if batch.done:
            return
        batch.killed = True
        self.stats.killed += 1
        log.warn("fping for {hosts} ran past {bound} s: killing it", hosts=batch.hosts, bound=self.bound)
        try:
            batch.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        for w in batch.waiters:
            w.fire(False)

    def _batch_ended(self, batch: _Batch, reason: Failure) -> None:
        batch.done = True
        if batch.kill_timer is not None and batch.kill_timer.active():
            batch.kill_timer.cancel()
        batch.kill_timer = None
        if batch in self._batches:
            self._batches.remove(batch)
        code = getattr(reason.value, "exitCode", None)
        if code is not None:
            self.stats.exit_codes[code] = self.stats.exit_codes.get(code, 0) + 1
        alive = {line.split()[0].lower() for line in batch.stdout.decode("latin-1").splitlines() if line.split()}
        stderr = batch.stderr.decode("latin-1", "replace")
        if code in (3, 4) or (code is None and not batch.killed):
            log.error(
                "fping configuration error (exit {code}, signal {signal}): {stderr}"
                " (exit 4 usually means fping lacks raw-socket privilege: setuid or cap_net_raw)",
                code=code,
                signal=getattr(reason.value, "signal", None),
                stderr=stderr.strip()[:500],
            )
            alive = set()
        elif code == 2:
            named = {h.lower() for h in batch.hosts}
            logged = False
            for line in stderr.splitlines():
                host, sep, why = line.partition(": ")
                if sep and host.strip().lower() in named:
                    log.info("ping {host}: DNS failure: {why}", host=host.strip(), why=why.strip())
                    logged = True
            if not logged:
                log.info("ping {hosts}: DNS failure (fping exit 2): {stderr}", hosts=batch.hosts, stderr=stderr.strip()[:500])
        for w in batch.waiters:
            w.fire(w.host.lower() in alive)
        if self._queue and self._flush_call is None:
            self._flush()


@implementer(IPinger)
class TCPProbePinger:
    """Option B of section 3: a TCP connect to a device port; accepted or refused both mean up."""

    def __init__(
        self,
        reactor: IReactorTCP,
        port: int,
        simulated: SimulatedLookup | None = None,
        bound: float = PING_BOUND,
        endpoint_factory: Callable[[str, int, float], IStreamClientEndpoint] | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = cast(IReactorTime, reactor)  # one reactor, both interfaces
        self.port = port
        self.simulated = simulated
        self.bound = bound
        self._endpoint_factory = endpoint_factory or self._default_endpoint

    def _default_endpoint(self, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
        return tcp_endpoint(self._reactor, host, port, timeout)

    def ping(self, fqdn: str) -> "Deferred[bool]":
        if self.simulated is not None:
            answer = self.simulated(fqdn)
            if answer is not None:
                return succeed(bool(answer))
        if not valid_host(fqdn):
            log.error("refusing to probe invalid host name {fqdn!r}", fqdn=fqdn)
            return succeed(False)
        d = self._endpoint_factory(fqdn, self.port, self.bound + 1).connect(Factory.forProtocol(Protocol))
        d.addTimeout(self.bound, self._clock)

        def connected(proto: Protocol) -> bool:
            # Never send data: just close.
            if proto.transport is not None:
                proto.transport.abortConnection()
            return True

        def failed(f: Failure) -> bool:
            if f.check(ConnectionRefusedError):
                return True
            log.info("tcp probe of {host}:{port} failed: {why}", host=fqdn, port=self.port, why=f.getErrorMessage())
            return False

        return d.addCallbacks(connected, failed)


__all__ = [
    "IPinger",
    "FpingPinger",
    "TCPProbePinger",
    "FpingMissing",
    "check_fping",
    "find_fping",
    "fping_available",
    "valid_host",
]

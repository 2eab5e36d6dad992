"""pdudaemon client: power control through pdudaemon's HTTP listener, for every PDU and smart plug
pdudaemon has a driver for (APC, Devantech, SNMP, Tasmota, Shelly, ESPHome, ykush, ...).

This is the ``pdudaemon`` power driver (:data:`DRIVER`, registered in ``mozpool.bmm.power``).
A device's ``relay_info`` is ``pdudaemon://host[:port]/PDU/PORT``: pdudaemon's listener at
``host:port`` (default 16421), the PDU as pdudaemon's configuration names it (its ``pdus`` key)
and the PDU's port (a number, or a name for drivers that name their outlets).  Both path parts
are percent-decoded.

The listener (pdudaemon 1.0 and later) takes ``GET /power/control/{on,off,reboot}?hostname=PDU
&port=PORT[&delay=SECONDS]`` and answers when the PDU's driver has finished: 200 ``OK - accepted
request`` when it switched, 500 ``Invalid request`` when the PDU or the request is unknown or the
driver failed every one of its ``retries``.  ``delay`` is whole seconds between off and on.

- One operation per PDU at a time from this daemon, FIFO, each bounded by its deadline (queue
  time included, as for ProXR boards): an operation whose deadline passes while queued never
  reaches pdudaemon, so pdudaemon never switches an outlet after MozPool has given up on it.
  (pdudaemon itself runs one job per PDU at a time too.)
- pdudaemon cannot read an outlet back: successes carry the note ``no read-back``, and
  :meth:`PdudaemonClient.get_status` fails saying so.
- A pdudaemon that is down (refused), slow or hung fails the operation at its deadline with a
  reason, like a hung ProXR board; a PDU that pdudaemon cannot switch fails it with pdudaemon's
  answer.  Configure each PDU's ``retries`` and ``retrydelay`` so that pdudaemon gives up
  within the deadline (30 s).
- :meth:`PdudaemonClient.test_controller` asks pdudaemon for a request it will refuse at once
  (no port): it proves pdudaemon answers, and switches nothing.  Whether the PDU itself answers
  shows only when an outlet is switched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union
from urllib.parse import quote, unquote, urlencode, urlsplit

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from zope.interface import implementer

from mozpool.bmm.endpoints import connect_failure_reason
from mozpool.bmm.interfaces import DriverContext, IPowerControl, PowerConfigError, PowerDriver, PowerResult
from mozpool.logconfig import Logger

log = Logger()

SCHEME = "pdudaemon"
DEFAULT_PORT = 16421
#: pdudaemon's answer to a request it cannot carry out (unknown PDU or port, failed driver)
INVALID = "Invalid request"
NO_READ_BACK = "no read-back"
#: characters left as they are in a PDU name or port of a relay_info
_SAFE = ":@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class PduPort:
    """One outlet: pdudaemon's listener, the PDU it knows by ``pdu``, and the PDU's ``port``."""

    host: str
    port: int
    pdu: str
    outlet: str
    scheme: ClassVar[str] = SCHEME

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def controller(self) -> str:
        return f"{SCHEME}://{self.server}/{quote(self.pdu, safe=_SAFE)}"

    def __str__(self) -> str:
        return f"{self.controller}/{quote(self.outlet, safe=_SAFE)}"


def _server(text: str, netloc: str) -> tuple[str, int]:
    try:
        split = urlsplit("//" + netloc)
        host, port = split.hostname, split.port
    except ValueError:
        raise PowerConfigError(f"bad pdudaemon address in {text!r}") from None
    if not host:
        raise PowerConfigError(f"bad pdudaemon address in {text!r}: no host")
    return host.lower(), port or DEFAULT_PORT


def _parts(text: Optional[str]) -> tuple[str, int, list[str]]:
    if text is None or not text.strip():
        raise PowerConfigError("no relay configured")
    text = text.strip()
    if not text.lower().startswith(SCHEME + "://"):
        raise PowerConfigError(f"{text!r} is not a {SCHEME}:// location")
    netloc, _, path = text[len(SCHEME) + 3:].partition("/")
    host, port = _server(text, netloc)
    return host, port, [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []


def parse_location(text: Optional[str]) -> PduPort:
    """``pdudaemon://host[:port]/PDU/PORT`` -> :class:`PduPort`; PowerConfigError when it is not."""
    host, port, parts = _parts(text)
    if len(parts) != 2 or not all(parts):
        raise PowerConfigError(f"bad relay_info {text!r}: expected {SCHEME}://host[:port]/PDU/PORT")
    return PduPort(host, port, parts[0], parts[1])


def parse_controller(text: str) -> PduPort:
    """``pdudaemon://host[:port]/PDU`` (a ``relay_boards.fqdn``) -> a PduPort without a port."""
    host, port, parts = _parts(text)
    if len(parts) != 1 or not parts[0]:
        raise PowerConfigError(f"bad pdudaemon controller {text!r}: expected {SCHEME}://host[:port]/PDU")
    return PduPort(host, port, parts[0], "")


@dataclass(frozen=True)
class PdudaemonTiming:
    """Deadlines in seconds, queue time included; ``cycle_delay`` is pdudaemon's ``delay``
    between off and on, whole seconds (as ProXR's pause: the device really loses power)."""

    deadline: float = 30.0
    test_deadline: float = 10.0
    cycle_delay: int = 1


class _Answer(Exception):
    """pdudaemon answered, but not with success."""


@implementer(IPowerControl)
class PdudaemonClient:
    """One per daemon, so the per-PDU queues are shared.  ``http`` is treq-like: ``get(url)``
    firing with a response that has ``code`` and ``content()``."""

    def __init__(self, reactor: IReactorTime, http: Any, timing: PdudaemonTiming = PdudaemonTiming()) -> None:
        self._reactor = reactor
        self._http = http
        self.timing = timing
        self._locks: dict[tuple[str, int, str], DeferredLock] = {}

    # ----------------------------------------------------------------- public operations

    def power_on(self, location: Union[str, PduPort, None], deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return self._switch(location, "on", deadline)

    def power_off(self, location: Union[str, PduPort, None], deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return self._switch(location, "off", deadline)

    def power_cycle(self, location: Union[str, PduPort, None], deadline: Optional[float] = None) -> Deferred[PowerResult]:
        """pdudaemon's ``reboot``: off, ``delay`` seconds, on, in one request."""
        return self._switch(location, "reboot", deadline, delay=self.timing.cycle_delay)

    def get_status(self, location: Union[str, PduPort, None], deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return succeed(PowerResult(False, f"{NO_READ_BACK}: pdudaemon cannot read a port's state"))

    def test_controller(self, controller: str, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        try:
            pdu = parse_controller(controller)
        except PowerConfigError as e:
            return succeed(PowerResult(False, str(e)))
        url = f"http://{pdu.server}/power/control/on?" + urlencode({"hostname": pdu.pdu})

        async def body() -> PowerResult:
            code, text = await self._get(url)
            if not text.startswith(INVALID):
                raise _Answer(f"pdudaemon at {pdu.server} answered HTTP {code} {_short(text)!r}, not pdudaemon's"
                              f" {INVALID!r} to a request without a port: is it pdudaemon?")
            return PowerResult(True, note=f"pdudaemon answers; PDU {pdu.pdu} is checked only by switching a port")

        return self._operate(pdu, "test", deadline or self.timing.test_deadline, body, queued=False)

    def drained(self) -> Deferred[None]:
        """Fires once every operation queued so far has finished."""

        def take(lock: DeferredLock) -> Deferred[None]:
            return lock.acquire().addCallback(lambda held: held.release())

        return DeferredList([take(lock) for lock in list(self._locks.values())]).addCallback(lambda _: None)

    # ----------------------------------------------------------------- machinery

    def _switch(self, location: Union[str, PduPort, None], request: str, deadline: Optional[float],
                **extra: int) -> Deferred[PowerResult]:
        try:
            where = location if isinstance(location, PduPort) else parse_location(location)
        except PowerConfigError as e:
            log.warn("pdudaemon {request}: {reason}", request=request, reason=str(e))
            return succeed(PowerResult(False, str(e)))
        query = urlencode({"hostname": where.pdu, "port": where.outlet, **extra})
        url = f"http://{where.server}/power/control/{request}?{query}"

        async def body() -> PowerResult:
            code, text = await self._get(url)
            if code != 200:
                hint = (" (pdudaemon does not know that PDU or port, or the PDU failed every retry)"
                        if text.startswith(INVALID) else "")
                raise _Answer(f"pdudaemon at {where.server} could not {request} PDU {where.pdu} port {where.outlet}:"
                              f" HTTP {code} {_short(text)!r}{hint}")
            log.info("pdudaemon {request} of PDU {pdu} port {port} at {server} done", request=request,
                     pdu=where.pdu, port=where.outlet, server=where.server)
            return PowerResult(True, note=NO_READ_BACK)

        return self._operate(where, request, deadline or self.timing.deadline, body)

    async def _get(self, url: str) -> tuple[int, str]:
        response = await self._http.get(url)
        text = (await response.content()).decode("utf-8", "replace")
        return response.code, text

    def _lock(self, where: PduPort) -> DeferredLock:
        key = (where.host, where.port, where.pdu)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()
        return lock

    def _operate(self, where: PduPort, what: str, deadline: float, body: Any, queued: bool = True) -> Deferred[PowerResult]:
        started = self._reactor.seconds()
        phase = ["queued" if queued else "talking"]

        async def run() -> PowerResult:
            if not queued:
                return await body()
            lock = self._lock(where)
            await lock.acquire()  # cancelled at the deadline: leaves the queue, never sent
            phase[0] = "talking"
            try:
                return await body()
            finally:
                lock.release()

        d = Deferred.fromCoroutine(run())
        # Whatever a step fails with when cancelled at the deadline, the outcome is a timeout.
        d.addTimeout(deadline, self._reactor, lambda result, timeout: Failure(DeferredTimeoutError(
            f"deadline of {timeout}s passed")) if isinstance(result, Failure) else result)

        def failed(f: Failure) -> PowerResult:
            waited = self._reactor.seconds() - started
            if _cancelled(f) and waited < deadline:
                log.info("pdudaemon {what} on {pdu} cancelled by its caller", what=what, pdu=where.controller)
                return PowerResult(False, "cancelled")
            reason = _reason(f, where, waited, phase[0])
            if f.check(_Answer, DeferredTimeoutError, neterror.ConnectError, neterror.DNSLookupError,
                       ResponseFailed, ResponseNeverReceived):
                log.warn("pdudaemon {what} on {pdu} failed: {reason}", what=what, pdu=where.controller, reason=reason)
            else:
                log.failure("pdudaemon {what} on {pdu} failed unexpectedly", f, what=what, pdu=where.controller)
            return PowerResult(False, reason)

        return d.addErrback(failed)


def _cancelled(f: Failure) -> bool:
    """The operation was withdrawn by its caller (LifeGuard's state moved on): not a fault."""
    if f.check(CancelledError, neterror.ConnectingCancelledError):
        return True
    reasons = getattr(f.value, "reasons", None) if f.check(ResponseFailed, ResponseNeverReceived) else None
    return any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons or [])


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."


def _reason(f: Failure, where: PduPort, waited: float, phase: str) -> str:
    server = f"pdudaemon at {where.server}"
    if f.check(DeferredTimeoutError, CancelledError, neterror.TimeoutError):
        queued = f" (still queued behind other operations on PDU {where.pdu})" if phase == "queued" else ""
        return f"timeout communicating with {server} after {waited:.1f}s{queued}"
    connecting = connect_failure_reason(f, server, where.host)
    if connecting:
        return connecting
    if f.check(ResponseFailed, ResponseNeverReceived):
        return f"{server} closed the connection without a complete answer"
    if f.check(_Answer):
        return str(f.value)
    return f"unexpected error talking to {server}: {f.getErrorMessage()}"


def make_driver(context: DriverContext) -> PdudaemonClient:
    """Simulated plugs pause as real ones do, scaled like every simulated delay (to pdudaemon's
    whole seconds)."""
    timing = PdudaemonTiming(cycle_delay=round(context.time_scale)) if context.simulated else PdudaemonTiming()
    if context.http is None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        context = DriverContext(context.reactor, HTTPClient(Agent(context.reactor, pool=HTTPConnectionPool(
            context.reactor, persistent=False))), context.simulated, context.time_scale)
    return PdudaemonClient(context.reactor, context.http, timing)


DRIVER = PowerDriver(SCHEME, parse_location, make_driver, kind="pdudaemon PDU")

"""SUTAgent client: talks the agent's command channel directly (bmm-protocols.md section 2).

The original drove Mozilla's DeviceManagerSUT with blocking sockets and retries; here every
operation is one TCP connection on the injected reactor, bounded by an idle timer per command,
a connect bound and a hard total deadline, and it always ends in a :class:`SUTResult`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, cast

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionLost, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from mozpool.logconfig import Logger
from twisted.python.failure import Failure
from mozpool.bmm.endpoints import tcp_endpoint
from zope.interface import Interface, implementer

log = Logger()

SUT_PORT = 20701
PROMPT = b"$>\x00"
WARNING_MARKER = "##AGENT-WARNING##"
VERSION_RE = re.compile(r"^(\S+) Version (\S+)$")
SDCARD_PAYLOAD = b"autophone test\n"
SDCARD_MD5 = "d548a4ba2f0d8ff52af7ce43e241f7da"
_BAD_PATH_CHARS = re.compile(r"[\s\"']")


@dataclass(frozen=True)
class SUTTimings:
    """Deadlines of section 2.4/2.5; tests shrink them, the daemon keeps the defaults."""

    connect: float = 15.0
    idle: float = 15.0
    verify: float = 30.0
    sdcard: float = 195.0
    reboot: float = 45.0


@dataclass(frozen=True)
class SUTResult:
    """Outcome of one operation; truthy on success so callers may test it like the spec's bool."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class SUTError(Exception):
    """An operation failed for a reason worth one log line (no traceback needed)."""


class SUTAgentWarning(SUTError):
    """The agent answered ``##AGENT-WARNING##``: it got the command but could not do it."""


class SUTProtocolError(SUTError):
    """The agent's bytes broke the framing rules (e.g. data after a prompt)."""


class SUTTimeout(SUTError):
    """A connect, idle or total bound passed."""


DeviceLog = Callable[[str], Any]


class ISUTAgent(Interface):
    """The three SUT operations LifeGuard needs; each fires a SUTResult within its bound."""

    def verify(fqdn: str, device_log: DeviceLog | None = None) -> "Deferred[SUTResult]":
        """Is the agent up and answering (30 s)?"""

    def check_sdcard(fqdn: str, device_log: DeviceLog | None = None) -> "Deferred[SUTResult]":
        """Can the agent write to its storage (195 s)?"""

    def reboot(fqdn: str, device_log: DeviceLog | None = None) -> "Deferred[SUTResult]":
        """Ask the agent to reboot the device (45 s); the state machine judges the reboot."""


EndpointFactory = Callable[[str, int, float], IStreamClientEndpoint]
AddressFor = Callable[[str], "tuple[str, int]"]


def check_path(path: str) -> str:
    """Refuse paths the agent's quote-aware splitter would mangle: we never quote (2.2)."""
    if not path or _BAD_PATH_CHARS.search(path):
        raise SUTError(f"refusing path with whitespace or quotes: {path!r}")
    return path


def default_address(fqdn: str) -> tuple[str, int]:
    """``host`` or ``host:port`` (port defaults to 20701); IPv6 literals need ``[...]:port``."""
    if fqdn.startswith("["):
        host, _, rest = fqdn[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else SUT_PORT
    if fqdn.count(":") == 1:
        host, port = fqdn.split(":")
        return host, int(port)
    return fqdn, SUT_PORT




class SUTClientProtocol(Protocol):
    """One command channel connection: prompt detection, one command at a time, idle timer."""

    def __init__(self, clock: IReactorTime, idle_timeout: float) -> None:
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._buffer = b""
        self._prompted = False
        self._closing = False
        self._lost = False
        self._pending: Deferred[str] | None = None
        self._pending_command = ""
        self._idle_call: IDelayedCall | None = None
        self._error: SUTError | None = None
        self._prompt_waiter: Deferred[None] = Deferred(self._cancel_waiter)

    # -- what the operation code calls -----------------------------------------------------

    def when_prompted(self) -> "Deferred[None]":
        """Fires once the agent's first prompt has arrived (connect phase of 2.2)."""
        return self._prompt_waiter

    def command(self, line: str, payload: bytes = b"") -> "Deferred[str]":
        """Send one command (and push payload) in one write; fire with the stripped body."""
        if self._pending is not None or not self._prompted:
            raise SUTError("command sent before the previous prompt (no pipelining)")
        if self._error is not None:
            return defer.fail(self._error)
        if self._lost:
            return defer.fail(SUTError(f"connection closed before {line.split()[0]!r}"))
        d: Deferred[str] = Deferred(self._cancel_waiter)
        self._pending = d
        self._pending_command = line.split(" ", 1)[0]
        self._buffer = b""
        self._restart_idle()
        assert self.transport is not None
        self.transport.write(line.encode("ascii") + b"\r\n" + payload)
        return d

    def send_and_close(self, line: str) -> None:
        """Write a last command (``quit``/``rebt``) and close without waiting for a reply."""
        if self._lost:
            raise SUTError(f"connection closed before {line!r} could be sent")
        self._closing = True
        self._cancel_idle()
        assert self.transport is not None
        self.transport.write(line.encode("ascii") + b"\r\n")
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once (timeouts and protocol errors)."""
        self._closing = True
        self._cancel_idle()
        if not self._lost and self.transport is not None:
            self.transport.abortConnection()

    # -- Protocol ----------------------------------------------------------------------------

    # The first prompt is bounded by the connect deadline, not the idle timer (2.4).

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._prompted and self._pending is None:
            self._fail(SUTProtocolError(f"unsolicited bytes from agent: {data[:40]!r}"))
            return
        self._buffer += data
        if self._prompted:
            self._restart_idle()
        index = self._buffer.find(PROMPT)
        if index < 0:
            return
        body, extra = self._buffer[:index], self._buffer[index + len(PROMPT) :]
        self._buffer = b""
        if extra:
            self._fail(SUTProtocolError(f"bytes after prompt: {extra[:40]!r}"))
            return
        self._cancel_idle()
        if not self._prompted:
            # Anything before the first prompt is discarded (2.2).
            self._prompted = True
            self._prompt_waiter.callback(None)
            return
        d, self._pending = self._pending, None
        assert d is not None
        text = body.decode("latin-1").strip()
        if text.startswith(WARNING_MARKER):
            d.errback(SUTAgentWarning(text[len(WARNING_MARKER) :].strip()))
        else:
            d.callback(text)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:
        self._lost = True
        self._cancel_idle()
        if not self._closing:
            what = f"reply to {self._pending_command!r}" if self._prompted else "the prompt"
            self._fail(SUTError(f"connection closed by agent while waiting for {what}"))

    # -- internals ---------------------------------------------------------------------------

    def _fail(self, error: SUTError) -> None:
        if self._error is None:
            self._error = error
        waiter: Deferred[Any] | None
        if not self._prompted:
            waiter, self._prompt_waiter = self._prompt_waiter, Deferred()
        else:
            waiter, self._pending = self._pending, None
        self.abort()
        if waiter is not None and not waiter.called:
            waiter.errback(error)

    def _cancel_waiter(self, d: Deferred[Any]) -> None:
        # Cancelling what an operation awaits means its deadline passed: drop the connection.
        self.abort()

    def _restart_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)
        else:
            self._idle_call = self._clock.callLater(self._idle_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle_expired(self) -> None:
        self._idle_call = None
        what = f"reply to {self._pending_command!r}"
        self._fail(SUTTimeout(f"no data from agent for {self._idle_timeout:g} s waiting for {what}"))


class _Session:
    """The commands of 2.3 with the client's interpretation rules."""

    def __init__(self, proto: SUTClientProtocol) -> None:
        self.proto = proto

    async def testroot(self) -> str:
        root = await self.proto.command("testroot")
        if not root:
            raise SUTError("invalid device root (testroot answered nothing)")
        try:
            check_path(root)
        except SUTError:
            raise SUTError(f"invalid device root {root!r}") from None
        return root.rstrip("/") + "/tests" if root != "/" else "/tests"

    async def isdir(self, path: str) -> bool:
        body = await self.proto.command(f"isdir {check_path(path)}")
        if not body:
            raise SUTError("isdir returned nothing")
        return body == "TRUE"

    async def mkdr(self, path: str) -> str:
        return await self.proto.command(f"mkdr {check_path(path)}")

    async def rmdr(self, path: str) -> str:
        return await self.proto.command(f"rmdr {check_path(path)}")

    async def ver(self) -> str:
        body = await self.proto.command("ver")
        if not VERSION_RE.match(body):
            raise SUTError(f"unrecognised ver reply {body[:80]!r}")
        return body

    async def push(self, path: str, payload: bytes) -> None:
        body = await self.proto.command(f"push {check_path(path)} {len(payload)}", payload)
        expected = hashlib.md5(payload).hexdigest()
        if body.lower() != expected:
            raise SUTError(f"push md5 mismatch: expected {expected}, agent said {body[:80]!r}")

    async def device_root(self) -> str:
        """Steps 2-4 of verify: device root, its tests dir, and the version check."""
        root = await self.testroot()
        if not await self.isdir(root):
            await self.mkdr(root)
        await self.ver()
        return root


@implementer(ISUTAgent)
class SUTClient:
    """Runs the three operations of 2.5, each on its own connection and within its bounds."""

    def __init__(
        self,
        reactor: IReactorTCP,
        timings: SUTTimings = SUTTimings(),
        address_for: AddressFor = default_address,
        endpoint_factory: EndpointFactory | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = cast(IReactorTime, reactor)  # one reactor, both interfaces
        self.timings = timings
        self._address_for = address_for
        self._endpoint_factory = endpoint_factory or self._default_endpoint

    def _default_endpoint(self, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
        return tcp_endpoint(self._reactor, host, port, timeout)

    # -- ISUTAgent ---------------------------------------------------------------------------

    def verify(self, fqdn: str, device_log: DeviceLog | None = None) -> "Deferred[SUTResult]":
        async def steps(session: _Session) -> None:
            await session.device_root()
            session.proto.send_and_close("quit")

        return self._operation(fqdn, "verify", "connecting to SUT agent", self.timings.verify, steps, device_log)

    def check_sdcard(self, fqdn: str, device_log: DeviceLog | None = None) -> "Deferred[SUTResult]":
        async def steps(session: _Session) -> None:
            root = await session.device_root()
            test_dir = root + "/sdcardtest"
            if await session.isdir(test_dir):
                await session.rmdr(test_dir)
            if not await session.isdir(test_dir):
                await session.mkdr(test_dir)
            if not await session.isdir(test_dir):
                raise SUTError("failed to create directory under device root")
            await session.push(test_dir + "/sdcard_check", SDCARD_PAYLOAD)
            if await session.isdir(test_dir):
                await session.rmdr(test_dir)
            session.proto.send_and_close("quit")

        return self._operation(fqdn, "sdcard check", "verifying SD card", self.timings.sdcard, steps, device_log)


    def reboot(self, fqdn: str, device_log: DeviceLog | None = None) -> "Deferred[SUTResult]":
        async def steps(session: _Session) -> None:
            await session.device_root()
            session.proto.send_and_close("rebt")

        return self._operation(fqdn, "reboot", "starting reboot", self.timings.reboot, steps, device_log)

    # -- machinery ---------------------------------------------------------------------------

    def _operation(
        self,
        fqdn: str,
        name: str,
        start_line: str,
        total: float,
        steps: Callable[[_Session], Awaitable[None]],
        device_log: DeviceLog | None,
    ) -> "Deferred[SUTResult]":
        if device_log is not None:
            try:
                device_log(start_line)
            except Exception:
                log.failure("device log callback failed for {fqdn}", fqdn=fqdn)
        d = Deferred.fromCoroutine(self._run(fqdn, steps))
        d.addTimeout(total, self._clock)

        def done(result: object) -> SUTResult:
            if isinstance(result, Failure):
                reason = self._describe(result, name, total)
                log.info("SUT {operation} on {fqdn} failed: {reason}", operation=name, fqdn=fqdn, reason=reason)
                return SUTResult(False, reason)
            return SUTResult(True, f"{name} ok")

        return d.addBoth(done)

    @staticmethod
    def _describe(failure: Failure, name: str, total: float) -> str:
        if failure.check(defer.TimeoutError, CancelledError):
            return f"{name} did not finish within {total:g} s"
        if failure.check(SUTAgentWarning):
            return f"agent warning: {failure.value}"
        if failure.check(SUTError):
            return str(failure.value)
        if failure.check(ConnectionRefusedError):
            return "connection refused"
        if failure.check(DNSLookupError):
            return f"DNS lookup failed: {failure.value}"
        if failure.check(ConnectError):
            return f"cannot connect: {failure.value}"
        if failure.check(ConnectionLost, OSError):
            return f"connection error: {failure.value}"
        # Anything else is a bug here, not a device fault: keep the traceback.
        log.failure("unexpected error in SUT {operation}", failure, operation=name)
        return f"internal error: {failure.value!r}"

    async def _run(self, fqdn: str, steps: Callable[[_Session], Awaitable[None]]) -> None:
        try:
            host, port = self._address_for(fqdn)
        except (ValueError, KeyError) as e:
            raise SUTError(f"cannot tell the agent address of {fqdn!r}: {e}") from None
        proto = await self._connect(host, port)
        try:
            await steps(_Session(proto))
        except BaseException:
            proto.abort()
            raise

    async def _connect(self, host: str, port: int) -> SUTClientProtocol:
        """TCP connect plus the first prompt, within the connect bound (2.4)."""
        timings = self.timings
        factory = Factory.forProtocol(lambda: SUTClientProtocol(self._clock, timings.idle))
        # The endpoint's own timeout is a backstop; our timer below fires first with a clear reason.
        endpoint = self._endpoint_factory(host, port, timings.connect + 1)
        holder: list[SUTClientProtocol] = []

        async def phase() -> SUTClientProtocol:
            proto = await endpoint.connect(factory)
            holder.append(proto)
            await proto.when_prompted()
            return proto

        d = Deferred.fromCoroutine(phase())
        d.addTimeout(timings.connect, self._clock)
        try:
            return await d
        except defer.TimeoutError:
            for proto in holder:
                proto.abort()
            what = "prompt from agent" if holder else "connection"
            raise SUTTimeout(f"no {what} within {timings.connect:g} s ({host}:{port})") from None

"""ProXR relay-board client: power control for devices wired through relay boards.

Spec: ``spec/bmm-protocols.md`` section 1.  The boards serve one TCP connection at a time and
need a rest after each, so every board gets a FIFO lock held for a recovery pause after each
connection; different boards work in parallel.  Every operation fires within its deadline
(queue time included) with a :class:`RelayResult`, never with an errback, so callers (LifeGuard,
the ``relay`` command, the two-way test of the web API) only have to look at ``ok``/``reason``.

The device-centric view ("on" = the device has power) is used everywhere except in the codec
(:func:`set_frame`, :func:`decode_status`), the one place that knows devices are wired through
the normally-closed contact.

This is the ``proxr`` power driver (:data:`DRIVER`, registered in ``mozpool.bmm.power``): a
``relay_info`` of ``host[:port]:bankB:relayN`` (spec 1.5) or ``proxr://host[:port]/B/N``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Awaitable, Callable, ClassVar, Optional, Union

from twisted.internet import error as neterror
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredLock,
    TimeoutError as DeferredTimeoutError,
    succeed,
)
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from mozpool.logconfig import Logger
from twisted.python.failure import Failure
from mozpool.bmm.endpoints import connect_failure_reason, tcp_endpoint
from mozpool.bmm.interfaces import DriverContext, IPowerControl, PowerConfigError, PowerDriver, PowerResult
from zope.interface import implementer

log = Logger()

SCHEME = "proxr"
DEFAULT_PORT = 2101
BANKS = range(1, 5)
RELAYS = range(1, 9)

COMMAND_MODE = 254
CMD_TWO_WAY_TEST = 33
ACK = 85
_RELEASE_BASE = 99  # 254 (99+N) B: release relay N -> device on
_ENERGISE_BASE = 107  # 254 (107+N) B: energise relay N -> device off
_READ_BASE = 115  # 254 (115+N) B: read relay N


# --------------------------------------------------------------------------- value objects


class RelayConfigError(PowerConfigError):
    """A board address or ``relay_info`` that cannot be used; a per-device configuration error."""


@dataclass(frozen=True)
class BoardAddress:
    """Where a board listens; equal addresses share one lock (host compared lower-cased)."""

    host: str
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", self.host.lower())

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT else f"{host}:{self.port}"


def parse_board_address(text: str) -> BoardAddress:
    """Parse ``host`` or ``host:port`` (``[v6]:port`` for IPv6 literals)."""
    text = text.strip()
    if not text:
        raise RelayConfigError("empty board address")
    port_text: Optional[str] = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise RelayConfigError(f"bad board address {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # plain host name, or a bare IPv6 literal without a port
    if not host:
        raise RelayConfigError(f"bad board address {text!r}: no host")
    port = DEFAULT_PORT
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise RelayConfigError(f"bad port in board address {text!r}")
        port = int(port_text)
    return BoardAddress(host, port)


def check_bank_relay(bank: int, relay: int) -> None:
    """Reject a bank or relay outside the hardware before anything is opened."""
    if bank not in BANKS:
        raise RelayConfigError(f"bank {bank} out of range 1..4")
    if relay not in RELAYS:
        raise RelayConfigError(f"relay {relay} out of range 1..8")


@dataclass(frozen=True)
class RelayInfo:
    """One device's power location: a board, a bank and a relay."""

    board: BoardAddress
    bank: int
    relay: int
    scheme: ClassVar[str] = SCHEME

    def __post_init__(self) -> None:
        check_bank_relay(self.bank, self.relay)

    @property
    def controller(self) -> str:
        """The board as ``relay_boards.fqdn`` names it: ``host[:port]``, without a scheme."""
        return str(self.board)

    @property
    def outlet(self) -> str:
        return f"bank {self.bank} relay {self.relay}"

    def __str__(self) -> str:
        return f"{self.board}:bank{self.bank}:relay{self.relay}"


def _number(part: str, prefix: str, text: str) -> int:
    if not part.startswith(prefix) or not part[len(prefix):].isdigit():
        raise RelayConfigError(f"bad relay_info {text!r}: expected {prefix}<number>, got {part!r}")
    return int(part[len(prefix):])


def parse_relay_info(text: Optional[str]) -> RelayInfo:
    """Parse ``host[:port]:bankB:relayN`` by splitting from the right (the host may carry a
    port), or ``proxr://host[:port]/B/N`` (``bankB``/``relayN`` accepted in the path too)."""
    if text is None or not text.strip():
        raise RelayConfigError("no relay configured")
    if text.strip().lower().startswith(SCHEME + "://"):
        return _parse_url(text.strip())
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3:
        raise RelayConfigError(f"bad relay_info {text!r}: expected host[:port]:bankB:relayN")
    board = parse_board_address(parts[0])
    return RelayInfo(board, _number(parts[1], "bank", text), _number(parts[2], "relay", text))


def _parse_url(text: str) -> RelayInfo:
    board, _, path = text[len(SCHEME) + 3:].partition("/")
    parts = path.strip("/").split("/")
    if not board or len(parts) != 2:
        raise RelayConfigError(f"bad relay_info {text!r}: expected {SCHEME}://host[:port]/BANK/RELAY")
    bank, relay = (p[len(prefix):] if p.startswith(prefix) else p for p, prefix in zip(parts, ("bank", "relay")))
    if not bank.isdigit() or not relay.isdigit():
        raise RelayConfigError(f"bad relay_info {text!r}: bank and relay are numbers")
    return RelayInfo(parse_board_address(board), int(bank), int(relay))


#: The outcome of a relay operation: BMM's one power outcome (``ok``, ``reason``, ``status``).
RelayResult = PowerResult


class RelayError(Exception):
    """A failed step, carrying the reason that ends up in ``RelayResult.reason``."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else "relay error"


# --------------------------------------------------------------------------- codec


def comms_test_frame() -> bytes:
    """Two-way comms test (no-op)."""
    return bytes([COMMAND_MODE, CMD_TWO_WAY_TEST])


def read_frame(bank: int, relay: int) -> bytes:
    check_bank_relay(bank, relay)
    return bytes([COMMAND_MODE, _READ_BASE + relay, bank])


def set_frame(bank: int, relay: int, device_on: bool) -> bytes:
    """Device on = release the relay (normally-closed wiring), device off = energise it."""
    check_bank_relay(bank, relay)
    base = _RELEASE_BASE if device_on else _ENERGISE_BASE
    return bytes([COMMAND_MODE, base + relay, bank])


def decode_status(byte: int) -> bool:
    """Read reply -> device power: 0 released (on), 1 energised (off); anything else is an error."""
    if byte == 0:
        return True
    if byte == 1:
        return False
    raise RelayError(f"protocol error: read reply {byte} is neither 0 nor 1")


# --------------------------------------------------------------------------- wire protocol


class ProXRProtocol(Protocol):
    """One connection to a board: send a frame, get exactly one byte back, no pipelining."""

    def __init__(self, board: BoardAddress) -> None:
        self.board = board
        self._pending: Optional[Deferred[int]] = None
        self._error: Optional[str] = None
        self._connected = False
        self.lost: Deferred[None] = Deferred()

    @property
    def tcp(self) -> ITCPTransport:
        return self.transport  # type: ignore[return-value]

    def connectionMade(self) -> None:
        self._connected = True

    def command(self, frame: bytes) -> Deferred[int]:
        """Send one frame; the Deferred fires with the reply byte or fails with RelayError."""
        if self._pending is not None:
            raise RuntimeError("ProXR client may not pipeline commands")
        if self._error is not None:
            return _failed(RelayError(self._error))
        if not self._connected:
            return _failed(RelayError(f"connection to {self.board} closed"))
        d: Deferred[int] = Deferred(canceller=self._cancel)
        self._pending = d
        self.tcp.write(frame)
        return d

    def _cancel(self, d: Deferred[int]) -> None:
        """A deadline passed while waiting for the reply: the connection is useless now."""
        self._pending = None
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            self._protocol_error(f"protocol error: unexpected {len(data)} byte(s) from {self.board}")
        elif len(data) > 1:
            self._protocol_error(
                f"protocol error: {self.board} sent {len(data)} bytes for one reply"
            )
            pending.errback(RelayError(self._error))
        else:
            pending.callback(data[0])

    def _protocol_error(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self.abort()

    def abort(self) -> None:
        if self._connected:
            self.tcp.abortConnection()

    def close(self, polite: bool) -> None:
        """Close politely when the exchange went well, abort otherwise (deadline, bad reply)."""
        if not self._connected:
            return
        if polite and self._error is None and self._pending is None:
            self.tcp.loseConnection()
        else:
            self.abort()

    def connectionLost(self, reason: Failure = neterror.ConnectionDone()) -> None:  # type: ignore[assignment]
        self._connected = False
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.errback(
                RelayError(self._error or f"connection closed by {self.board} before its reply")
            )
        if not self.lost.called:
            self.lost.callback(None)


def _failed(exc: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(exc)
    return d


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class RelayTiming:
    """Deadlines and pauses in seconds; real-hardware values, not scaled by ``time_scale``."""

    comms_test_deadline: float = 10.0
    status_deadline: float = 30.0
    set_status_deadline: float = 30.0
    power_cycle_deadline: float = 30.0
    cycle_pause: float = 1.0  # power off -> power on, connection held open
    recovery_pause: float = 1.0  # lock held after each connection
    close_grace: float = 1.0  # wait for a closing connection before aborting it

    @classmethod
    def uniform(cls, deadline: float, **overrides: float) -> "RelayTiming":
        """Same deadline for every operation, as the ``relay`` command uses."""
        return replace(
            cls(deadline, deadline, deadline, deadline),
            **overrides,  # type: ignore[arg-type]
        )


EndpointFactory = Callable[[IReactorTCP, BoardAddress, float], IStreamClientEndpoint]


def default_endpoint(
    reactor: IReactorTCP, board: BoardAddress, timeout: float
) -> IStreamClientEndpoint:
    return tcp_endpoint(reactor, board.host, board.port, timeout)


@dataclass
class _Progress:
    """How far an operation got, to word a timeout's reason."""

    phase: str = "queued"
    started: float = 0.0


Body = Callable[[ProXRProtocol], Awaitable[RelayResult]]


def _timed_out(result: object, timeout: float) -> object:
    """Whatever a step raised when cancelled at the deadline (CancelledError,
    ConnectingCancelledError, ...), the outcome is a timeout."""
    if isinstance(result, Failure):
        return Failure(DeferredTimeoutError(f"deadline of {timeout}s passed"))
    return result


@implementer(IPowerControl)
class RelayClient:
    """ProXR client shared by the whole daemon (one instance, so the per-board locks are shared)."""

    def __init__(
        self,
        reactor: IReactorTime,
        timing: RelayTiming = RelayTiming(),
        endpoint_factory: EndpointFactory = default_endpoint,
    ) -> None:
        self._reactor = reactor
        self.timing = timing
        self._endpoint_factory = endpoint_factory
        self._locks: dict[tuple[str, int], DeferredLock] = {}

    # ----------------------------------------------------------------- public operations

    def power_cycle(
        self, relay_info: Union[str, RelayInfo, None], deadline: Optional[float] = None
    ) -> Deferred[RelayResult]:
        def start(info: RelayInfo) -> Deferred[RelayResult]:
            log.info(
                "power-cycle on {board} bank {bank} relay {relay} initiated",
                board=str(info.board), bank=info.bank, relay=info.relay,
            )

            async def body(proto: ProXRProtocol) -> RelayResult:
                await self._set(proto, info, device_on=False)
                await self._verify(proto, info, device_on=False)
                await deferLater(self._reactor, self.timing.cycle_pause)
                await self._set(proto, info, device_on=True)
                await self._verify(proto, info, device_on=True)
                log.info(
                    "power-cycle on {board} bank {bank} relay {relay} successful",
                    board=str(info.board), bank=info.bank, relay=info.relay,
                )
                return RelayResult(True)

            return self._operate(
                info.board, "power-cycle", deadline or self.timing.power_cycle_deadline, body
            )

        return self._with_info(relay_info, "power-cycle", start)

    def set_status(
        self,
        relay_info: Union[str, RelayInfo, None],
        device_on: bool,
        deadline: Optional[float] = None,
    ) -> Deferred[RelayResult]:
        what = "on" if device_on else "off"

        def start(info: RelayInfo) -> Deferred[RelayResult]:
            log.info(
                "set_status({what}) on {board} bank {bank} relay {relay} initiated",
                what=what, board=str(info.board), bank=info.bank, relay=info.relay,
            )

            async def body(proto: ProXRProtocol) -> RelayResult:
                await self._set(proto, info, device_on=device_on)
                return RelayResult(True)

            return self._operate(
                info.board, f"set_status({what})", deadline or self.timing.set_status_deadline, body
            )

        return self._with_info(relay_info, f"set_status({what})", start)

    def power_on(
        self, relay_info: Union[str, RelayInfo, None], deadline: Optional[float] = None
    ) -> Deferred[RelayResult]:
        return self.set_status(relay_info, True, deadline)

    def power_off(
        self, relay_info: Union[str, RelayInfo, None], deadline: Optional[float] = None
    ) -> Deferred[RelayResult]:
        return self.set_status(relay_info, False, deadline)

    def get_status(
        self, relay_info: Union[str, RelayInfo, None], deadline: Optional[float] = None
    ) -> Deferred[RelayResult]:
        def start(info: RelayInfo) -> Deferred[RelayResult]:
            async def body(proto: ProXRProtocol) -> RelayResult:
                byte = await proto.command(read_frame(info.bank, info.relay))
                return RelayResult(True, status=decode_status(byte))

            return self._operate(
                info.board, "get_status", deadline or self.timing.status_deadline, body
            )

        return self._with_info(relay_info, "get_status", start)

    def test_two_way_comms(
        self, board: Union[str, BoardAddress], deadline: Optional[float] = None
    ) -> Deferred[RelayResult]:
        try:
            address = board if isinstance(board, BoardAddress) else parse_board_address(board)
        except RelayConfigError as e:
            return succeed(RelayResult(False, str(e)))

        async def body(proto: ProXRProtocol) -> RelayResult:
            byte = await proto.command(comms_test_frame())
            if byte != ACK:
                raise RelayError(f"two-way comms test on {address} got {byte}, expected {ACK}")
            return RelayResult(True)

        return self._operate(
            address, "two-way comms test", deadline or self.timing.comms_test_deadline, body
        )

    def test_controller(self, controller: str, deadline: Optional[float] = None) -> Deferred[RelayResult]:
        """The two-way test of the board ``host[:port]`` (or ``proxr://host[:port]``)."""
        if controller.lower().startswith(SCHEME + "://"):
            controller = controller[len(SCHEME) + 3:].rstrip("/")
        return self.test_two_way_comms(controller, deadline)

    def drained(self) -> Deferred[None]:
        """Fires once every operation queued so far has finished, recovery pauses included
        (for an orderly shutdown, and for tests that must leave no timer behind)."""

        def take(lock: DeferredLock) -> Deferred[None]:
            return lock.acquire().addCallback(lambda held: held.release())

        d = DeferredList([take(lock) for lock in list(self._locks.values())])
        return d.addCallback(lambda _: None)

    def busy_boards(self) -> list[str]:
        """Boards whose lock is held (in use or resting); for diagnostics and tests."""
        return [f"{h}:{p}" for (h, p), lock in self._locks.items() if lock.locked]

    # ----------------------------------------------------------------- steps

    async def _set(self, proto: ProXRProtocol, info: RelayInfo, device_on: bool) -> None:
        byte = await proto.command(set_frame(info.bank, info.relay, device_on))
        if byte != ACK:
            log.warn(
                "Command on {board} did not succeed, status: {status}",
                board=str(info.board), status=byte,
            )
            raise RelayError(f"Command on {info.board} did not succeed, status: {byte}")

    async def _verify(self, proto: ProXRProtocol, info: RelayInfo, device_on: bool) -> None:
        byte = await proto.command(read_frame(info.bank, info.relay))
        try:
            ok = decode_status(byte) == device_on
        except RelayError:
            ok = False
        if not ok:
            raise RelayError(
                f"bank {info.bank} relay {info.relay} on {info.board} did not change state"
                f" (read {byte})"
            )

    # ----------------------------------------------------------------- machinery

    def _with_info(
        self,
        relay_info: Union[str, RelayInfo, None],
        what: str,
        start: Callable[[RelayInfo], Deferred[RelayResult]],
    ) -> Deferred[RelayResult]:
        """Bad or missing ``relay_info`` fails at once, before any connection."""
        try:
            info = relay_info if isinstance(relay_info, RelayInfo) else parse_relay_info(relay_info)
        except RelayConfigError as e:
            log.warn("{what}: {reason}", what=what, reason=str(e))
            return succeed(RelayResult(False, str(e)))
        return start(info)

    def _lock(self, address: BoardAddress) -> DeferredLock:
        lock = self._locks.get(address.key)
        if lock is None:
            lock = self._locks[address.key] = DeferredLock()
        return lock

    def _operate(
        self, address: BoardAddress, what: str, deadline: float, body: Body
    ) -> Deferred[RelayResult]:
        """Run ``body`` on a fresh connection under the board lock, all within ``deadline``."""
        progress = _Progress(started=self._reactor.seconds())
        d = Deferred.fromCoroutine(self._session(address, deadline, body, progress))
        d.addTimeout(deadline, self._reactor, _timed_out)

        def failed(f: Failure) -> RelayResult:
            if f.check(CancelledError, neterror.ConnectingCancelledError) and (
                self._reactor.seconds() < progress.started + deadline
            ):
                # The caller withdrew it (LifeGuard's state moved on): expected, not a fault.
                log.info("{what} on {board} cancelled by its caller", what=what, board=str(address))
                return RelayResult(False, "cancelled")
            reason = self._reason(f, address, progress)
            if f.check(RelayError, DeferredTimeoutError, neterror.ConnectError,
                       neterror.DNSLookupError):
                log.warn("{what} on {board} failed: {reason}", what=what, board=str(address), reason=reason)
            else:
                log.failure("{what} on {board} failed unexpectedly", f, what=what, board=str(address))
            return RelayResult(False, reason)

        return d.addErrback(failed)

    async def _session(
        self, address: BoardAddress, deadline: float, body: Body, progress: _Progress
    ) -> RelayResult:
        lock = self._lock(address)
        await lock.acquire()  # cancelled at the deadline: leaves the queue, no pause
        progress.phase = "connecting"
        proto: Optional[ProXRProtocol] = None
        done = False
        try:
            remaining = progress.started + deadline - self._reactor.seconds()
            endpoint = self._endpoint_factory(self._reactor, address, max(remaining, 0.001))  # type: ignore[arg-type]
            proto = await connectProtocol(endpoint, ProXRProtocol(address))
            progress.phase = "talking"
            result = await body(proto)
            done = True
            return result
        finally:
            self._finish(lock, proto, done)

    def _finish(self, lock: DeferredLock, proto: Optional[ProXRProtocol], polite: bool) -> None:
        """Close the connection, then keep the lock for the recovery pause, in the background."""
        if proto is None:
            closed: Deferred[None] = succeed(None)
        else:
            proto.close(polite)
            closed = proto.lost
            if not closed.called:
                stuck = self._reactor.callLater(self.timing.close_grace, proto.abort)
                closed.addBoth(lambda r: stuck.cancel() if stuck.active() else None)
        closed.addBoth(
            lambda _: self._reactor.callLater(self.timing.recovery_pause, lock.release)
        )

    def _reason(self, f: Failure, address: BoardAddress, progress: _Progress) -> str:
        if f.check(DeferredTimeoutError, CancelledError, neterror.TimeoutError):
            waited = self._reactor.seconds() - progress.started
            where = {
                "queued": " (still queued behind other operations on the board)",
                "connecting": " (while connecting)",
            }.get(progress.phase, "")
            return f"timeout communicating with {address} after {waited:.1f}s{where}"
        connecting = connect_failure_reason(f, str(address), address.host)
        if connecting:
            return connecting
        if f.check(RelayError):
            return f.value.reason  # type: ignore[union-attr]
        return f"unexpected error talking to {address}: {f.getErrorMessage()}"


# --------------------------------------------------------------------------- the proxr driver


#: What the client waits past a simulated board's scaled recovery: the board, in the same
#: process, starts its recovery only once it has read the close, which a busy reactor does some
#: milliseconds late; at small time scales the scaled margin alone (a tenth) is less than that,
#: and the next operation found the board not listening yet ("connection refused").
SIMULATED_RECOVERY_SLACK = 0.02


def make_driver(context: DriverContext) -> RelayClient:
    """Simulated boards pause as real ones do, scaled like every simulated delay; real boards
    keep the hardware's pauses whatever the time scale."""
    timing = RelayTiming()
    if context.simulated:
        timing = RelayTiming(cycle_pause=context.time_scale,
                             recovery_pause=context.time_scale + SIMULATED_RECOVERY_SLACK)
    return RelayClient(context.reactor, timing)


DRIVER = PowerDriver(SCHEME, parse_relay_info, make_driver, kind="ProXR relay board")

"""Simulated ProXR relay board: a real TCP server on loopback speaking the board's bytes.

Spec: ``spec/bmm-protocols.md`` 1.8.  Used by the relay client's system tests, by the benchmark
and by ``--fakes`` mode, where a simulated device follows its relay through a listener.  Like the
real board's network module it serves one connection at a time and rests after each one; fault
modes are plain attributes so a test can switch them at any moment.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Optional

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTCP, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

log = Logger()

COMMAND_MODE = 254
CMD_TWO_WAY_TEST = 33
ACK = 85

#: Rest after a connection before listening again.  A little under the client's 1 s recovery
#: pause, so a client that keeps the spec's pause never races the re-listen.
DEFAULT_RECOVERY_PAUSE = 0.9
#: Seconds before trying again to listen on a port something else held for a moment.
RELISTEN_RETRY = 0.1

PowerListener = Callable[[int, int, bool], None]


class FakeRelayBoard:
    """One simulated board: ``banks`` x ``relays`` relay states, fault switches, counters.

    Relay state is kept as the board keeps it: 0 released (device powered), 1 energised.

    Fault switches (spec 1.8 table):

    - ``refuse()`` / ``accept()``: stop listening altogether / listen again (same port)
    - ``hang``: accept and read, never reply (and do nothing)
    - ``wrong_byte``: reply this byte instead of the right one, to the frame kinds in
      ``wrong_byte_kinds`` (``"set"``, ``"get"``, ``"test"``); the command still acts
    - ``stuck``: set of ``(bank, relay)`` that ack sets with 85 but keep their state
    - ``delay``: seconds to wait before every reply
    - ``drop_after``: close the connection once this many bytes were received on it
    - ``extra_bytes``: send every reply byte twice
    - ``accept_and_close``: accept and close at once
    - ``flaky``: the probability that an accepted connection is dropped at once, unanswered
      (drawn from ``rng`` per connection): a board that works only some of the time
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        *,
        banks: int = 4,
        relays: int = 8,
        port: int = 0,
        interface: str = "127.0.0.1",
        device_on: bool = True,
        single_connection: bool = True,
        recovery_pause: float = DEFAULT_RECOVERY_PAUSE,
        record_actions: bool = False,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._reactor = reactor
        self.banks = banks
        self.relays = relays
        self.port = port
        self.interface = interface
        self.single_connection = single_connection
        self.recovery_pause = recovery_pause
        self.state: dict[tuple[int, int], int] = {
            (b, r): 0 if device_on else 1
            for b in range(1, banks + 1)
            for r in range(1, relays + 1)
        }
        self.actions: Optional[list[tuple]] = [] if record_actions else None
        self._listeners: list[PowerListener] = []

        # faults
        self.hang = False
        self.wrong_byte: Optional[int] = None
        self.wrong_byte_kinds: frozenset[str] = frozenset({"set", "get", "test"})
        self.stuck: set[tuple[int, int]] = set()
        self.delay = 0.0
        self.drop_after: Optional[int] = None
        self.extra_bytes = False
        self.accept_and_close = False
        self.flaky = 0.0
        self.rng = rng if rng is not None else random.Random()

        # counters
        self.connections_made = 0
        self.connections_turned_away = 0
        self.open_connections = 0
        self.max_open_connections = 0

        self._listening: Optional[IListeningPort] = None
        self._closing = False
        self._listen_when_closed = False
        self._close_waiters: list[Deferred[None]] = []
        self._relisten: Optional[IDelayedCall] = None
        self._refusing = False
        self._stopped = True
        self._protocols: set[_BoardProtocol] = set()
        self._factory = Factory.forProtocol(lambda: _BoardProtocol(self))
        self._factory.noisy = False  # a board re-listens after every connection

    # ----------------------------------------------------------------- life cycle

    def start(self) -> int:
        """Listen (port 0 picks a free port) and return the bound port."""
        self._stopped = False
        self._listen(again=False)
        return self.port

    def stop(self) -> Deferred[None]:
        """Stop listening, drop every connection, cancel every timer."""
        self._stopped = True
        self._cancel_relisten()
        for proto in list(self._protocols):
            proto.shutdown()
        return self._stop_listening()

    def refuse(self) -> Deferred[None]:
        """Fault: nothing listens on the port until :meth:`accept`."""
        self._refusing = True
        self._cancel_relisten()
        return self._stop_listening()

    def accept(self) -> None:
        """Undo :meth:`refuse`."""
        self._refusing = False
        if self.open_connections == 0 or not self.single_connection:
            self._listen()

    @property
    def listening(self) -> bool:
        return self._listening is not None

    def address(self) -> str:
        """``host:port`` as the client and ``relay_info`` spell it."""
        return f"{self.interface}:{self.port}"

    def relay_info(self, bank: int, relay: int) -> str:
        return f"{self.address()}:bank{bank}:relay{relay}"

    # ----------------------------------------------------------------- state

    def device_on(self, bank: int, relay: int) -> bool:
        return self.state[(bank, relay)] == 0

    def set_device_power(self, bank: int, relay: int, on: bool) -> None:
        """Set a relay without a client (fixtures), telling listeners if it changed."""
        self._set_relay(bank, relay, 0 if on else 1)

    def add_listener(self, listener: PowerListener) -> None:
        """``listener(bank, relay, device_on)`` is called whenever a relay changes state."""
        self._listeners.append(listener)

    def remove_listener(self, listener: PowerListener) -> None:
        self._listeners.remove(listener)

    def _set_relay(self, bank: int, relay: int, value: int) -> None:
        if self.state[(bank, relay)] == value:
            return
        self.state[(bank, relay)] = value
        for listener in list(self._listeners):
            try:
                listener(bank, relay, value == 0)
            except Exception:
                log.failure("relay-board listener failed for bank {bank} relay {relay}",
                            bank=bank, relay=relay)

    # ----------------------------------------------------------------- listening

    def _listen(self, again: bool = True) -> None:
        if self._stopped or self._refusing or self._listening is not None:
            return
        if self._closing:  # the old socket is not closed yet: listen once it is
            self._listen_when_closed = True
            return
        try:
            self._listening = self._reactor.listenTCP(
                self.port, self._factory, interface=self.interface  # type: ignore[arg-type]
            )
        except CannotListenError as e:
            if not again or self.port == 0:
                raise
            # Between connections the board gives its port up, as the real one does; something
            # else (an outgoing connection's ephemeral port) may hold it for a moment.
            log.warn("board on port {port} cannot listen again ({error}); retrying", port=self.port, error=e)
            self._relisten = self._reactor.callLater(RELISTEN_RETRY, self._listen)  # type: ignore[attr-defined]
            return
        self.port = self._listening.getHost().port  # type: ignore[attr-defined]

    def _stop_listening(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._listening is not None:
            port, self._listening = self._listening, None
            self._closing = True
            maybeDeferred(port.stopListening).addBoth(self._port_closed)
        if self._closing:
            self._close_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def _port_closed(self, _: object) -> None:
        self._closing = False
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._listen_when_closed:
            self._listen_when_closed = False
            self._listen()

    def _cancel_relisten(self) -> None:
        if self._relisten is not None and self._relisten.active():
            self._relisten.cancel()
        self._relisten = None

    def _opened(self, proto: "_BoardProtocol") -> bool:
        """Count a new connection; False if a single-connection board must turn it away."""
        if self.single_connection and self.open_connections > 0:
            self.connections_turned_away += 1
            return False
        self._protocols.add(proto)
        self.connections_made += 1
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        if self.single_connection:
            self._stop_listening()
        return True

    def _closed(self, proto: "_BoardProtocol") -> None:
        self._protocols.discard(proto)
        self.open_connections -= 1
        if self.single_connection and self.open_connections == 0 and not self._stopped:
            self._cancel_relisten()
            self._relisten = self._reactor.callLater(  # type: ignore[attr-defined]
                self.recovery_pause, self._listen
            )

    # ----------------------------------------------------------------- commands

    def _execute(self, frame: bytes) -> Optional[int]:
        """Act on one frame and return the reply byte, or None to close without a reply."""
        command = frame[1]
        if command == CMD_TWO_WAY_TEST:
            return self._reply("test", ACK)
        bank = frame[2]
        if 100 <= command <= 107:
            relay = command - 99  # release
        elif 108 <= command <= 115:
            relay = command - 107  # energise
        elif 116 <= command <= 123:
            relay = command - 115  # read
        else:
            return None
        if (bank, relay) not in self.state:
            return None
        if command >= 116:
            self._record(("get", bank, relay))
            return self._reply("get", self.state[(bank, relay)])
        device_on = command <= 107
        self._record(("set", "device-on" if device_on else "device-off", bank, relay))
        if (bank, relay) not in self.stuck:
            self._set_relay(bank, relay, 0 if device_on else 1)
        return self._reply("set", ACK)

    def _reply(self, kind: str, byte: int) -> int:
        if self.wrong_byte is not None and kind in self.wrong_byte_kinds:
            return self.wrong_byte
        return byte

    def _record(self, action: tuple) -> None:
        if self.actions is not None:
            self.actions.append(action)


class _BoardProtocol(Protocol):
    """One accepted connection: split the byte stream into frames and answer in order."""

    def __init__(self, board: FakeRelayBoard) -> None:
        self.board = board
        self._buffer = b""
        self._received = 0
        self._served = False
        self._timers: list[IDelayedCall] = []

    @property
    def tcp(self) -> ITCPTransport:
        return self.transport  # type: ignore[return-value]

    def connectionMade(self) -> None:
        self._served = self.board._opened(self)
        if not self._served:
            self.tcp.abortConnection()
        elif self.board.accept_and_close or (self.board.flaky and self.board.rng.random() < self.board.flaky):
            self.tcp.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self._served or self.board.hang:
            return
        for byte in data:
            self._received += 1
            if self.board.drop_after is not None and self._received >= self.board.drop_after:
                self.tcp.loseConnection()
                self._served = False
                return
            self._buffer += bytes([byte])
            if self._buffer[0] != COMMAND_MODE:
                self._close()
                return
            length = 2 if len(self._buffer) >= 2 and self._buffer[1] == CMD_TWO_WAY_TEST else 3
            if len(self._buffer) < length:
                continue
            frame, self._buffer = self._buffer, b""
            reply = self.board._execute(frame)
            if reply is None:
                self._close()
                return
            self._send(bytes([reply, reply]) if self.board.extra_bytes else bytes([reply]))

    def _send(self, data: bytes) -> None:
        if self.board.delay > 0:
            timer = self.board._reactor.callLater(  # type: ignore[attr-defined]
                self.board.delay, self.tcp.write, data
            )
            self._timers.append(timer)
        else:
            self.tcp.write(data)

    def _close(self) -> None:
        self._served = False
        self.tcp.loseConnection()

    def shutdown(self) -> None:
        self._served = False
        self.tcp.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        if self in self.board._protocols:
            self.board._closed(self)


# --------------------------------------------------------------------------- fakes mode

RELAYS_PER_BOARD = 32


def start_boards(reactor: IReactorTCP, count: int, **options: object) -> list[FakeRelayBoard]:
    """Start ``count`` boards on free loopback ports; ``board.port`` says where each listens."""
    boards = [FakeRelayBoard(reactor, **options) for _ in range(count)]  # type: ignore[arg-type]
    for board in boards:
        board.start()
    return boards


def stop_boards(boards: Iterable[FakeRelayBoard]) -> Deferred:
    return DeferredList([b.stop() for b in boards])


def fixture_location(index: int) -> tuple[int, int, int]:
    """Device ``index`` (0-based) -> (board index, bank, relay), the generated fixture's layout."""
    within = index % RELAYS_PER_BOARD
    return index // RELAYS_PER_BOARD, within // 8 + 1, within % 8 + 1


def fixture_relay_info(index: int, boards: list[FakeRelayBoard]) -> str:
    """``relay_info`` of fixture device ``index`` on the started ``boards``."""
    board, bank, relay = fixture_location(index)
    return boards[board].relay_info(bank, relay)

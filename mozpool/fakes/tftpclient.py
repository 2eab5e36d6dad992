"""A small TFTP client: what a simulated device's boot loader needs to read its PXE config
from our own TFTP server (bmm-protocols.md 4.4, 5), so fakes mode exercises the real wire.

Read requests only, lock-step (one block in flight), octet mode, optionally ``blksize``.
Every fetch is bounded twice on the injected clock: ``retries`` consecutive silent intervals of
``timeout`` seconds, and a total ``deadline``; either way the Deferred fails with
:class:`TFTPTimeout` and the socket is closed.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import DatagramProtocol
from mozpool.logconfig import Logger

from mozpool.bmm.tftp.packets import (
    DATA,
    ERR_NOT_FOUND,
    ERR_UNKNOWN_TID,
    ERROR,
    OACK,
    MalformedPacket,
    encode_ack,
    encode_error,
    encode_request,
    opcode_of,
    parse_data,
    parse_error,
    parse_oack,
)

log = Logger()

DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRIES = 5
DEFAULT_DEADLINE = 15.0
#: A PXE config is a few hundred bytes; refusing more keeps a confused server from filling memory.
DEFAULT_MAX_SIZE = 1 << 20


class TFTPError(Exception):
    """The server answered with an ERROR packet, or broke the protocol."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"TFTP error {code}: {message}")
        self.code = code
        self.message = message


class TFTPNotFound(TFTPError):
    """ERROR 1: for a boot loader, the normal "no PXE config for me" answer."""


class TFTPTimeout(Exception):
    """The server went silent for too long, or the whole fetch passed its deadline."""


class _ReadSession(DatagramProtocol):
    """One RRQ and its lock-step transfer; the server's first answer fixes its transfer ID."""

    def __init__(
        self,
        clock: Any,
        server: tuple[str, int],
        filename: str,
        *,
        timeout: float,
        retries: int,
        deadline: float,
        blksize: Optional[int],
        max_size: int,
    ) -> None:
        self._clock = clock
        self._server = server
        self._filename = filename
        self._timeout = timeout
        self._retries = retries
        self._max_size = max_size
        self._blksize = 512
        options = {"blksize": str(blksize)} if blksize else {}
        self._last: bytes = encode_request(filename.encode("ascii"), "octet", options)
        self._peer: Optional[tuple[str, int]] = None
        self._expected = 1
        self._chunks: list[bytes] = []
        self._size = 0
        self._silent = 0
        self._port: Optional[IListeningPort] = None
        self._retry: Optional[IDelayedCall] = None
        self._deadline: Optional[IDelayedCall] = clock.callLater(deadline, self._expired)
        self.result: Deferred[bytes] = Deferred(lambda d: self._finish(None))

    def begin(self, port: IListeningPort) -> None:
        self._port = port
        self._send(self._last, self._server)

    # -- outcome

    def _finish(self, outcome: Optional[Exception | bytes]) -> None:
        """Release timers and socket exactly once; ``None`` means cancelled by the caller."""
        for timer in (self._retry, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry = self._deadline = None
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()
        if self.result.called or outcome is None:
            return
        if isinstance(outcome, Exception):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def _expired(self) -> None:
        self._deadline = None
        self._finish(TFTPTimeout(f"TFTP read of {self._filename} passed its deadline"))

    # -- sending and retransmission

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(packet, addr)
        except OSError as e:
            self._finish(TFTPError(0, f"cannot send to {addr}: {e}"))
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = self._clock.callLater(self._timeout, self._silence)

    def _silence(self) -> None:
        self._retry = None
        self._silent += 1
        if self._silent > self._retries:
            self._finish(TFTPTimeout(f"TFTP server silent for {self._retries + 1} intervals"))
            return
        self._send(self._last, self._peer or self._server)

    # -- receiving

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        if self.result.called:
            return
        opcode = opcode_of(datagram)
        if self._peer is None:
            if addr[0] != self._server[0]:
                return
            if opcode == ERROR:
                self._error(datagram)
                return
            self._peer = addr  # the transfer's own socket (RFC 1350 TIDs)
        elif addr != self._peer:
            if opcode != ERROR:
                self.transport.write(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), addr)
            return
        try:
            if opcode == DATA:
                self._data(*parse_data(datagram))
            elif opcode == OACK:
                self._oack(parse_oack(datagram))
            elif opcode == ERROR:
                self._error(datagram)
            else:
                raise MalformedPacket(f"unexpected opcode {opcode}")
        except MalformedPacket as e:
            self._send(encode_error(4, "illegal TFTP operation"), addr)
            self._finish(TFTPError(4, f"bad packet from server: {e}"))

    def _error(self, datagram: bytes) -> None:
        try:
            code, message = parse_error(datagram)
        except MalformedPacket:
            code, message = 0, "malformed ERROR packet"
        cls = TFTPNotFound if code == ERR_NOT_FOUND else TFTPError
        self._finish(cls(code, message))

    def _oack(self, options: dict[str, str]) -> None:
        if self._expected != 1 or self._chunks:
            return  # a late duplicate; the transfer has moved on
        value = options.get("blksize")
        if value is not None:
            if not value.isdigit() or not 8 <= int(value) <= 65464:
                self._send(encode_error(8, "bad blksize"), self._peer)  # type: ignore[arg-type]
                self._finish(TFTPError(8, f"server offered blksize {value!r}"))
                return
            self._blksize = int(value)
        self._silent = 0
        self._last = encode_ack(0)
        self._send(self._last, self._peer)  # type: ignore[arg-type]

    def _data(self, block: int, payload: bytes) -> None:
        if self._chunks and block == (self._expected - 1) & 0xFFFF:
            self._send(self._last, self._peer)  # type: ignore[arg-type]  # our ACK was lost
            return
        if block != self._expected & 0xFFFF:
            return
        if len(payload) > self._blksize:
            self._finish(TFTPError(4, f"block {block} larger than blksize {self._blksize}"))
            return
        self._size += len(payload)
        if self._size > self._max_size:
            self._send(encode_error(3, "file too large for this client"), self._peer)  # type: ignore[arg-type]
            self._finish(TFTPError(3, f"{self._filename} exceeds {self._max_size} bytes"))
            return
        self._chunks.append(payload)
        self._silent = 0
        self._last = encode_ack(block)
        self._expected += 1
        if len(payload) < self._blksize:
            # Final block: ACK it once; a lost final ACK only costs the server a retransmission.
            if self.transport is not None:
                self.transport.write(self._last, self._peer)
            self._finish(b"".join(self._chunks))
        else:
            self._send(self._last, self._peer)  # type: ignore[arg-type]


def fetch(
    reactor: Any,
    host: str,
    port: int,
    filename: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    deadline: float = DEFAULT_DEADLINE,
    blksize: Optional[int] = None,
    max_size: int = DEFAULT_MAX_SIZE,
    interface: Optional[str] = None,
) -> "Deferred[bytes]":
    """Read ``filename`` from the TFTP server at ``host`` (an IP address) and ``port``.

    Fails with :class:`TFTPNotFound` (ERROR 1), :class:`TFTPError` or :class:`TFTPTimeout`;
    cancelling the Deferred closes the socket at once.  ``reactor`` provides IReactorUDP and
    IReactorTime.
    """
    session = _ReadSession(
        reactor, (host, port), filename,
        timeout=timeout, retries=retries, deadline=deadline, blksize=blksize, max_size=max_size,
    )
    if interface is None:
        interface = "127.0.0.1" if host.startswith("127.") else ""
    try:
        listening = reactor.listenUDP(0, session, interface=interface)
    except Exception as e:
        session._finish(TFTPError(0, f"cannot open a UDP socket: {e}"))
        return session.result
    session.begin(listening)
    return session.result


__all__ = ["TFTPError", "TFTPNotFound", "TFTPTimeout", "fetch"]

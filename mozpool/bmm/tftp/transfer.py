"""One read transfer: its own UDP socket (the server's TID), a window of DATA blocks, retransmission.

This is the hot path of every kernel and ramdisk download. Per ACK the work is a deque pop, one file
read, one struct pack and one send per block; the retransmission timer is not reset on every ACK but
re-armed lazily from the time of the last progress when it fires. Three shortcuts around Twisted's
generic UDP port, each explained where it is taken, make the difference measured by bench/tftp.py.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from collections import deque
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from mozpool.logconfig import Logger

from .netascii import BlockSource
from .packets import ACK_PREFIX, ERR_UNDEFINED, ERR_UNKNOWN_TID, ERROR_PREFIX, encode_error

log = Logger()

_DATA = struct.Struct("!HH")
#: Bytes a file transfer reads ahead of what it sends, in one readv() into its ring of packets.
READ_AHEAD_BYTES = 32 * 1024
_DATA_OPCODE = 3

# Linux UDP generic segmentation offload: one send carries several equal-sized datagrams.
_SOL_UDP = 17  # socket.SOL_UDP (= IPPROTO_UDP) without importing the socket module here
_UDP_SEGMENT = 103
_GSO_MAX_SEGMENTS = 64  # the kernel's limit before 5.x raised it; safe everywhere
_GSO_MAX_BYTES = 65507  # largest UDP payload of one send

# Why a transfer ended; the value the transfer's `done` Deferred fires with.
COMPLETE = "complete"
TIMEOUT = "timeout"
PEER_ERROR = "peer error"
IO_ERROR = "i/o error"
ABORTED = "aborted"
DISPLACED = "displaced"


class ReadTransfer(DatagramProtocol):
    """Sends one file to one peer; fires `done` with the reason it ended, and never errbacks."""

    noisy = False  # one log line per transfer is ours; Twisted's start/stop lines would double it

    def __init__(
        self,
        *,
        clock: IReactorTime,
        peer: tuple[str, int],
        source: BlockSource,
        name: str,
        blksize: int = 512,
        windowsize: int = 1,
        oack: bytes | None = None,
        fixed_timeout: float | None = None,
        timeout: float = 1.0,
        max_timeout: float = 8.0,
        retries: int = 5,
        on_done: Callable[[ReadTransfer, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._seconds = clock.seconds
        self._peer = peer
        self._source = source
        self._read = source.read
        self.name = name
        self._blksize = blksize
        self._windowsize = windowsize
        self._oack = oack
        self._fixed = fixed_timeout
        self._base_timeout = timeout
        self._max_timeout = max_timeout
        self._interval = fixed_timeout if fixed_timeout is not None else timeout
        self._retries = retries
        self._on_done = on_done
        # Sent but unacknowledged DATA packets, oldest first: blocks _acked+1 .. _acked+len.
        self._window: deque[bytes] = deque()
        self._acked = 0  # absolute number of the highest acknowledged block
        self._next = 1  # absolute number of the next block to read
        self._eof = False  # the final (short) block has been read and sent
        # A regular file (octet mode) is read ahead into a ring of DATA packets allocated once:
        # one readv() fills the payloads of several blocks in place, headers are packed into the
        # slots, and the window holds views of them. Other sources go block by block as bytes.
        self._fileno: int | None = None
        fileno = getattr(source, "fileno", None)
        if fileno is not None:
            try:
                self._fileno = fileno()
            except (OSError, ValueError):
                self._fileno = None
        self._ahead: deque[memoryview] = deque()  # read, headed, not yet sent
        self._ring: memoryview | None = None
        self._slots: list[memoryview] = []
        self._payloads: list[memoryview] = []
        self._slot = 0  # the ring slot the next read-ahead fills first
        self._per_read = 1
        self._timer: IDelayedCall | None = None
        self._last_progress = 0.0
        self._timeouts = 0
        self._finished = False
        self._write: Callable[[bytes, Any], Any] = self._transport_write
        self._gso_batch = 0  # blocks per segmented send; 0 = one send per block
        self._gso_send: Callable[..., Any] | None = None
        self._gso_control: list[tuple[int, int, bytes]] = []
        self.retransmissions = 0
        self.done: defer.Deferred[str] = defer.Deferred()

    def _transport_write(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)

    # -- lifecycle

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        sock = getattr(transport, "socket", None)
        if sock is None:
            return  # a fake transport in tests: everything goes through write()
        # 0. The epoll reactor looks selectables up by descriptor number: a stale "writable"
        #    event of a TCP connection closed earlier in the same poll batch, whose number this
        #    new socket reused, reaches the port's doWrite, which raises (seen in a 200-request
        #    burst: the transfer died with "doWrite called on a udp.Port").  Nothing is ever
        #    queued for writing on a UDP port, so such an event is ignored.
        transport.doWrite = lambda: None
        # 1. udp.Port.write re-validates the address string (inet_pton, three times) on every
        #    datagram. The peer's address came from the kernel at the RRQ and never changes, so
        #    the transfer writes straight to the port's non-blocking socket.
        self._write = sock.sendto
        # 2. udp.Port.doRead loops until recvfrom raises EAGAIN. A transfer socket receives one ACK
        #    per window, so that second recvfrom (and its exception) is pure cost on every ACK;
        #    with a budget of one byte each readiness event reads one datagram, and the
        #    level-triggered poller comes straight back if more are queued.
        transport.maxThroughput = 1
        # 3. With a window, send consecutive full blocks in one sendmsg with UDP segmentation
        #    offload (Linux >= 4.18): the kernel cuts it into the very same datagrams. Only the
        #    final block is short, and it is always last in its batch, as GSO requires. The
        #    segment size goes with each batched send (a control message), never on the socket,
        #    so an OACK or ERROR longer than one block is never cut up.
        segment = 4 + self._blksize
        batch = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // segment)
        sendmsg = getattr(sock, "sendmsg", None)
        if self._windowsize > 1 and batch > 1 and sendmsg is not None and sys.platform.startswith("linux"):
            self._gso_batch = batch
            self._gso_send = sendmsg
            self._gso_control = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", segment))]

    def start(self) -> None:
        """Send the OACK (and wait for ACK 0) or the first window of DATA."""
        self._last_progress = self._seconds()
        if self._oack is not None:
            self._send(self._oack)
        else:
            self._fill()
        if not self._finished:
            self._timer = self._clock.callLater(self._interval, self._timed_out)

    @property
    def peer(self) -> tuple[str, int]:
        """The client's address and port, fixed at the RRQ."""
        return self._peer

    @property
    def blocks_acked(self) -> int:
        """Blocks the peer has acknowledged so far."""
        return self._acked

    @property
    def buffered_bytes(self) -> int:
        """Bytes this transfer holds: its unacknowledged window and its source's read-ahead."""
        return (sum(len(packet) for packet in self._window) + sum(len(packet) for packet in self._ahead)
                + self._source.buffered_bytes())

    def abort(self) -> None:
        """Stop without telling the peer (the server is shutting down)."""
        self._finish(ABORTED)

    def displace(self) -> None:
        """Give up this transfer's place in a full session table to another client's."""
        if not self._finished:
            self._send(encode_error(ERR_UNDEFINED, "server busy, transfer cancelled"))
        self._finish(DISPLACED)

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._window.clear()
        self._ahead.clear()
        self._slots, self._payloads, self._ring = [], [], None
        try:
            self._source.close()
        except OSError:
            log.failure("closing {name}", name=self.name)
        if self.transport is not None:
            self.transport.stopListening()
        if reason == COMPLETE:
            emit = log.info
        elif reason in (PEER_ERROR, ABORTED):
            emit = log.debug
        else:
            emit = log.warn
        emit(
            "tftp {name} to {peer}: {reason} ({blocks} blocks, {retransmissions} retransmissions)",
            name=self.name,
            peer="%s:%d" % self._peer[:2],
            reason=reason,
            blocks=self._acked,
            retransmissions=self.retransmissions,
        )
        if self._on_done is not None:
            self._on_done(self, reason)
        self.done.callback(reason)

    # -- sending

    def _send(self, packet: bytes) -> None:
        try:
            self._write(packet, self._peer)
        except OSError as e:
            # A full socket buffer is a lost packet; retransmission takes care of it.
            log.debug("tftp send to {peer} failed: {error}", peer=self._peer, error=e)

    def _send_many(self, packets: list[bytes] | deque[bytes]) -> None:
        write = self._write
        peer = self._peer
        n = self._gso_batch
        gso_send = self._gso_send
        if n and gso_send is not None and len(packets) > 1:
            if not isinstance(packets, list):
                packets = list(packets)
            for i in range(0, len(packets), n):
                chunk = packets[i : i + n]
                try:
                    if len(chunk) > 1:
                        gso_send([b"".join(chunk)], self._gso_control, 0, peer)
                    else:
                        write(chunk[0], peer)
                except OSError as e:
                    if e.errno in (errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                        # No GSO here (old kernel, or a device without checksum offload): singly.
                        self._gso_batch = 0
                        self._send_many(packets[i:])
                        return
                    # EAGAIN/ENOBUFS: lost; retransmission takes care of it.
            return
        try:
            for packet in packets:
                write(packet, peer)
        except OSError:
            pass  # lost; the window is resent at the next timeout

    def _fill(self) -> None:
        """Read and send new blocks until the window is full or the file is exhausted."""
        if self._fileno is not None:
            self._fill_from_ring()
            return
        window = self._window
        blksize = self._blksize
        read = self._read
        room = self._windowsize - len(window)
        fresh = []
        while room > 0 and not self._eof:
            try:
                payload = read(blksize)
                if len(payload) < blksize:
                    payload = self._read_rest(payload)
            except OSError as e:
                log.error("tftp read error on {name}: {error}", name=self.name, error=e)
                self._send(encode_error(ERR_UNDEFINED, "I/O error"))
                self._finish(IO_ERROR)
                return
            packet = _DATA.pack(_DATA_OPCODE, self._next & 0xFFFF) + payload
            window.append(packet)
            fresh.append(packet)
            self._next += 1
            room -= 1
            if len(payload) < blksize:
                self._eof = True
        self._send_fresh(fresh)

    def _send_fresh(self, fresh: list[bytes]) -> None:
        """Send the blocks just added to the window: one datagram, or a batch."""
        if len(fresh) == 1:
            try:
                self._write(fresh[0], self._peer)
            except OSError:
                pass  # lost; the window is resent at the next timeout
        elif fresh:
            self._send_many(fresh)

    def _make_ring(self) -> None:
        segment = 4 + self._blksize
        # At most 64 buffers per readv() (IOV_MAX is 1024; more only helps tiny blocks).
        self._per_read = max(1, min(64, READ_AHEAD_BYTES // segment))
        count = self._windowsize + self._per_read
        ring = memoryview(bytearray(count * segment))
        self._ring = ring
        self._slots = [ring[i * segment:(i + 1) * segment] for i in range(count)]
        self._payloads = [slot[4:] for slot in self._slots]

    def _read_ahead(self) -> bool:
        """Read the next blocks into free slots with one readv(); False if the transfer ended.

        The slots after the window's are free: the ring holds the window plus one read-ahead.
        A regular file reads short only at its end, so a short read is the final block.
        """
        if self._ring is None:
            self._make_ring()
        count = len(self._slots)
        blksize = self._blksize
        first = self._slot
        wanted = self._per_read
        try:
            got = os.readv(self._fileno, [self._payloads[(first + i) % count] for i in range(wanted)])  # type: ignore[arg-type]
        except OSError as e:
            log.error("tftp read error on {name}: {error}", name=self.name, error=e)
            self._send(encode_error(ERR_UNDEFINED, "I/O error"))
            self._finish(IO_ERROR)
            return False
        full, rest = divmod(got, blksize)
        blocks = full + 1 if got < wanted * blksize else full  # the short (maybe empty) final block
        number = self._next + len(self._ahead)
        pack_into = _DATA.pack_into
        for i in range(blocks):
            index = (first + i) % count
            slot = self._slots[index]
            pack_into(slot, 0, _DATA_OPCODE, (number + i) & 0xFFFF)
            self._ahead.append(slot if i < full else slot[:4 + rest])
        self._slot = (first + blocks) % count
        return True

    def _fill_from_ring(self) -> None:
        window = self._window
        ahead = self._ahead
        room = self._windowsize - len(window)
        full = 4 + self._blksize
        fresh = []
        while room > 0 and not self._eof:
            if not ahead and not self._read_ahead():
                return
            packet = ahead.popleft()
            window.append(packet)
            fresh.append(packet)
            self._next += 1
            room -= 1
            if len(packet) < full:
                self._eof = True
        self._send_fresh(fresh)

    def _read_rest(self, payload: bytes) -> bytes:
        """A short read is the end of the file only if the next read returns nothing."""
        while len(payload) < self._blksize:
            more = self._read(self._blksize - len(payload))
            if not more:
                break
            payload += more
        return payload

    # -- receiving

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if addr != self._peer:
            if not self._finished and datagram[:2] != ERROR_PREFIX:
                try:
                    self.transport.write(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), addr)
                except OSError:
                    pass
            return
        if self._finished:
            return
        if datagram[:2] == ACK_PREFIX and len(datagram) >= 4:
            block = (datagram[2] << 8) | datagram[3]
            if self._oack is not None:
                if block == 0:
                    self._oack = None
                    self._progress()
                    self._fill()
                return  # an ACK for a block other than 0 before ACK 0 is ignored
            window = self._window
            delta = (block - self._acked) & 0xFFFF
            if delta == 0 or delta > len(window):
                return  # stale or duplicate: never resend on it (Sorcerer's Apprentice)
            self._acked += delta
            if delta == 1:
                window.popleft()
            else:
                for _ in range(delta):
                    window.popleft()
            self._last_progress = self._seconds()
            if self._timeouts:
                self._progress()
            if window:
                # The peer acknowledged short of what we sent: RFC 7440 says resume at block+1.
                self.retransmissions += len(window)
                self._send_many(window)
            elif self._eof:
                self._finish(COMPLETE)
                return
            self._fill()
        elif datagram[:2] == ERROR_PREFIX:
            self._finish(PEER_ERROR)
        # Anything else from the peer is ignored.

    def _progress(self) -> None:
        self._last_progress = self._seconds()
        if self._timeouts:
            # Recovering from timeouts: the pending timer was armed for a backed-off interval, so
            # re-arm it for the base one (the lazy re-arm in _timed_out only ever extends).
            self._timeouts = 0
            self._interval = self._fixed if self._fixed is not None else self._base_timeout
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = self._clock.callLater(self._interval, self._timed_out)

    # -- retransmission

    def _timed_out(self) -> None:
        self._timer = None
        if self._finished:
            return
        now = self._seconds()
        remaining = self._last_progress + self._interval - now
        if remaining > 1e-6:
            # Progress was made since the timer was armed; wait out the rest of the interval.
            self._timer = self._clock.callLater(remaining, self._timed_out)
            return
        self._timeouts += 1
        if self._timeouts >= self._retries:
            if self._eof and self._oack is None:
                # Everything was sent; only the final ACK is missing and the peer probably has the
                # file. Close without an error.
                self._finish(TIMEOUT)
            else:
                self._send(encode_error(ERR_UNDEFINED, "timeout"))
                self._finish(TIMEOUT)
            return
        if self._fixed is None:
            self._interval = min(self._interval * 2, self._max_timeout)
        if self._oack is not None:
            self._send(self._oack)
            self.retransmissions += 1
        else:
            self.retransmissions += len(self._window)
            self._send_many(self._window)
        self._last_progress = now
        self._timer = self._clock.callLater(self._interval, self._timed_out)

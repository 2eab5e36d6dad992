"""The TFTP server's main socket: parses requests, refuses what it must, starts read transfers.

Read-only by design (spec bmm-protocols.md section 5): PXE ROMs, pxelinux and U-Boot fetch configs,
kernels and ramdisks; nothing is ever written.

Sharing the session table (spec 5.2, hardened after fuzzing). A client is a source IP address
(whatever its ports). A host that sends RRQs and never acknowledges holds each transfer for its
whole retransmission schedule (23 s by default), so without these rules it could fill the table and
lock every other device out of PXE boot. An RRQ that would start a new transfer is checked, before
any file, socket or timer is allocated for it, against:

1. **Per-client limit**: a client already holding `max_transfers_per_client` transfers (default 8;
   0 means no limit) gets ERROR 0 "too many transfers from your address". Loopback clients are
   exempt: they are this machine itself (the kernel drops a 127/8 or ::1 source arriving from
   outside), and in fakes mode every simulated device boots from 127.0.0.1.
2. **Fair share of a full table**: with `max_transfers` (N, default 128) running, a client
   C holding c transfers may displace the oldest transfer of the client M holding the most
   (among equals, the one whose oldest transfer is oldest) if M holds at least c + 2; that
   transfer's peer gets ERROR 0 "server busy, transfer cancelled" and its file, socket and
   timers are released. Otherwise C gets ERROR 0 "server busy".

   So with H clients wanting transfers, a client below its fair share of the table, N // H,
   is always served (the busiest client then holds more than N // H, and so at least c + 2);
   a client is refused only when no client holds more than one transfer beyond its own count,
   i.e. when the table is already shared as evenly as it can be. Every displacement makes the
   counts strictly more even, so two clients never take turns displacing each other. A flood
   from one address that never ACKs therefore holds at most `max_transfers_per_client`
   transfers, and even without that limit, at most what the other clients leave it.
   The victim is chosen before the file is opened but displaced only once it is: an RRQ refused
   for any other reason (missing file, access violation) displaces nothing.

Memory. A transfer holds its window of sent, unacknowledged DATA packets, at most
`max_window_bytes` (default 256 KiB; the windowsize option is answered with no more blocks than
fit, and never fewer than one), plus, in netascii mode only, a conversion carry of at most
2 x max(blksize, 8 KiB); the file is read unbuffered, block by block. So the bytes buffered across
all transfers stay below `max_transfers` times that. A transfer whose peer stops acknowledging
ends after its retransmission limit (spec 5.4), and every way a transfer ends closes its file,
socket and timer, drops its window and leaves the session table.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from typing import Any, cast

from twisted.application import internet
from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from mozpool.logconfig import Logger
from twisted.python.filepath import FilePath

from .netascii import BlockSource, NetasciiSource, OctetSource
from .packets import (
    ACK,
    DATA,
    ERR_ACCESS,
    ERR_ILLEGAL,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    ERROR,
    OACK,
    RRQ,
    WRQ,
    MalformedPacket,
    Request,
    encode_error,
    encode_oack,
    opcode_of,
    parse_request,
)
from .paths import PathRefused, resolve
from .transfer import ReadTransfer

log = Logger()

DEFAULT_PORT = 69
DEFAULT_TIMEOUT = 1.0
DEFAULT_MAX_TIMEOUT = 8.0
DEFAULT_RETRIES = 5
DEFAULT_MAX_BLKSIZE = 65464
DEFAULT_MAX_WINDOWSIZE = 64
DEFAULT_MAX_TRANSFERS = 128
DEFAULT_MAX_TRANSFERS_PER_CLIENT = 8
DEFAULT_MAX_WINDOW_BYTES = 256 * 1024

MODES = ("octet", "netascii")


def _decimal(value: str) -> int | None:
    """A plain decimal option value; anything else (signs, spaces, hex) makes the option invalid."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


def _is_loopback(host: str) -> bool:
    """Whether a client address is this machine (IPv4 127/8, ::1, or 127/8 mapped into IPv6)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def _open_regular(path: bytes) -> tuple[Any, int]:
    """Open a regular file for reading without following a last-moment symlink or blocking on a FIFO."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PathRefused(ERR_NOT_FOUND, "file not found") from None
    except OSError:
        raise PathRefused(ERR_ACCESS, "access violation") from None
    if not stat.S_ISREG(st.st_mode):
        raise PathRefused(ERR_ACCESS, "not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PathRefused(ERR_NOT_FOUND, "file not found") from None
    except OSError:
        raise PathRefused(ERR_ACCESS, "access violation") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(ERR_ACCESS, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0), st.st_size


class TFTPServer(DatagramProtocol):
    """Listen with `reactor.listenUDP(port, TFTPServer(root, reactor), interface=...)`.

    Each accepted RRQ gets its own socket from `reactor.listenUDP(0, ...)` on the same interface
    (its transfer ID); the main socket only ever answers with ERROR packets. How the session
    table is shared between clients is in the module docstring.
    """

    def __init__(
        self,
        root: FilePath[Any] | str | bytes,
        reactor: IReactorUDP,
        *,
        interface: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_timeout: float = DEFAULT_MAX_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_blksize: int = DEFAULT_MAX_BLKSIZE,
        max_windowsize: int = DEFAULT_MAX_WINDOWSIZE,
        max_transfers: int = DEFAULT_MAX_TRANSFERS,
        max_transfers_per_client: int = DEFAULT_MAX_TRANSFERS_PER_CLIENT,
        max_window_bytes: int = DEFAULT_MAX_WINDOW_BYTES,
    ) -> None:
        if max_transfers < 1:
            raise ValueError("max_transfers must be at least 1")
        if max_transfers_per_client < 0:
            raise ValueError("max_transfers_per_client must be 0 (no limit) or more")
        root_path: str | bytes = root.path if isinstance(root, FilePath) else root
        self.root: bytes = os.fsencode(root_path)
        self._reactor = reactor
        self._interface = interface
        self.timeout = timeout
        self.max_timeout = max_timeout
        self.retries = retries
        self.max_blksize = max(8, min(max_blksize, 65464))
        # Above 32768 blocks in flight, ACK numbers modulo 2^16 would become ambiguous.
        self.max_windowsize = max(1, min(max_windowsize, 32768))
        self.max_transfers = max_transfers
        self.max_transfers_per_client = max_transfers_per_client
        self.max_window_bytes = max_window_bytes
        #: every running transfer by (client host, client port, filename), oldest first
        self.sessions: dict[tuple[str, int, bytes], ReadTransfer] = {}
        #: the same transfers by client host, each client's oldest first; no empty entries
        self.by_client: dict[str, dict[tuple[str, int, bytes], ReadTransfer]] = {}

    @property
    def buffered_bytes(self) -> int:
        """Bytes the running transfers hold in their windows and conversion buffers."""
        return sum(transfer.buffered_bytes for transfer in self.sessions.values())

    # -- lifecycle

    def startProtocol(self) -> None:
        if self._interface is None:
            self._interface = self.transport.getHost().host

    def stopProtocol(self) -> None:
        for transfer in list(self.sessions.values()):
            transfer.abort()

    # -- requests

    def _error(self, code: int, message: str, addr: Any) -> None:
        try:
            self.transport.write(encode_error(code, message), addr)
        except OSError as e:
            log.debug("tftp error reply to {addr} failed: {error}", addr=addr, error=e)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        opcode = opcode_of(datagram)
        if opcode == RRQ:
            self._read_request(datagram, addr)
        elif opcode == WRQ:
            log.info("tftp refused write request from {addr}", addr=addr)
            self._error(ERR_ACCESS, "writes not permitted", addr)
        elif opcode in (DATA, ACK, OACK, ERROR):
            return  # never answer stray transfer packets, and never answer an ERROR
        else:
            self._error(ERR_ILLEGAL, "illegal TFTP operation", addr)

    def _read_request(self, datagram: bytes, addr: Any, recheck: bool = True) -> None:
        if self.transport is None:
            return  # stopped while a re-check was pending
        try:
            request = parse_request(datagram)
        except MalformedPacket as e:
            log.debug("tftp malformed request from {addr}: {why}", addr=addr, why=str(e))
            self._error(ERR_ILLEGAL, "malformed request", addr)
            return
        if request.mode not in MODES:
            self._error(ERR_ILLEGAL, "unsupported mode", addr)
            return
        key = (addr[0], addr[1], request.filename)
        if key in self.sessions:
            # A retransmitted RRQ: its transfer already answers it. But PXE ROMs abort a transfer
            # with an ERROR and repeat the RRQ at once from the same port, and the poller may hand
            # us that RRQ before the ERROR waiting on the transfer's own socket; so look again
            # after the current batch of events, when that ERROR has ended the old transfer.
            if recheck:
                cast(IReactorTime, self._reactor).callLater(0, self._read_request, datagram, addr, False)
            return
        held = len(self.by_client.get(key[0], ()))
        limit = self.max_transfers_per_client
        if limit and held >= limit and not _is_loopback(key[0]):
            log.debug("tftp refused {addr}: {held} transfers already", addr=addr, held=held)
            self._error(ERR_UNDEFINED, "too many transfers from your address", addr)
            return
        displaced = None
        if len(self.sessions) >= self.max_transfers:
            displaced = self._displaceable(held)
            if displaced is None:
                self._error(ERR_UNDEFINED, "server busy", addr)
                return
        name = request.filename.decode("ascii", "backslashreplace")
        try:
            path = resolve(self.root, request.filename)
            f, size = _open_regular(path)
        except PathRefused as e:
            # Boot loaders probe a series of names and stop at the first that exists, so a missing
            # file is routine; anything else is worth an operator's eye.
            emit = log.debug if e.code == ERR_NOT_FOUND else log.info
            emit("tftp refused {name} to {addr}: {why}", name=name, addr=addr, why=e.message)
            self._error(e.code, e.message, addr)
            return
        if displaced is not None:
            log.info("tftp table full: {addr} takes the place of {name} to {peer}",
                     addr=addr, name=displaced.name, peer=displaced.peer)
            displaced.displace()
        transfer = self._negotiate(request, f, size, addr, name)
        try:
            self._reactor.listenUDP(0, transfer, interface=self._interface or "")
        except CannotListenError as e:
            f.close()
            log.error("tftp cannot open a transfer socket: {error}", error=e)
            self._error(ERR_UNDEFINED, "no transfer socket", addr)
            return
        self.sessions[key] = transfer
        self.by_client.setdefault(key[0], {})[key] = transfer
        log.debug("tftp sending {name} to {addr}", name=name, addr=addr)
        transfer.start()

    def _displaceable(self, held: int) -> ReadTransfer | None:
        """The transfer a client holding `held` transfers may take the place of in a full table:
        the oldest of the client holding the most, if that client holds at least held + 2."""
        most = max(len(transfers) for transfers in self.by_client.values())
        if most < held + 2:
            return None
        for (host, _, _), transfer in self.sessions.items():  # oldest first
            if len(self.by_client[host]) == most:
                return transfer
        return None  # not reached: some client holds `most`

    def _forget(self, key: tuple[str, int, bytes], transfer: ReadTransfer) -> None:
        """A transfer ended: it leaves both tables."""
        if self.sessions.get(key) is not transfer:
            return
        del self.sessions[key]
        mine = self.by_client[key[0]]
        del mine[key]
        if not mine:
            del self.by_client[key[0]]

    def _negotiate(self, request: Request, f: Any, size: int, addr: Any, name: str) -> ReadTransfer:
        """Accept the valid options we know (RFC 2347/2348/2349/7440) and build the transfer."""
        accepted: dict[str, str] = {}
        blksize, windowsize, fixed = 512, 1, None
        for option, raw in request.options.items():
            if option == "tsize":
                # In an RRQ the value carries nothing (RFC 2349 says 0); atftp sends "enable" and
                # tftpd-hpa answers it, so any value is accepted.
                if request.mode == "octet":
                    accepted[option] = str(size)
                continue
            value = _decimal(raw)
            if value is None:
                continue
            if option == "blksize" and value >= 8:
                blksize = min(value, self.max_blksize)
                accepted[option] = str(blksize)
            elif option == "timeout" and 1 <= value <= 255:
                fixed = float(value)
                accepted[option] = str(value)
            elif option == "windowsize" and 1 <= value <= 65535:
                windowsize = min(value, self.max_windowsize)
                accepted[option] = ""  # its value once blksize is known, whatever the order
        if "windowsize" in accepted:
            # The window is what a transfer buffers: no more blocks than fit in max_window_bytes.
            windowsize = max(1, min(windowsize, self.max_window_bytes // (4 + blksize)))
            accepted["windowsize"] = str(windowsize)
        source: BlockSource = OctetSource(f) if request.mode == "octet" else NetasciiSource(f)
        key = (addr[0], addr[1], request.filename)

        def on_done(transfer: ReadTransfer, reason: str) -> None:
            self._forget(key, transfer)

        return ReadTransfer(
            clock=self._reactor,
            peer=(addr[0], addr[1]),
            source=source,
            name=name,
            blksize=blksize,
            windowsize=windowsize,
            oack=encode_oack(accepted) if accepted else None,
            fixed_timeout=fixed,
            timeout=self.timeout,
            max_timeout=self.max_timeout,
            retries=self.retries,
            on_done=on_done,
        )


def make_tftp_service(
    root: FilePath[Any] | str | bytes,
    port: int,
    interface: str,
    reactor: Any,
    **options: Any,
) -> IService:
    """The service the tap adds for `--tftp-port`/`--tftp-root`; options are TFTPServer's keywords."""
    server = TFTPServer(root, reactor, interface=interface or None, **options)
    service = internet.UDPServer(port, server, interface=interface, reactor=reactor)
    service.tftp_server = server  # type: ignore[attr-defined]
    return cast(IService, service)



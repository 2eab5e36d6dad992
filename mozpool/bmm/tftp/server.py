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

Backends and workers. Names become readers through an :class:`~.backend.IBackend` (the files
under the root by default; in the daemon, the devices' PXE configs in memory first). With a
``handover`` (:class:`~.workers.WorkerPool`), a file of at least ``handover_min_bytes`` is sent by
a worker process: this process still decides everything (confinement, options, the session
table above, which therefore stays exact across workers) and opens the file; the worker gets the
open descriptor and the negotiated options, opens the transfer's socket and runs it, and reports
its end. Small files (PXE configs, boot loaders) are served here, where the RRQ arrived.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Protocol, cast

from twisted.application import internet
from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mozpool.logconfig import Logger

from .backend import FilesystemBackend, IBackend, IFileReader, IReader
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
from .paths import PathRefused
from .transfer import COMPLETE, PEER_ERROR, ReadTransfer

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
#: Files smaller than this are sent by the main process even when there are workers: a PXE config
#: or a boot loader is over before a handover would have paid for itself.
DEFAULT_HANDOVER_MIN_BYTES = 256 * 1024
#: How long a repeated RRQ waits for its running transfer to be aborted by the client (PXE ROMs
#: abort after the OACK and ask again at once) before it is taken for a plain retransmission.
REPEAT_WAIT = 0.5

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


@dataclass(frozen=True)
class TransferSpec:
    """Everything a transfer needs besides its reader: negotiated here, run here or in a worker."""

    peer: tuple[str, int]
    name: str
    mode: str
    blksize: int
    windowsize: int
    oack: bytes | None
    fixed_timeout: float | None
    timeout: float
    max_timeout: float
    retries: int


class Transfer(Protocol):
    """What the session table needs of a running transfer, local or in a worker."""

    name: str
    done: defer.Deferred[str]

    @property
    def peer(self) -> tuple[str, int]: ...

    @property
    def buffered_bytes(self) -> int: ...

    def abort(self) -> None: ...

    def displace(self) -> None: ...


#: called once when a transfer ends, with the transfer and why
OnDone = Callable[[Transfer, str], None]


class IHandover(Protocol):
    """Where large transfers go: :class:`mozpool.bmm.tftp.workers.WorkerPool`."""

    def available(self) -> bool:
        """Whether a worker can take a transfer now."""

    def hand_over(self, spec: TransferSpec, reader: IFileReader, on_done: OnDone) -> Transfer:
        """Give the transfer to a worker; the reader is the handover's from now on."""


def local_transfer(clock: IReactorTime, spec: TransferSpec, reader: IReader,
                   on_done: Callable[[ReadTransfer, str], None] | None) -> ReadTransfer:
    """The transfer of ``spec`` run by this process's reactor (also what a worker runs)."""
    source: BlockSource = OctetSource(reader) if spec.mode == "octet" else NetasciiSource(reader)
    return ReadTransfer(
        clock=clock,
        peer=spec.peer,
        source=source,
        name=spec.name,
        blksize=spec.blksize,
        windowsize=spec.windowsize,
        oack=spec.oack,
        fixed_timeout=spec.fixed_timeout,
        timeout=spec.timeout,
        max_timeout=spec.max_timeout,
        retries=spec.retries,
        on_done=on_done,
    )


class TFTPServer(DatagramProtocol):
    """Listen with `reactor.listenUDP(port, TFTPServer(root, reactor), interface=...)`.

    Each accepted RRQ gets its own socket from `reactor.listenUDP(0, ...)` on the same interface
    (its transfer ID), here or in a worker; the main socket only ever answers with ERROR packets.
    How the session table is shared between clients is in the module docstring.
    """

    def __init__(
        self,
        root: FilePath[Any] | str | bytes | None,
        reactor: IReactorUDP,
        *,
        backend: IBackend | None = None,
        handover: IHandover | None = None,
        handover_min_bytes: int = DEFAULT_HANDOVER_MIN_BYTES,
        interface: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_timeout: float = DEFAULT_MAX_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_blksize: int = DEFAULT_MAX_BLKSIZE,
        max_windowsize: int = DEFAULT_MAX_WINDOWSIZE,
        max_transfers: int = DEFAULT_MAX_TRANSFERS,
        max_transfers_per_client: int = DEFAULT_MAX_TRANSFERS_PER_CLIENT,
        max_window_bytes: int = DEFAULT_MAX_WINDOW_BYTES,
        on_read: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_transfers < 1:
            raise ValueError("max_transfers must be at least 1")
        if max_transfers_per_client < 0:
            raise ValueError("max_transfers_per_client must be 0 (no limit) or more")
        if backend is None:
            if root is None:
                raise ValueError("a root or a backend is needed")
            backend = FilesystemBackend(root)
        self.backend: IBackend = backend
        self.handover = handover
        self.handover_min_bytes = handover_min_bytes
        self._reactor = reactor
        self._clock = cast(IReactorTime, reactor)
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
        #: told (filename, client host) of every file sent whole: boot telemetry (issue 15)
        self.on_read = on_read
        #: every running transfer by (client host, client port, filename), oldest first
        self.sessions: dict[tuple[str, int, bytes], Transfer] = {}
        #: the same transfers by client host, each client's oldest first; no empty entries
        self.by_client: dict[str, dict[tuple[str, int, bytes], Transfer]] = {}
        #: RRQs whose reader a backend is still producing (a Deferred)
        self._opening: set[tuple[str, int, bytes]] = set()
        #: a repeated RRQ waiting to see whether its transfer is being aborted by the client
        self._repeats: dict[tuple[str, int, bytes], IDelayedCall] = {}

    @property
    def buffered_bytes(self) -> int:
        """Bytes the running transfers of this process hold in their windows and conversion buffers."""
        return sum(transfer.buffered_bytes for transfer in self.sessions.values())

    # -- lifecycle

    def startProtocol(self) -> None:
        if self._interface is None:
            self._interface = self.transport.getHost().host

    def stopProtocol(self) -> None:
        for call in self._repeats.values():
            if call.active():
                call.cancel()
        self._repeats.clear()
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

    def _read_request(self, datagram: bytes, addr: Any) -> None:
        if self.transport is None:
            return  # stopped while a repeated RRQ was waiting
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
        running = self.sessions.get(key)
        if running is not None:
            self._repeated(key, running, datagram, addr)
            return
        if key in self._opening:
            return  # a retransmitted RRQ while its reader is being produced
        refusal, displaced = self._admit(key[0])
        if refusal:
            self._error(ERR_UNDEFINED, refusal, addr)
            return
        name = request.filename.decode("ascii", "backslashreplace")
        try:
            reader = self.backend.get_reader(request.filename)
        except PathRefused as e:
            self._refused(e, name, addr)
            return
        except Exception:
            log.failure("tftp backend failed on {name}", name=name)
            self._error(ERR_UNDEFINED, "I/O error", addr)
            return
        if isinstance(reader, defer.Deferred):
            self._opening.add(key)
            reader.addCallbacks(
                self._reader_later, self._reader_failed,
                callbackArgs=(request, key, addr, name), errbackArgs=(key, addr, name),
            )
            return
        self._start(request, key, addr, name, reader, displaced)

    def _refused(self, e: PathRefused, name: str, addr: Any) -> None:
        # Boot loaders probe a series of names and stop at the first that exists, so a missing
        # file is routine; anything else is worth an operator's eye.
        emit = log.debug if e.code == ERR_NOT_FOUND else log.info
        emit("tftp refused {name} to {addr}: {why}", name=name, addr=addr, why=e.message)
        self._error(e.code, e.message, addr)

    def _reader_later(self, reader: IReader, request: Request, key: tuple[str, int, bytes], addr: Any,
                      name: str) -> None:
        """A backend's Deferred reader arrived: the table may have changed meanwhile, so ask again."""
        self._opening.discard(key)
        refusal, displaced = self._admit(key[0]) if self.transport is not None else ("stopped", None)
        if refusal or key in self.sessions:
            reader.finish()
            if refusal and self.transport is not None:
                self._error(ERR_UNDEFINED, refusal, addr)
            return
        self._start(request, key, addr, name, reader, displaced)

    def _reader_failed(self, failure: Failure, key: tuple[str, int, bytes], addr: Any, name: str) -> None:
        self._opening.discard(key)
        if self.transport is None:
            return
        if failure.check(PathRefused):
            self._refused(cast(PathRefused, failure.value), name, addr)
        else:
            log.failure("tftp backend failed on {name}", failure, name=name)
            self._error(ERR_UNDEFINED, "I/O error", addr)

    def _repeated(self, key: tuple[str, int, bytes], running: Transfer, datagram: bytes, addr: Any) -> None:
        """A retransmitted RRQ: its transfer already answers it. But PXE ROMs abort a transfer with
        an ERROR and repeat the RRQ at once from the same port, and we may read that RRQ before
        the ERROR has ended the old transfer (on its own socket, maybe in a worker); so if the
        transfer ends by the client's ERROR soon, serve the RRQ then."""
        if key in self._repeats:
            return

        def ended(reason: str) -> str:
            call = self._repeats.pop(key, None)
            if call is not None and call.active():
                call.cancel()
                if reason == PEER_ERROR:
                    self._clock.callLater(0, self._read_request, datagram, addr)
            return reason

        self._repeats[key] = self._clock.callLater(REPEAT_WAIT, self._repeats.pop, key, None)
        running.done.addCallback(ended)

    def _admit(self, host: str) -> tuple[str, Transfer | None]:
        """Why a new transfer for ``host`` must be refused ("" if not), and whom it displaces."""
        held = len(self.by_client.get(host, ()))
        limit = self.max_transfers_per_client
        if limit and held >= limit and not _is_loopback(host):
            log.debug("tftp refused {host}: {held} transfers already", host=host, held=held)
            return "too many transfers from your address", None
        if len(self.sessions) >= self.max_transfers:
            displaced = self._displaceable(held)
            if displaced is None:
                return "server busy", None
            return "", displaced
        return "", None

    def _start(self, request: Request, key: tuple[str, int, bytes], addr: Any, name: str, reader: IReader,
               displaced: Transfer | None) -> None:
        if displaced is not None:
            log.info("tftp table full: {addr} takes the place of {name} to {peer}",
                     addr=addr, name=displaced.name, peer=displaced.peer)
            displaced.displace()
        spec = self._negotiate(request, reader.size, addr, name)

        def on_done(transfer: Transfer, reason: str) -> None:
            self._forget(key, transfer)
            if reason == COMPLETE and self.on_read is not None:
                try:
                    self.on_read(name, key[0])
                except Exception:
                    log.failure("tftp on_read hook failed for {name}", name=name)

        size = reader.size or 0
        handover = self.handover
        transfer: Transfer
        local: ReadTransfer | None = None
        if (handover is not None and size >= self.handover_min_bytes and IFileReader.providedBy(reader)
                and handover.available()):
            transfer = handover.hand_over(spec, cast(IFileReader, reader), on_done)
        else:
            local = local_transfer(self._clock, spec, reader, on_done)
            try:
                self._reactor.listenUDP(0, local, interface=self._interface or "")
            except CannotListenError as e:
                reader.finish()
                log.error("tftp cannot open a transfer socket: {error}", error=e)
                self._error(ERR_UNDEFINED, "no transfer socket", addr)
                return
            transfer = local
        self.sessions[key] = transfer
        self.by_client.setdefault(key[0], {})[key] = transfer
        log.debug("tftp sending {name} to {addr}", name=name, addr=addr)
        if local is not None:
            local.start()

    def _displaceable(self, held: int) -> Transfer | None:
        """The transfer a client holding `held` transfers may take the place of in a full table:
        the oldest of the client holding the most, if that client holds at least held + 2."""
        most = max(len(transfers) for transfers in self.by_client.values())
        if most < held + 2:
            return None
        for (host, _, _), transfer in self.sessions.items():  # oldest first
            if len(self.by_client[host]) == most:
                return transfer
        return None  # not reached: some client holds `most`

    def _forget(self, key: tuple[str, int, bytes], transfer: Transfer) -> None:
        """A transfer ended: it leaves both tables."""
        if self.sessions.get(key) is not transfer:
            return
        del self.sessions[key]
        mine = self.by_client[key[0]]
        del mine[key]
        if not mine:
            del self.by_client[key[0]]

    def _negotiate(self, request: Request, size: int | None, addr: Any, name: str) -> TransferSpec:
        """Accept the valid options we know (RFC 2347/2348/2349/7440)."""
        accepted: dict[str, str] = {}
        blksize, windowsize, fixed = 512, 1, None
        for option, raw in request.options.items():
            if option == "tsize":
                # In an RRQ the value carries nothing (RFC 2349 says 0); atftp sends "enable" and
                # tftpd-hpa answers it, so any value is accepted.
                if request.mode == "octet" and size is not None:
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
        return TransferSpec(
            peer=(addr[0], addr[1]),
            name=name,
            mode=request.mode,
            blksize=blksize,
            windowsize=windowsize,
            oack=encode_oack(accepted) if accepted else None,
            fixed_timeout=fixed,
            timeout=self.timeout,
            max_timeout=self.max_timeout,
            retries=self.retries,
        )


def make_tftp_service(
    root: FilePath[Any] | str | bytes,
    port: int,
    interface: str,
    reactor: Any,
    *,
    workers: int = 0,
    busy_poll: float | None = None,
    **options: Any,
) -> IService:
    """The service the tap adds for `--tftp-port`/`--tftp-root`; options are TFTPServer's keywords.

    With ``workers`` > 0 it is a MultiService of the main socket and a
    :class:`~mozpool.bmm.tftp.workers.WorkerPool` the server hands its large transfers to; either
    way ``tftp_server`` is the server (and ``workers`` the pool, or None). ``busy_poll`` is the
    workers' (:class:`~mozpool.bmm.tftp.worker.BusyPoll`; None: their default).
    """
    pool = None
    if workers > 0:
        from .workers import WorkerPool

        pool = WorkerPool(reactor, workers, interface=interface, busy_poll=busy_poll)
        options.setdefault("handover", pool)
    server = TFTPServer(root, reactor, interface=interface or None, **options)
    udp = internet.UDPServer(port, server, interface=interface, reactor=reactor)
    service: Any = udp
    if pool is not None:
        # Started first and stopped last: the main socket's transfers end before the workers do.
        service = MultiService()
        pool.setServiceParent(service)
        udp.setServiceParent(service)
    service.tftp_server = server
    service.workers = pool
    return cast(IService, service)

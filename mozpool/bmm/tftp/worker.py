"""A TFTP worker process: sends the transfers the daemon hands it (see workers.py for how).

Run by :class:`mozpool.bmm.tftp.workers.WorkerPool` as ``python -m mozpool.bmm.tftp.worker --fd 3``,
never by hand: fd 3 is its AMP channel to the daemon. It has its own reactor and no state of its
own beyond the transfers it runs; it exits when the channel closes (the daemon stopped, or died),
and ignores SIGINT so that a Ctrl-C to ``twistd -n`` stops it through the daemon, in order.
Only warnings and errors are logged, to stderr, which the daemon copies into its own log.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.python.failure import Failure

from .backend import FileReader
from .server import local_transfer
from .transfer import ReadTransfer
from .workers import NoSocket, QuietAMP, Ready, StartTransfer, StopTransfer, TransferEnded, spec_from_arguments


def adopt_file(fd: int) -> Any:
    """The file object over a descriptor received from the daemon (tests record these)."""
    return os.fdopen(fd, "rb", buffering=0)


class WorkerSide(QuietAMP):
    """The worker's end of its channel: runs StartTransfer, StopTransfer; reports TransferEnded."""

    def __init__(self, reactor: Any, interface: str = "", on_lost: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self._udp: IReactorUDP = reactor
        self._clock: IReactorTime = reactor
        self.interface = interface
        self.on_lost = on_lost
        self.transfers: dict[int, ReadTransfer] = {}

    @StartTransfer.responder
    def start_transfer(self, id: int, fd: int, size: int, **arguments: Any) -> dict[str, Any]:
        reader = FileReader(adopt_file(fd), size)
        spec = spec_from_arguments(arguments)
        transfer = local_transfer(self._clock, spec, reader, lambda t, reason: self._ended(id, t, reason))
        try:
            self._udp.listenUDP(0, transfer, interface=self.interface)
        except CannotListenError:
            reader.finish()
            raise NoSocket() from None
        self.transfers[id] = transfer
        transfer.start()
        return {}

    @StopTransfer.responder
    def stop_transfer(self, id: int, displace: bool) -> dict[str, Any]:
        transfer = self.transfers.get(id)
        if transfer is not None:
            if displace:
                transfer.displace()
            else:
                transfer.abort()
        return {}

    def _ended(self, transfer_id: int, transfer: ReadTransfer, reason: str) -> None:
        self.transfers.pop(transfer_id, None)
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            self.callRemote(TransferEnded, id=transfer_id, reason=reason, blocks=transfer.blocks_acked,
                            retransmissions=transfer.retransmissions)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        for transfer in list(self.transfers.values()):
            transfer.abort()
        if self.on_lost is not None:
            self.on_lost()


#: How long a worker polls for the next datagram before it sleeps, by default (see BusyPoll).
DEFAULT_BUSY_POLL = 200e-6


class BusyPoll:
    """``epoll_wait`` that first polls, for at most ``spin`` seconds, while datagrams come fast.

    Where a client answers within microseconds (lock-step on a LAN or loopback) most of a block's
    round trip is the worker falling asleep in ``epoll_wait`` and being woken again: on the 2-core
    bench machine a 64 MiB lock-step download took 3.4 s sleeping between ACKs and 1.3 s polling.
    So while the last sleep ended within ``spin`` ("hot"), the next wait polls without sleeping
    for up to ``spin`` before it sleeps; a client slower than that (a WAN, a loaded machine) cools
    it, and an idle worker sleeps after one spin at most. It never waits past the reactor's timeout.
    """

    def __init__(self, poll: Callable[[float, int], list[tuple[int, int]]], spin: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._poll = poll
        self.spin = spin
        self._clock = clock
        self.hot = False

    def __call__(self, timeout: float | None, most: int) -> list[tuple[int, int]]:
        poll, spin, clock = self._poll, self.spin, self._clock
        if spin and self.hot and timeout != 0:
            started = clock()
            bound = spin if timeout is None else min(spin, timeout)
            while True:
                events = poll(0, most)
                if events:
                    return events
                waited = clock() - started
                if waited >= bound:
                    break
            if timeout is not None:
                timeout = max(0.0, timeout - waited)
        started = clock()
        events = poll(-1 if timeout is None else timeout, most)
        self.hot = bool(events) and clock() - started < spin
        return events


def worker_reactor(busy_poll: float = DEFAULT_BUSY_POLL) -> Any:
    """An epoll reactor for a worker: it busy-polls (:class:`BusyPoll`) and hands a readable UDP
    port its datagrams directly.

    The stock reactor wraps every readiness event in a logging context (``callWithLogger``): in
    a worker that is one context switch per ACK, about a tenth of the CPU a lock-step transfer
    costs (measured with cProfile on bench/tftp.py). Plain readability of a UDP port (the only
    kind of event a transfer socket gets) goes straight to ``doRead``, with the same error
    handling; every other event takes the stock path.
    """
    from twisted.internet import udp
    from twisted.internet.epollreactor import EPollReactor
    from twisted.python import log as legacy_log

    class WorkerReactor(EPollReactor):
        def __init__(self) -> None:
            super().__init__()
            self._wait = BusyPoll(self._poller.poll, busy_poll)

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._wait(timeout, len(self._selectables))
            except InterruptedError:
                return
            selectables = self._selectables
            plain_in = self._POLL_IN
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                if event == plain_in and type(selectable) is udp.Port:
                    try:
                        selectable.doRead()
                    except BaseException as why:
                        legacy_log.err(None, "reading a transfer socket")
                        self._disconnectSelectable(selectable, why, True)
                else:
                    legacy_log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)

        doIteration = doPoll

    return WorkerReactor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mozpool TFTP worker (started by the daemon)")
    parser.add_argument("--fd", type=int, default=3, help="the AMP channel to the daemon")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--interface", default="")
    parser.add_argument("--busy-poll-us", type=int, default=round(DEFAULT_BUSY_POLL * 1e6),
                        help="poll this many microseconds for the next datagram before sleeping (0: never)")
    parser.add_argument("--profile", default=os.environ.get("MOZPOOL_TFTP_WORKER_PROFILE", ""),
                        help="write a cProfile of this worker to this file plus the slot number")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from twisted.internet.main import installReactor

    installReactor(worker_reactor(args.busy_poll_us / 1e6))
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False,
    )
    r: Any = reactor
    protocol = WorkerSide(reactor, args.interface, on_lost=lambda: r.callLater(0, r.stop) if r.running else None)
    r.adoptStreamConnection(args.fd, socket.AF_UNIX, Factory.forProtocol(lambda: protocol))
    os.close(args.fd)
    r.callWhenRunning(lambda: protocol.callRemote(Ready, pid=os.getpid()))
    if args.profile:
        import cProfile

        cProfile.runctx("r.run(installSignalHandlers=False)", globals(), {"r": r},
                        f"{args.profile}.{args.slot}")
    else:
        r.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

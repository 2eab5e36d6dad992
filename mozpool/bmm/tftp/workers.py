"""TFTP on every core: worker processes that send the large files, supervised by the daemon.

One Python reactor sends a few hundred MB/s at most, and a boot storm (a lab's power coming back)
asks for more: so ``[tftp] workers`` processes (default: one per CPU), each with its own reactor,
send the kernels and ramdisks, while the daemon's main socket keeps every decision. How a
transfer is handed over:

1. The RRQ arrives at the main socket, in the daemon. The server checks it (confinement, the
   session table's per-client limit and fair share, options) and the backend opens the file, as
   without workers. A small file (under ``handover_min_bytes``: PXE configs, which are in memory
   anyway, and boot loaders) is sent right there.
2. Otherwise :meth:`WorkerPool.hand_over` sends the least busy ready worker a ``StartTransfer``
   over an AMP connection on a UNIX socketpair, with the open file descriptor itself
   (SCM_RIGHTS) and the negotiated options. The worker opens the transfer's own socket (its
   TID), sends the OACK or DATA 1, runs the transfer with the same :class:`ReadTransfer`, and
   reports ``TransferEnded``. The daemon's session table holds a :class:`RemoteTransfer` for it,
   so displacing it (fair share) or stopping tells the worker.

Supervision: workers are ``reactor.spawnProcess`` children (``python -m mozpool.bmm.tftp.worker``,
the socketpair as their fd 3). One that dies is replaced (at once, then with a growing pause if
it keeps dying); its transfers leave the table at once, and their clients, no longer answered,
retry or time out within their own bounds. While no worker is ready, everything is sent by the
daemon itself. A worker exits when its connection to the daemon closes, so even a daemon killed
with SIGKILL leaves none behind; :meth:`WorkerPool.stopService` closes the connections, waits
for every worker to exit (SIGKILL after ``stop_timeout``) and only then fires -- or, if a killed
worker still has not exited ``KILL_GRACE`` later (stuck in the kernel, say on a hung NFS root), fires
anyway and says so: a daemon's stop must not hang on it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorSocket, IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure

from mozpool.logconfig import Logger

from .backend import IFileReader
from .server import OnDone, TransferSpec
from .transfer import ABORTED, COMPLETE, DISPLACED, PEER_ERROR

log = Logger()

#: A worker that lived this long before dying is replaced at once; sooner, after a pause that
#: doubles each time up to RESPAWN_MAX_DELAY (a worker that cannot start must not spin the CPU).
RESPAWN_STABLE_AFTER = 10.0
RESPAWN_FIRST_DELAY = 0.5
RESPAWN_MAX_DELAY = 30.0
#: How long a worker whose channel closed may take to exit before it is killed.
CHANNEL_GRACE = 2.0
#: How long stop waits for a worker it killed before it gives up on it (and logs so).
KILL_GRACE = 2.0
#: Why a handed-over transfer ended when its worker went away.
WORKER_LOST = "worker lost"


class NoSocket(Exception):
    """The worker could not open a transfer socket."""


class StartTransfer(amp.Command):
    """Daemon -> worker: send the open file ``fd`` to ``host``:``port`` as negotiated."""

    arguments = [
        (b"id", amp.Integer()),
        (b"fd", amp.Descriptor()),
        (b"size", amp.Integer()),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
        (b"name", amp.Unicode()),
        (b"mode", amp.Unicode()),
        (b"blksize", amp.Integer()),
        (b"windowsize", amp.Integer()),
        (b"oack", amp.String(optional=True)),
        (b"fixed_timeout", amp.Float(optional=True)),
        (b"timeout", amp.Float()),
        (b"max_timeout", amp.Float()),
        (b"retries", amp.Integer()),
    ]
    response: list[tuple[bytes, amp.Argument]] = []
    errors = {NoSocket: b"NO_SOCKET"}


class StopTransfer(amp.Command):
    """Daemon -> worker: end a transfer, telling the peer "server busy" when it is displaced."""

    arguments = [(b"id", amp.Integer()), (b"displace", amp.Boolean())]
    requiresAnswer = False


class TransferEnded(amp.Command):
    """Worker -> daemon: a transfer ended, why, and how it went."""

    arguments = [
        (b"id", amp.Integer()),
        (b"reason", amp.Unicode()),
        (b"blocks", amp.Integer()),
        (b"retransmissions", amp.Integer()),
    ]
    requiresAnswer = False


class Ready(amp.Command):
    """Worker -> daemon: its reactor runs; it takes transfers from now on."""

    arguments = [(b"pid", amp.Integer())]
    requiresAnswer = False


def spec_arguments(spec: TransferSpec) -> dict[str, Any]:
    """A TransferSpec as StartTransfer's arguments."""
    return {
        "host": spec.peer[0], "port": spec.peer[1], "name": spec.name, "mode": spec.mode,
        "blksize": spec.blksize, "windowsize": spec.windowsize, "oack": spec.oack,
        "fixed_timeout": spec.fixed_timeout, "timeout": spec.timeout, "max_timeout": spec.max_timeout,
        "retries": spec.retries,
    }


def spec_from_arguments(a: dict[str, Any]) -> TransferSpec:
    """The TransferSpec StartTransfer's arguments describe."""
    return TransferSpec(
        peer=(a["host"], a["port"]), name=a["name"], mode=a["mode"], blksize=a["blksize"],
        windowsize=a["windowsize"], oack=a.get("oack"), fixed_timeout=a.get("fixed_timeout"),
        timeout=a["timeout"], max_timeout=a["max_timeout"], retries=a["retries"],
    )


class QuietAMP(amp.AMP):
    """AMP without its info lines on every connect and disconnect (a worker restart says enough)."""

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class RemoteTransfer:
    """A transfer a worker runs, as the daemon's session table sees it."""

    buffered_bytes = 0  # held in the worker, bounded there by the same window rules

    def __init__(self, worker: WorkerConnection, transfer_id: int, spec: TransferSpec, on_done: OnDone) -> None:
        self.worker = worker
        self.id = transfer_id
        self.name = spec.name
        self._peer = spec.peer
        self._on_done = on_done
        self.ended = False
        self.done: defer.Deferred[str] = defer.Deferred()

    @property
    def peer(self) -> tuple[str, int]:
        return self._peer

    def abort(self) -> None:
        """End it without telling the peer (the server stops)."""
        self.worker.stop_transfer(self.id, displace=False)
        self.end(ABORTED)

    def displace(self) -> None:
        """Give up its place in a full table: the worker tells the peer."""
        self.worker.stop_transfer(self.id, displace=True)
        self.end(DISPLACED)

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.worker.transfers.pop(self.id, None)
        self._on_done(self, reason)
        self.done.callback(reason)


class WorkerConnection(QuietAMP):
    """The daemon's end of one worker's channel."""

    def __init__(self, pool: WorkerPool, slot: Slot) -> None:
        super().__init__()
        self.pool = pool
        self.slot = slot
        self.ready = False
        self.closed = False
        self.pid: int | None = None
        self.transfers: dict[int, RemoteTransfer] = {}

    @Ready.responder
    def worker_ready(self, pid: int) -> dict[str, Any]:
        self.ready = not self.closed
        self.pid = pid
        log.debug("tftp worker {slot} ready (pid {pid})", slot=self.slot.number, pid=pid)
        return {}

    @TransferEnded.responder
    def transfer_ended(self, id: int, reason: str, blocks: int, retransmissions: int) -> dict[str, Any]:
        transfer = self.transfers.get(id)
        if transfer is not None:
            if reason == COMPLETE:
                emit = log.info
            elif reason in (PEER_ERROR, ABORTED):
                emit = log.debug
            else:
                emit = log.warn
            emit("tftp {name} to {peer}: {reason} ({blocks} blocks, {retransmissions} retransmissions, worker {slot})",
                 name=transfer.name, peer="%s:%d" % transfer.peer[:2], reason=reason, blocks=blocks,
                 retransmissions=retransmissions, slot=self.slot.number)
            transfer.end(reason)
        return {}

    def start_transfer(self, transfer_id: int, spec: TransferSpec, reader: IFileReader, on_done: OnDone) -> RemoteTransfer:
        transfer = RemoteTransfer(self, transfer_id, spec, on_done)
        self.transfers[transfer_id] = transfer

        def failed(f: Failure) -> None:
            if f.check(NoSocket):
                log.error("tftp worker {slot} cannot open a transfer socket for {name}", slot=self.slot.number,
                          name=spec.name)
            elif not f.check(error.ConnectionDone, error.ConnectionLost, amp.ProtocolSwitched):
                log.failure("tftp handover of {name} failed", f, name=spec.name)
            transfer.end(WORKER_LOST)

        # The descriptor is queued with the command and sent with it; the daemon's copy is
        # closed once the worker has answered (it has its own by then) or is gone.
        d = self.callRemote(StartTransfer, id=transfer_id, fd=reader.fileno(), size=reader.size or 0,
                            **spec_arguments(spec))
        d.addErrback(failed)
        d.addBoth(lambda _: reader.finish())
        return transfer

    def stop_transfer(self, transfer_id: int, displace: bool) -> None:
        if not self.closed:
            self.callRemote(StopTransfer, id=transfer_id, displace=displace)

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.closed = True
        self.ready = False
        super().connectionLost(reason)
        for transfer in list(self.transfers.values()):
            transfer.end(WORKER_LOST)
        self.pool.connection_lost(self)


class _WorkerProcess(ProcessProtocol):
    """The worker's process: its stderr into our log, its exit to the pool."""

    def __init__(self, pool: WorkerPool, slot: Slot) -> None:
        self.pool = pool
        self.slot = slot
        self._partial = b""

    def errReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4096:]
        for line in lines:
            if line.strip():
                log.warn("tftp worker {slot}: {line}", slot=self.slot.number,
                         line=line.decode("utf-8", "replace"))

    def outReceived(self, data: bytes) -> None:
        pass  # workers print nothing; ignore rather than let a pipe fill

    def processEnded(self, reason: Failure) -> None:
        self.pool.process_ended(self.slot, reason)


@dataclass(eq=False)
class Slot:
    """One of the pool's places for a worker, filled again when its worker dies."""

    number: int
    connection: WorkerConnection | None = None
    process: Any = None  # IProcessTransport while a process runs
    started: float = 0.0
    failures: int = 0
    respawn: IDelayedCall | None = None
    grace: IDelayedCall | None = None
    exited: defer.Deferred[None] = field(default_factory=defer.Deferred)


class WorkerPool(Service):
    """``count`` worker processes, kept running while the service runs; see the module docstring.

    The reactor is used for spawnProcess, adoptStreamConnection and its clock.
    """

    name = "tftp-workers"

    def __init__(self, reactor: Any, count_: int, *, interface: str = "", python: str | None = None,
                 stop_timeout: float = 5.0, busy_poll: float | None = None) -> None:
        super().__init__()
        if count_ < 1:
            raise ValueError("a worker pool needs at least one worker")
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.interface = interface
        self.python = python or sys.executable
        self.stop_timeout = stop_timeout
        #: seconds each worker polls for the next datagram before sleeping (None: the worker's default)
        self.busy_poll = busy_poll
        self.slots = [Slot(i) for i in range(count_)]
        self._ids = count(1)
        #: workers started over the pool's life, replacements included
        self.spawned = 0

    # -- handing over

    def available(self) -> bool:
        return any(s.connection is not None and s.connection.ready for s in self.slots)

    def hand_over(self, spec: TransferSpec, reader: IFileReader, on_done: OnDone) -> RemoteTransfer:
        ready = [s.connection for s in self.slots if s.connection is not None and s.connection.ready]
        if not ready:
            raise RuntimeError("no worker is ready (ask available() first)")
        worker = min(ready, key=lambda c: len(c.transfers))
        return worker.start_transfer(next(self._ids), spec, reader, on_done)

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [s.process.pid for s in self.slots if s.process is not None and s.process.pid is not None]

    # -- supervision

    def startService(self) -> None:
        super().startService()
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        slot.respawn = None
        if not self.running:
            return
        slot.exited = defer.Deferred()
        slot.started = self._clock.seconds()
        self.spawned += 1
        try:
            self.launch(slot)
        except Exception:
            log.failure("tftp worker {slot} could not be started", slot=slot.number)
            slot.connection = None
            slot.process = None
            slot.exited.callback(None)
            self._schedule_respawn(slot)

    def launch(self, slot: Slot) -> None:
        """Start a worker process in ``slot`` with its channel as fd 3 (tests replace this)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child.set_inheritable(True)
            parent.setblocking(False)
            package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
            args = [self.python, "-m", "mozpool.bmm.tftp.worker", "--fd", "3", "--slot", str(slot.number)]
            if self.interface:
                args += ["--interface", self.interface]
            if self.busy_poll is not None:
                args += ["--busy-poll-us", str(round(self.busy_poll * 1e6))]
            process = IReactorProcess(self._reactor).spawnProcess(
                _WorkerProcess(self, slot), self.python, args, env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: child.fileno()},
            )
            slot.process = process
            connection = WorkerConnection(self, slot)
            slot.connection = connection
            IReactorSocket(self._reactor).adoptStreamConnection(
                parent.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: connection))
        finally:
            child.close()
            parent.close()

    def connection_lost(self, connection: WorkerConnection) -> None:
        """A worker's channel closed: it takes no more transfers, and must go."""
        for slot in self.slots:
            if slot.connection is connection:
                slot.connection = None
                if slot.process is None:
                    self._exited(slot)
                elif self.running:
                    # It exits by itself when its channel closes; one that lingers is made to.
                    slot.grace = self._clock.callLater(CHANNEL_GRACE, self._terminate_stale, slot, slot.process)

    def _terminate_stale(self, slot: Slot, process: Any) -> None:
        slot.grace = None
        if slot.process is process:
            log.warn("tftp worker {slot} lost its channel and did not exit: stopping it", slot=slot.number)
            self._signal(slot, signal.SIGKILL)

    def process_ended(self, slot: Slot, reason: Failure) -> None:
        slot.process = None
        if slot.grace is not None and slot.grace.active():
            slot.grace.cancel()
        slot.grace = None
        if slot.connection is not None:
            slot.connection.transport.loseConnection()
        if self.running:
            log.error("tftp worker {slot} died ({why}); its transfers are lost, their clients will retry",
                      slot=slot.number, why=reason.getErrorMessage())
        self._exited(slot)

    def _exited(self, slot: Slot) -> None:
        if not slot.exited.called:
            slot.exited.callback(None)
        if self.running and slot.respawn is None:
            self._schedule_respawn(slot)

    def _schedule_respawn(self, slot: Slot) -> None:
        lived = self._clock.seconds() - slot.started
        slot.failures = 0 if lived >= RESPAWN_STABLE_AFTER else slot.failures + 1
        delay = 0.0 if slot.failures == 0 else min(RESPAWN_FIRST_DELAY * 2 ** (slot.failures - 1), RESPAWN_MAX_DELAY)
        slot.respawn = self._clock.callLater(delay, self._spawn, slot)

    def _signal(self, slot: Slot, number: int) -> None:
        if slot.process is None:
            return
        try:
            slot.process.signalProcess(number)
        except (error.ProcessExitedAlready, OSError):
            pass

    def stopService(self) -> defer.Deferred[None]:
        """Close every channel (a worker exits on that), and fire when every worker has exited,
        or ``KILL_GRACE`` after killing one that will not (see the module docstring)."""
        super().stopService()
        waits = []
        for slot in self.slots:
            if slot.respawn is not None and slot.respawn.active():
                slot.respawn.cancel()
            slot.respawn = None
            if slot.connection is not None:
                slot.connection.ready = False
                slot.connection.transport.loseConnection()
            if slot.process is not None or slot.connection is not None:
                waits.append(slot.exited)
        if not waits:
            return defer.succeed(None)

        done: defer.Deferred[None] = defer.Deferred()
        timers: list[IDelayedCall] = []

        def kill() -> None:
            for slot in self.slots:
                if slot.process is not None:
                    log.warn("tftp worker {slot} did not stop in {s:g} s: killed", slot=slot.number,
                             s=self.stop_timeout)
                    self._signal(slot, signal.SIGKILL)
            timers.append(self._clock.callLater(KILL_GRACE, give_up))

        def give_up() -> None:
            stuck = [slot.process.pid for slot in self.slots if slot.process is not None]
            log.error("tftp workers {pids} did not exit {s:g} s after SIGKILL: stopping without them",
                      pids=stuck, s=KILL_GRACE)
            finished(None)

        def finished(_: Any) -> None:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            if not done.called:
                done.callback(None)

        timers.append(self._clock.callLater(self.stop_timeout, kill))
        defer.gatherResults(waits).addCallback(finished)
        return done


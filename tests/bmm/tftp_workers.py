"""TFTP worker mode in memory: the real WorkerPool, WorkerConnection and WorkerSide, joined by a
pipe that delivers at once (and hands descriptors over as SCM_RIGHTS would: duplicated), on the
tests' fake UDP reactor. So the unit tests of the server can run against workers unchanged.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from mozpool.bmm.tftp.worker import WorkerSide
from mozpool.bmm.tftp.workers import Ready, Slot, WorkerConnection, WorkerPool


class PipeEnd:
    """One end of an in-memory UNIX stream: what one protocol writes, the other receives."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.peer: PipeEnd | None = None
        self.disconnecting = False
        self.connected = True
        self._queue: list[tuple[str, Any]] = []
        self._delivering = False
        #: while above 0, what this end sends waits (see HoldingConnection)
        self.holding = 0
        self._held: list[tuple[str, Any]] = []

    # what the protocol on this end calls

    def _send(self, kind: str, value: Any) -> None:
        assert self.peer is not None
        if self.holding:
            self._held.append((kind, value))
        elif self.connected:
            self.peer._deliver(kind, value)

    def flush(self) -> None:
        held, self._held = self._held, []
        for kind, value in held:
            self._send(kind, value)

    def write(self, data: bytes) -> None:
        self._send("data", data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def sendFileDescriptor(self, fd: int) -> None:
        self._send("fd", os.dup(fd))

    def loseConnection(self) -> None:
        if self.connected:
            self.disconnecting = True
            for end in (self, self.peer):
                assert end is not None
                end._deliver("lost", None)

    def getPeer(self) -> UNIXAddress:
        return UNIXAddress(None)

    def getHost(self) -> UNIXAddress:
        return UNIXAddress(None)

    # delivery to the protocol on this end, never re-entering it

    def _deliver(self, kind: str, value: Any) -> None:
        self._queue.append((kind, value))
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                kind, value = self._queue.pop(0)
                if not self.connected:
                    if kind == "fd":
                        os.close(value)
                    continue
                if kind == "data":
                    self.protocol.dataReceived(value)
                elif kind == "fd":
                    self.protocol.fileDescriptorReceived(value)
                else:
                    self.connected = False
                    self.protocol.connectionLost(Failure(ConnectionDone()))
        finally:
            self._delivering = False


def connect(a: Any, b: Any) -> tuple[PipeEnd, PipeEnd]:
    end_a, end_b = PipeEnd(a), PipeEnd(b)
    end_a.peer, end_b.peer = end_b, end_a
    a.makeConnection(end_a)
    b.makeConnection(end_b)
    return end_a, end_b


class HoldingConnection(WorkerConnection):
    """AMP sends a command before it files the Deferred its answer fires, so an answer that came
    back within the send would be lost: hold what a call sends until the call has returned."""

    def callRemote(self, command: Any, **kw: Any) -> Any:
        self.transport.holding += 1
        try:
            return super().callRemote(command, **kw)
        finally:
            self.transport.holding -= 1
            self.transport.flush()


class InMemoryWorkerPool(WorkerPool):
    """Workers that are WorkerSide protocols on the same fake reactor instead of processes."""

    def __init__(self, reactor: Any, count_: int, **kw: Any) -> None:
        super().__init__(reactor, count_, **kw)
        #: slot number -> the WorkerSide running in it now
        self.sides: dict[int, WorkerSide] = {}
        self._pid = 1000

    def launch(self, slot: Slot) -> None:
        connection = HoldingConnection(self, slot)
        side = WorkerSide(self._reactor, self.interface)
        slot.connection = connection
        self.sides[slot.number] = side
        connect(connection, side)
        self._pid += 1
        side.callRemote(Ready, pid=self._pid)

    def kill(self, number: int) -> None:
        """The worker in slot ``number`` dies: its channel closes and its transfers vanish silently."""
        side = self.sides.pop(number)
        for transfer in list(side.transfers.values()):
            transfer._on_done = None  # a dead process reports nothing
            transfer.abort()
        side.transfers.clear()
        side.transport.loseConnection()

    def transfers(self) -> list[Any]:
        """Every ReadTransfer the workers run."""
        return [t for side in self.sides.values() for t in side.transfers.values()]

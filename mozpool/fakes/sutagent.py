"""Simulated SUT agent: a loopback TCP server speaking bmm-protocols.md 2.2-2.3, with the
fault modes of 2.6, so the real client can be tested over a real wire and fakes mode has
agents to verify and reboot.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

log = Logger()

PROMPT = b"$>\x00"
WARNING = "##AGENT-WARNING##"
VERSION = "SUTAgentAndroid Version 1.16"


@dataclass
class SUTFaults:
    """Fault switches of 2.6; all off by default. Change them at any time, even mid-test."""

    noPrompt: bool = False
    #: stop answering from the K-th command of a connection (1-based)
    hangAt: int | None = None
    #: send every response one byte every D seconds
    drip: float | None = None
    #: delay each whole response by D seconds
    slow: float | None = None
    #: lower-case command word -> warning text (without the marker)
    warnOn: dict[str, str] = field(default_factory=dict)
    emptyTestroot: bool = False
    badVer: bool = False
    badMd5: bool = False
    readOnly: bool = False
    #: close after receiving this many bytes of a push payload
    dropMidPush: int | None = None
    #: lower-case command word -> close without replying
    dropAfter: set[str] = field(default_factory=set)
    #: send "$>" and "\0" in separate segments
    splitPrompt: bool = False
    #: bytes sent right after each prompt (protocol error for the client)
    trailingGarbage: bytes | None = None


class _FileTree:
    """Directories and files of the simulated storage, by normalised absolute path."""

    def __init__(self, root: str) -> None:
        self.dirs: set[str] = {"/"}
        self.files: dict[str, bytes] = {}
        self.makedirs(root)

    @staticmethod
    def norm(path: str) -> str:
        return posixpath.normpath("/" + path.lstrip("/")) if path else ""

    def makedirs(self, path: str) -> None:
        parts = self.norm(path).strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.dirs.add("/" + "/".join(parts[:i]))

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(p for p in self.dirs | set(self.files) if p.startswith(prefix))

    def remove(self, path: str) -> list[str]:
        gone = self.children(path)
        for p in gone:
            self.dirs.discard(p)
            self.files.pop(p, None)
        self.dirs.discard(path)
        return gone


class SUTAgentProtocol(Protocol):
    """One command-channel connection of the simulated agent."""

    factory: "SUTAgentFactory"

    def __init__(self) -> None:
        self._buffer = b""
        self._skipLF = False
        self._push: tuple[str, int] | None = None
        self._count = 0
        self._hung = False
        self._dropped = False
        self._queue: list[bytes] = []
        self._sending = False
        self._timer: IDelayedCall | None = None

    @property
    def agent(self) -> "SimulatedSUTAgent":
        return self.factory.agent

    def connectionMade(self) -> None:
        self.agent._connections.add(self)
        if not self.agent.faults.noPrompt:
            self._sendRaw(PROMPT)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:
        self.agent._connections.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        self._buffer += data
        while self._buffer and not self._dropped:
            if self._skipLF:
                self._skipLF = False
                if self._buffer[:1] == b"\n":
                    self._buffer = self._buffer[1:]
                    continue
            if self._push is not None:
                path, size = self._push
                limit = self.agent.faults.dropMidPush
                if limit is not None and limit < size and len(self._buffer) >= limit:
                    self._drop()
                    return
                if len(self._buffer) < size:
                    return
                payload, self._buffer = self._buffer[:size], self._buffer[size:]
                self._push = None
                self._finishPush(path, payload)
                continue
            ends = [i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0]
            if not ends:
                return
            end = min(ends)
            line, terminator = self._buffer[:end], self._buffer[end : end + 1]
            self._buffer = self._buffer[end + 1 :]
            self._skipLF = terminator == b"\r"
            self._line(line.decode("latin-1"))

    # -- commands ----------------------------------------------------------------------------

    def _line(self, line: str) -> None:
        if not line.strip():
            self._respond("")
            return
        self.agent.commands.append(line)
        self._count += 1
        faults = self.agent.faults
        if faults.hangAt is not None and self._count >= faults.hangAt:
            self._hung = True
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        cmd, args = words[0].lower(), words[1:]
        if cmd in faults.dropAfter:
            self._drop()
            return
        if cmd in faults.warnOn:
            self._respond(f"{WARNING} {faults.warnOn[cmd]}")
            return
        handler = getattr(self, "cmd_" + cmd, None)
        arity = self._ARITY.get(cmd)
        if handler is None or arity is None:
            self._respond(f"{WARNING} [{words[0]}] command with arg(s) = {args} is currently not implemented.")
            return
        if len(args) != arity:
            self._respond(f"{WARNING} Wrong number of arguments for {cmd} command!")
            return
        handler(*args)

    _ARITY = {"ver": 0, "testroot": 0, "isdir": 1, "mkdr": 1, "rmdr": 1, "push": 2, "rebt": 0, "quit": 0, "exit": 0}

    def cmd_ver(self) -> None:
        self._respond("SUTAgentAndroid (broken build)" if self.agent.faults.badVer else VERSION)

    def cmd_testroot(self) -> None:
        self._respond("" if self.agent.faults.emptyTestroot else self.agent.testRoot)

    def cmd_isdir(self, path: str) -> None:
        tree = self.agent.tree
        isDir = tree.norm(path) in tree.dirs and not self.agent.faults.readOnly
        self._respond("TRUE" if isDir else "FALSE")

    def cmd_mkdr(self, path: str) -> None:
        tree = self.agent.tree
        p = tree.norm(path)
        if p in tree.dirs or p in tree.files:
            self._respond(f"{WARNING} Could not create the directory {path}")
            return
        if not self.agent.faults.readOnly:
            tree.makedirs(p)
        self._respond(f"{path} successfully created")

    def cmd_rmdr(self, path: str) -> None:
        tree = self.agent.tree
        p = tree.norm(path)
        if p not in tree.dirs:
            self._respond(f"{WARNING} {path} is not a directory")
            return
        gone = tree.remove(p)
        lines = [f"Deleting file(s) from {path}"] + [posixpath.basename(g) for g in gone]
        lines.append(f"Deleting directory {path}")
        self._respond("\n".join(lines))

    def cmd_push(self, path: str, size: str) -> None:
        try:
            n = int(size)
            if n < 0:
                raise ValueError(size)
        except ValueError:
            self._respond(f"{WARNING} Push failed!")
            return
        self._push = (path, n)
        if n == 0:
            self._push = None
            self._finishPush(path, b"")

    def _finishPush(self, path: str, payload: bytes) -> None:
        tree = self.agent.tree
        p = tree.norm(path)
        if posixpath.dirname(p) not in tree.dirs or p in tree.dirs:
            self._respond(f"{WARNING} Push failed!")
            return
        tree.files[p] = payload
        digest = hashlib.md5(payload).hexdigest()
        if self.agent.faults.badMd5:
            digest = hashlib.md5(payload + b"corrupt").hexdigest()
        self._respond(digest)

    def cmd_quit(self) -> None:
        self._respond("quit", close=True)

    def cmd_exit(self) -> None:
        # Real agents stop listening until restarted; so do we.
        self._respond("exit", close=True)
        self.agent.stop()

    def cmd_rebt(self) -> None:
        self.agent._rebootRequested()

    # -- output ------------------------------------------------------------------------------

    def _drop(self) -> None:
        self._dropped = True
        assert self.transport is not None
        self.transport.loseConnection()

    def _respond(self, body: str, close: bool = False) -> None:
        if self._hung:
            return
        faults = self.agent.faults
        data = (body.encode("latin-1") + b"\n" if body else b"") + PROMPT
        chunks = [data]
        if faults.splitPrompt:
            chunks = [data[:-1], data[-1:]]
        if faults.trailingGarbage:
            chunks.append(faults.trailingGarbage)
        if faults.drip is not None:
            chunks = [bytes([b]) for b in b"".join(chunks)]
        self._queue.extend(chunks)
        if close:
            self._queue.append(b"")  # marker: close after the reply
        if not self._sending:
            self._sending = True
            delay = faults.slow if faults.slow is not None else faults.drip
            if delay is not None or faults.splitPrompt:
                self._timer = self.agent.clock.callLater(delay or 0, self._sendNext)
            else:
                self._sendNext()

    def _sendNext(self) -> None:
        self._timer = None
        faults = self.agent.faults
        while self._queue:
            chunk = self._queue.pop(0)
            if chunk == b"":
                assert self.transport is not None
                self.transport.loseConnection()
                self._queue.clear()
                break
            self._sendRaw(chunk)
            if self._queue and (faults.drip is not None or faults.splitPrompt):
                # Separate segments need separate reactor turns (and some time, on a real wire).
                self._timer = self.agent.clock.callLater(faults.drip or 0.02, self._sendNext)
                return
        self._sending = False

    def _sendRaw(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


class SUTAgentFactory(Factory):
    noisy = False  # one per simulated device, started at every boot

    def __init__(self, agent: "SimulatedSUTAgent") -> None:
        self.agent = agent

    def buildProtocol(self, addr: Any) -> Protocol | None:
        proto = SUTAgentProtocol()
        proto.factory = self
        return proto


class SimulatedSUTAgent:
    """A simulated agent: listen on 127.0.0.1 (port 0 first, the same port afterwards),
    stop/start as the simulated device powers off/boots, model ``rebt``.
    """

    def __init__(
        self,
        reactor: Any,
        port: int = 0,
        interface: str = "127.0.0.1",
        testRoot: str = "/mnt/sdcard",
        rebootDownTime: float = 5.0,
        onReboot: Callable[[], Any] | None = None,
        faults: SUTFaults | None = None,
    ) -> None:
        self._reactor = reactor
        self.clock: IReactorTime = reactor
        self._tcp: IReactorTCP = reactor
        self.port = port
        self.interface = interface
        self.testRoot = testRoot
        self.rebootDownTime = rebootDownTime
        self.onReboot = onReboot
        self.faults = faults or SUTFaults()
        self.tree = _FileTree(testRoot)
        #: every command line received, in order, across connections
        self.commands: list[str] = []
        self.reboots = 0
        self._listening: IListeningPort | None = None
        self._connections: set[SUTAgentProtocol] = set()
        self._restart: IDelayedCall | None = None
        self._busy_tries = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.interface, self.port

    @property
    def listening(self) -> bool:
        return self._listening is not None

    def start(self) -> int:
        """Listen (the agent came up); returns the port. A free port is chosen the first time."""
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self._listening is None:
            try:
                self._listening = self._tcp.listenTCP(self.port, SUTAgentFactory(self), interface=self.interface)
            except CannotListenError:
                if self.port == 0:
                    raise
                self._busy_tries += 1
                if self._busy_tries > 5:
                    # Something else (an outgoing connection's ephemeral port) holds it: move.
                    # The pool tells the SUT client the agent's current port.
                    log.info("simulated SUT agent: port {port} taken, moving", port=self.port)
                    self.port = 0
                    return self.start()
                # The previous listener on this port may still be closing: try again shortly.
                log.info("simulated SUT agent: port {port} busy, retrying", port=self.port)
                self._restart = self.clock.callLater(0.1, self.start)
                return self.port
            self._busy_tries = 0
            self.port = self._listening.getHost().port
        return self.port

    @property
    def openConnections(self) -> int:
        return len(self._connections)

    def stop(self, dropConnections: bool = False) -> Any:
        """Refuse new connections (device off or rebooting); optionally cut the open ones."""
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        listening, self._listening = self._listening, None
        if dropConnections:
            for proto in list(self._connections):
                if proto.transport is not None:
                    proto.transport.abortConnection()
        if listening is not None:
            return listening.stopListening()
        return None

    def _rebootRequested(self) -> None:
        self.reboots += 1
        log.info("simulated SUT agent on port {port} rebooting", port=self.port)
        self.stop(dropConnections=True)
        if self.onReboot is not None:
            try:
                self.onReboot()
            except Exception:
                log.failure("onReboot hook failed")
        self._restart = self.clock.callLater(self.rebootDownTime, self.start)

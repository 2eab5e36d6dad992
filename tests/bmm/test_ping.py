"""Ping with a fake process reactor: batching, parsing, bounds, kill, missing fping, TCP probe."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mozpool.bmm.ping import (
    FpingMissing,
    FpingPinger,
    IPinger,
    TCPProbePinger,
    check_fping,
    find_fping,
    fping_available,
    valid_host,
)


class FakeProcessTransport:
    def __init__(self, reactor: "FakeProcessReactor", proto: Any, args: list[str]) -> None:
        self.reactor = reactor
        self.proto = proto
        self.args = args
        self.stdinClosed = False
        self.signals: list[str] = []
        self.ended = False
        self.pid = 1000 + len(reactor.spawned)

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, sig: str) -> None:
        if self.ended:
            from twisted.internet.error import ProcessExitedAlready

            raise ProcessExitedAlready()
        self.signals.append(sig)

    # test helpers
    @property
    def hosts(self) -> list[str]:
        return self.args[self.args.index("--") + 1 :]

    def out(self, data: bytes) -> None:
        self.proto.outReceived(data)

    def err(self, data: bytes) -> None:
        self.proto.errReceived(data)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        self.ended = True
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, signal))
        self.proto.processEnded(reason)


class FakeProcessReactor(Clock):
    """A Clock that records spawnProcess calls (MemoryReactor has no processes)."""

    def __init__(self, failSpawn: bool = False) -> None:
        super().__init__()
        self.spawned: list[FakeProcessTransport] = []
        self.spawnCalls: list[dict[str, Any]] = []
        self.failSpawn = failSpawn

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None, path: Any = None,
                     uid: Any = None, gid: Any = None, usePTY: bool = False, childFDs: Any = None) -> Any:
        self.spawnCalls.append(dict(executable=executable, args=args, env=env, childFDs=childFDs, usePTY=usePTY))
        if self.failSpawn:
            raise OSError(2, "No such file or directory")
        t = FakeProcessTransport(self, proto, list(args))
        self.spawned.append(t)
        proto.makeConnection(t)
        return t


class PingTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        # A stand-in fping: any executable file will do, nothing is really run.
        self.fping = self.mktemp()
        with open(self.fping, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(self.fping, stat.S_IRWXU)
        self.pinger = FpingPinger(self.reactor, fping=self.fping)


class FpingTests(PingTestBase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IPinger, self.pinger))

    def test_one_host(self) -> None:
        d = self.pinger.ping("panda-0001.example.com")
        self.assertEqual(self.reactor.spawned, [], "spawned at the end of the turn, not at once")
        self.reactor.advance(0)
        [child] = self.reactor.spawned
        call = self.reactor.spawnCalls[0]
        self.assertEqual(call["executable"], self.fping)
        self.assertEqual(call["args"], [self.fping, "-a", "-r4", "-t50", "--", "panda-0001.example.com"])
        self.assertEqual(call["childFDs"], {0: "w", 1: "r", 2: "r"})
        self.assertFalse(call["usePTY"])
        self.assertTrue(child.stdinClosed)
        self.assertNoResult(d)
        child.out(b"panda-0001.example.com\n")
        child.exit(0)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_batch_same_turn(self) -> None:
        hosts = ["a.example.com", "b.example.com", "C.example.com", "d.example.com"]
        ds = {h: self.pinger.ping(h) for h in hosts}
        dup = self.pinger.ping("a.example.com")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 1, "one child for the whole turn")
        child = self.reactor.spawned[0]
        self.assertEqual(child.hosts, hosts, "each host once")
        # Alive hosts arrive split across reads and in a different case; d is unreachable.
        child.out(b"a.example.com\nc.exam")
        child.out(b"ple.com\n")
        child.out(b"b.example.com\n")
        child.exit(1)
        results = {h: self.successResultOf(d) for h, d in ds.items()}
        self.assertEqual(results, {"a.example.com": True, "b.example.com": True, "C.example.com": True,
                                   "d.example.com": False})
        self.assertIs(self.successResultOf(dup), True)

    def test_window(self) -> None:
        pinger = FpingPinger(self.reactor, fping=self.fping, window=0.05)
        d1 = pinger.ping("a")
        self.reactor.advance(0.03)
        d2 = pinger.ping("b")
        self.reactor.advance(0.02)
        self.assertEqual([c.hosts for c in self.reactor.spawned], [["a", "b"]])
        self.reactor.spawned[0].out(b"b\n")
        self.reactor.spawned[0].exit(1)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (False, True))

    def test_separate_turns_separate_children(self) -> None:
        self.pinger.ping("a")
        self.reactor.advance(0)
        self.pinger.ping("b")
        self.reactor.advance(0)
        self.assertEqual([c.hosts for c in self.reactor.spawned], [["a"], ["b"]])

    def test_dns_failure(self) -> None:
        d1 = self.pinger.ping("nonexistent.invalid")
        d2 = self.pinger.ping("localhost")
        self.reactor.advance(0)
        child = self.reactor.spawned[0]
        child.out(b"localhost\n")
        child.err(b"nonexistent.invalid: Name or service not known\n")
        child.exit(2)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (False, True))

    def test_configuration_errors_are_down(self) -> None:
        for code in (3, 4):
            d = self.pinger.ping("a")
            self.reactor.advance(0)
            child = self.reactor.spawned[-1]
            child.out(b"a\n")  # even if something was printed, 3/4 mean nothing is trustworthy
            child.err(b"fping: socket: Operation not permitted\n")
            child.exit(code)
            self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_unexpected_signal_is_down(self) -> None:
        d = self.pinger.ping("a")
        self.reactor.advance(0)
        self.reactor.spawned[0].exit(None, 15)
        self.assertIs(self.successResultOf(d), False)

    def test_timeout_kills_child(self) -> None:
        d = self.pinger.ping("slow.example.com")
        self.reactor.advance(0)
        child = self.reactor.spawned[0]
        self.reactor.advance(9.9)
        self.assertNoResult(d)
        self.assertEqual(child.signals, [])
        self.reactor.advance(0.1)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(child.signals, ["KILL"])
        self.assertEqual(self.pinger.running, 1, "still counted until reaped")
        child.exit(None, 9)
        self.assertEqual(self.pinger.running, 0)
        self.assertEqual(self.pinger.stats.killed, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_late_output_after_timeout_ignored(self) -> None:
        results: list[bool] = []
        self.pinger.ping("a").addCallback(results.append)
        self.reactor.advance(0)
        self.reactor.advance(10)
        self.assertEqual(results, [False])
        child = self.reactor.spawned[0]
        child.out(b"a\n")
        child.exit(0)  # exited just before the kill landed
        self.assertEqual(results, [False], "fired once only")

    def test_concurrency_limit_and_queue_bound(self) -> None:
        pinger = FpingPinger(self.reactor, fping=self.fping, max_children=2)
        first = [pinger.ping("h%d" % i) for i in range(2)]
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 1)
        # Fill the second slot, then queue behind both.
        pinger.ping("x")
        self.reactor.advance(0)
        queued = pinger.ping("q")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 2, "at most max_children children")
        self.reactor.advance(5)
        self.reactor.spawned[0].out(b"h0\n")
        self.reactor.spawned[0].exit(1)
        self.assertEqual([self.successResultOf(d) for d in first], [True, False])
        self.assertEqual(len(self.reactor.spawned), 3, "a freed slot runs the queue")
        self.assertEqual(self.reactor.spawned[2].hosts, ["q"])
        # The queued ping's bound counted from its request: 5 s are left, not 10.
        self.reactor.advance(5)
        self.assertIs(self.successResultOf(queued), False)
        self.assertEqual(self.reactor.spawned[2].signals, ["KILL"])

    def test_queued_past_bound_never_spawns(self) -> None:
        pinger = FpingPinger(self.reactor, fping=self.fping, max_children=1)
        pinger.ping("a")
        self.reactor.advance(0)
        queued = pinger.ping("b")
        self.reactor.advance(10)
        self.assertIs(self.successResultOf(queued), False)
        self.reactor.spawned[0].exit(None, 9)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_max_batch(self) -> None:
        pinger = FpingPinger(self.reactor, fping=self.fping, max_batch=3)
        for i in range(7):
            pinger.ping("h%d" % i)
        self.reactor.advance(0)
        self.assertEqual([c.hosts for c in self.reactor.spawned], [["h0", "h1", "h2"], ["h3", "h4", "h5"], ["h6"]])

    def test_invalid_host_never_spawns(self) -> None:
        for bad in ["-a", "a b", "a;rm", "", "x/y", "host_name"]:
            self.assertIs(self.successResultOf(self.pinger.ping(bad)), False)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.spawned, [])

    def test_spawn_fails(self) -> None:
        reactor = FakeProcessReactor(failSpawn=True)
        pinger = FpingPinger(reactor, fping=self.fping)
        d = pinger.ping("a")
        reactor.advance(0)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_simulated_hook(self) -> None:
        answers = {"sim-up": True, "sim-down": False}
        pinger = FpingPinger(self.reactor, fping=self.fping, simulated=answers.get)
        self.assertIs(self.successResultOf(pinger.ping("sim-up")), True)
        self.assertIs(self.successResultOf(pinger.ping("sim-down")), False)
        real = pinger.ping("real.example.com")
        self.reactor.advance(0)
        self.assertEqual([c.hosts for c in self.reactor.spawned], [["real.example.com"]])
        self.assertNoResult(real)

    def test_simulated_hook_raises(self) -> None:
        def boom(host: str) -> bool | None:
            raise RuntimeError("boom")

        pinger = FpingPinger(self.reactor, fping=self.fping, simulated=boom)
        self.assertIs(self.successResultOf(pinger.ping("a")), False)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class MissingFpingTests(SynchronousTestCase):
    def test_missing_binary(self) -> None:
        missing = os.path.join(self.mktemp(), "fping")
        self.assertIsNone(find_fping(missing))
        self.assertFalse(fping_available(missing))
        e = self.assertRaises(FpingMissing, check_fping, missing)
        self.assertIn("[ping] fping", str(e))
        self.assertIn("fping not found", str(e))
        reactor = FakeProcessReactor()
        pinger = FpingPinger(reactor, fping=missing)
        self.assertIsNone(pinger.fping)
        self.assertIs(self.successResultOf(pinger.ping("a.example.com")), False)
        reactor.advance(0)
        self.assertEqual(reactor.spawned, [])

    def test_not_executable(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("")
        os.chmod(path, 0o644)
        self.assertFalse(fping_available(path))

    def test_missing_on_path(self) -> None:
        self.patch(os, "environ", {"PATH": self.mktemp()})
        self.assertIsNone(find_fping())
        self.assertIn("on PATH", str(self.assertRaises(FpingMissing, check_fping)))

    def test_valid_host(self) -> None:
        self.assertTrue(valid_host("panda-0001.p1.releng.example.com"))
        self.assertTrue(valid_host("127.0.0.1"))
        self.assertFalse(valid_host("-r100"))
        self.assertFalse(valid_host("a\nb"))


class FakeEndpoint:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.transport: StringTransport | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.mode == "refuse":
            return defer.fail(ConnectionRefusedError())
        if self.mode == "dns":
            return defer.fail(DNSLookupError("x"))
        if self.mode == "hang":
            return Deferred()
        proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        proto.makeConnection(self.transport)
        return defer.succeed(proto)


class TCPProbeTests(SynchronousTestCase):
    def probe(self, mode: str) -> tuple[Deferred[bool], FakeEndpoint, Clock]:
        clock = Clock()
        ep = FakeEndpoint(mode)
        seen: list[tuple[str, int]] = []

        def factory(host: str, port: int, timeout: float) -> FakeEndpoint:
            seen.append((host, port))
            return ep

        pinger = TCPProbePinger(clock, 22, endpoint_factory=factory)  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IPinger, pinger))
        d = pinger.ping("panda.example.com")
        self.assertEqual(seen, [("panda.example.com", 22)])
        return d, ep, clock

    def test_accepted(self) -> None:
        d, ep, _ = self.probe("accept")
        self.assertIs(self.successResultOf(d), True)
        assert ep.transport is not None
        self.assertEqual(ep.transport.value(), b"", "never sends data")
        self.assertTrue(ep.transport.disconnected)

    def test_refused_means_up(self) -> None:
        d, _, _ = self.probe("refuse")
        self.assertIs(self.successResultOf(d), True)

    def test_dns_down(self) -> None:
        d, _, _ = self.probe("dns")
        self.assertIs(self.successResultOf(d), False)

    def test_timeout_down(self) -> None:
        d, _, clock = self.probe("hang")
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIs(self.successResultOf(d), False)

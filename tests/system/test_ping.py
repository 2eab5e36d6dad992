"""Real fping through reactor.spawnProcess on loopback.

Skipped when fping is missing, unless CI=true: then a missing fping is a failure.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from mozpool.bmm.ping import FpingPinger, TCPProbePinger, find_fping

reactor: Any = _reactor


def requireFping() -> str:
    path = find_fping()
    if path is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("fping is required under CI=true: apt-get install -y fping")
        raise SkipTest("fping not installed (apt-get install -y fping)")
    return path


class FpingSystemTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.pinger = FpingPinger(reactor, fping=requireFping())

    async def test_loopback_alive(self) -> None:
        self.assertIs(await self.pinger.ping("127.0.0.1"), True)
        self.assertEqual(self.pinger.stats.exit_codes, {0: 1})

    async def test_unresolvable_down(self) -> None:
        start = reactor.seconds()
        self.assertIs(await self.pinger.ping("nonexistent.invalid"), False)
        self.assertLess(reactor.seconds() - start, self.pinger.bound)
        self.assertEqual(self.pinger.stats.exit_codes, {2: 1})

    async def test_batch_mixed(self) -> None:
        hosts = ["127.0.0.1", "localhost", "nonexistent.invalid", "127.0.0.2"]
        results = await gatherResults([self.pinger.ping(h) for h in hosts])
        self.assertEqual(dict(zip(hosts, results)),
                         {"127.0.0.1": True, "localhost": True, "nonexistent.invalid": False, "127.0.0.2": True})
        self.assertEqual(self.pinger.stats.spawned, 1, "one fping for the whole batch")

    async def test_simulated_never_spawns(self) -> None:
        pinger = FpingPinger(reactor, fping=requireFping(), simulated=lambda h: h.startswith("sim-") or None)
        self.assertIs(await pinger.ping("sim-panda-0001"), True)
        self.assertEqual(pinger.stats.spawned, 0)


class SpawnMechanicsTests(TestCase):
    """The real spawnProcess/kill/reap path, with a shell script standing in for fping (no network)."""

    timeout = 10

    def script(self, body: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body + "\n")
        os.chmod(path, 0o755)
        return path

    async def waitReaped(self, pinger: FpingPinger) -> None:
        for _ in range(250):
            if pinger.running == 0:
                return
            await deferLater(reactor, 0.02)
        self.fail("child not reaped")

    async def test_bound_kills_child(self) -> None:
        pinger = FpingPinger(reactor, fping=self.script("exec sleep 30"), bound=0.3)
        start = reactor.seconds()
        self.assertIs(await pinger.ping("127.0.0.1"), False)
        elapsed = reactor.seconds() - start
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 10, "ended by the 0.3 s bound, not by the child's 30 s")
        await self.waitReaped(pinger)
        self.assertEqual(pinger.stats.killed, 1)

    async def test_arguments_and_output(self) -> None:
        """Arguments arrive as a vector (no shell); alive hosts are read from stdout."""
        out = self.mktemp()
        pinger = FpingPinger(reactor, fping=self.script(f'echo "$@" > {out}; echo 127.0.0.1; exit 1'))
        results = await gatherResults([pinger.ping("127.0.0.1"), pinger.ping("localhost")])
        self.assertEqual(results, [True, False])
        with open(out) as f:
            self.assertEqual(f.read().split(), ["-a", "-r4", "-t50", "--", "127.0.0.1", "localhost"])

    async def test_exit4_is_down(self) -> None:
        pinger = FpingPinger(reactor, fping=self.script("echo 127.0.0.1; echo 'socket: Operation not permitted' >&2; exit 4"))
        self.assertIs(await pinger.ping("127.0.0.1"), False)
        await self.waitReaped(pinger)
        self.assertEqual(pinger.stats.exit_codes, {4: 1})

    async def test_missing_binary_is_down(self) -> None:
        pinger = FpingPinger(reactor, fping=os.path.join(self.mktemp(), "fping"))
        self.assertIs(await pinger.ping("127.0.0.1"), False)
        self.assertEqual(pinger.stats.spawned, 0)


class TCPProbeSystemTests(TestCase):
    """Option B on loopback: a closed port answers with RST, which means the host is up."""

    timeout = 10

    async def test_refused_port_means_up(self) -> None:
        from twisted.internet.protocol import Factory, Protocol

        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        accepted = await TCPProbePinger(reactor, number).ping("127.0.0.1")
        await port.stopListening()
        refused = await TCPProbePinger(reactor, number).ping("127.0.0.1")
        self.assertEqual((accepted, refused), (True, True))

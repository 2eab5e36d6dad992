"""The real SUT client against the simulated agent over loopback TCP, every fault mode of 2.6.

Deadlines are shrunk (SUTTimings) so each bound is asserted in well under a second.  Only the
tests that time a bound use those short deadlines; the others use ten times longer ones, so a
busy machine cannot make a working operation miss a deadline, and "fails at once" is measured
against bounds far above any scheduling delay.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mozpool.bmm.sut import SUTClient, SUTResult, SUTTimings
from mozpool.fakes.sutagent import SimulatedSUTAgent
from tests.support.polling import until

reactor: Any = _reactor

TIMINGS = SUTTimings(connect=0.8, idle=0.5, verify=1.5, sdcard=2.0, reboot=1.5)
PATIENT = SUTTimings(connect=8, idle=5, verify=15, sdcard=20, reboot=15)
SLACK = 1.5  # scheduling slack allowed past a bound on a busy machine (the reason says which bound)
AT_ONCE = 2.5  # "fails at once": half the smallest PATIENT bound (idle)

ROOT_STEPS = ["testroot", "isdir /mnt/sdcard/tests", "mkdr /mnt/sdcard/tests", "ver"]
D = "/mnt/sdcard/tests/sdcardtest"


class SUTAgentSystemTests(TestCase):
    timeout = 40

    def setUp(self) -> None:
        self.reboots: list[int] = []
        self.agent = SimulatedSUTAgent(reactor, rebootDownTime=0.5, onReboot=lambda: self.reboots.append(1))
        self.agent.start()
        self.client = SUTClient(reactor, PATIENT, address_for=lambda fqdn: self.agent.address)
        #: the client with the short deadlines, for the tests that time one
        self.strict = SUTClient(reactor, TIMINGS, address_for=lambda fqdn: self.agent.address)
        self.addCleanup(self.agent.stop, True)

    async def settle(self) -> None:
        """Wait until both ends have closed, so trial finds a clean reactor."""
        await until(lambda: not self.agent.openConnections, "the agent's connections to close")
        await deferLater(reactor, 0.02)
        self.assertEqual(self.agent.openConnections, 0)

    async def timed(self, d: "Deferred[SUTResult]") -> tuple[SUTResult, float]:
        start = reactor.seconds()
        result = await d
        elapsed = reactor.seconds() - start
        await self.settle()
        return result, elapsed

    async def assertFails(self, d: "Deferred[SUTResult]", reason: str, bound: float | None = None) -> SUTResult:
        """Fails with REASON in its text: at BOUND if given (``self.strict``'s), else at once (well
        before any of ``self.client``'s bounds)."""
        result, elapsed = await self.timed(d)
        self.assertFalse(result.ok, result)
        self.assertIn(reason, result.reason)
        if bound is None:
            self.assertLess(elapsed, AT_ONCE, f"should fail at once, took {elapsed:.2f} s")
        else:
            self.assertGreaterEqual(elapsed, bound - 0.05)
            self.assertLess(elapsed, bound + SLACK)
        return result

    # -- normal behaviour ----------------------------------------------------------------------

    async def test_verify(self) -> None:
        result, _ = await self.timed(self.client.verify("panda-0001"))
        self.assertTrue(result.ok, result.reason)
        self.assertEqual(self.agent.commands, ROOT_STEPS + ["quit"])  # (settled: the agent read it all)
        # Second verify: the tests directory now exists, so no mkdr.
        self.agent.commands.clear()
        result, _ = await self.timed(self.client.verify("panda-0001"))
        self.assertTrue(result.ok, result.reason)
        self.assertEqual(self.agent.commands[:3], ["testroot", "isdir /mnt/sdcard/tests", "ver"])

    async def test_sdcard(self) -> None:
        result, _ = await self.timed(self.client.check_sdcard("panda-0001"))
        self.assertTrue(result.ok, result.reason)
        self.assertEqual(
            self.agent.commands,
            ROOT_STEPS
            + [f"isdir {D}", f"isdir {D}", f"mkdr {D}", f"isdir {D}", f"push {D}/sdcard_check 15", f"isdir {D}",
               f"rmdr {D}", "quit"],
        )
        self.assertNotIn(D, self.agent.tree.dirs, "test directory removed afterwards")

    async def test_reboot(self) -> None:
        # Down long enough that the refused verify below cannot race the agent's return.
        self.agent.rebootDownTime = 2.0
        result, _ = await self.timed(self.client.reboot("panda-0001"))
        self.assertTrue(result.ok, result.reason)
        self.assertEqual(self.agent.commands, ROOT_STEPS + ["rebt"])
        self.assertEqual(self.reboots, [1])
        self.assertFalse(self.agent.listening)
        await self.assertFails(self.client.verify("panda-0001"), "connection refused")
        await until(lambda: self.agent.listening, "the agent to be back after its down time")
        result, _ = await self.timed(self.client.verify("panda-0001"))
        self.assertTrue(result.ok, result.reason)

    # -- fault modes ---------------------------------------------------------------------------

    async def test_refuse(self) -> None:
        await self.agent.stop()
        await self.assertFails(self.client.verify("panda-0001"), "connection refused")

    async def test_no_prompt(self) -> None:
        self.agent.faults.noPrompt = True
        await self.assertFails(self.strict.verify("panda-0001"), "no prompt from agent within 0.8 s", TIMINGS.connect)

    async def test_hang_at(self) -> None:
        self.agent.faults.hangAt = 2
        result = await self.assertFails(self.strict.verify("panda-0001"), "no data from agent for 0.5 s", TIMINGS.idle)
        self.assertIn("'isdir'", result.reason)
        self.assertEqual(self.agent.commands, ["testroot", "isdir /mnt/sdcard/tests"])

    async def test_drip(self) -> None:
        self.agent.faults.drip = 0.1
        await self.assertFails(self.strict.verify("panda-0001"), "verify did not finish within 1.5 s", TIMINGS.verify)

    async def test_slow_within_bounds(self) -> None:
        self.agent.faults.slow = 0.1
        result, elapsed = await self.timed(self.client.verify("panda-0001"))
        self.assertTrue(result.ok, result.reason)
        self.assertGreaterEqual(elapsed, 0.39, "4 delayed replies")

    async def test_slow_past_idle(self) -> None:
        self.agent.faults.slow = 0.7
        await self.assertFails(self.strict.verify("panda-0001"), "no data from agent for 0.5 s", TIMINGS.idle)

    async def test_slow_past_total(self) -> None:
        # Each reply inside the idle bound, the sum (13 x 0.25 s) past the SD-card total.
        self.agent.faults.slow = 0.25
        await self.assertFails(self.strict.check_sdcard("panda-0001"), "did not finish within 2 s", TIMINGS.sdcard)

    async def test_warn_on(self) -> None:
        self.agent.faults.warnOn["ver"] = "Something went wrong"
        await self.assertFails(self.client.verify("panda-0001"), "agent warning: Something went wrong")

    async def test_empty_testroot(self) -> None:
        self.agent.faults.emptyTestroot = True
        await self.assertFails(self.client.verify("panda-0001"), "invalid device root")

    async def test_bad_ver(self) -> None:
        self.agent.faults.badVer = True
        await self.assertFails(self.client.verify("panda-0001"), "unrecognised ver reply")

    async def test_bad_md5(self) -> None:
        self.agent.faults.badMd5 = True
        await self.assertFails(self.client.check_sdcard("panda-0001"), "push md5 mismatch")

    async def test_read_only(self) -> None:
        self.agent.faults.readOnly = True
        result, _ = await self.timed(self.client.verify("panda-0001"))
        self.assertTrue(result.ok, "verify does not write")
        await self.assertFails(self.client.check_sdcard("panda-0001"), "failed to create directory under device root")

    async def test_drop_mid_push(self) -> None:
        self.agent.faults.dropMidPush = 5
        await self.assertFails(self.client.check_sdcard("panda-0001"), "closed by agent while waiting for reply to 'push'")

    async def test_drop_after_command(self) -> None:
        self.agent.faults.dropAfter.add("isdir")
        await self.assertFails(self.client.verify("panda-0001"), "closed by agent while waiting for reply to 'isdir'")

    async def test_split_prompt(self) -> None:
        self.agent.faults.splitPrompt = True
        result, _ = await self.timed(self.client.check_sdcard("panda-0001"))
        self.assertTrue(result.ok, result.reason)

    async def test_trailing_garbage(self) -> None:
        self.agent.faults.trailingGarbage = b"junk"
        await self.assertFails(self.client.verify("panda-0001"), "bytes after prompt")

    async def test_stop_drops_connections(self) -> None:
        """Power off mid-operation: the open connection dies and the client fails at once."""
        self.agent.faults.hangAt = 1
        d = self.client.verify("panda-0001")
        await until(lambda: self.agent.commands == ["testroot"], "the client's first command (left unanswered)")
        port = self.agent.port
        await self.agent.stop(dropConnections=True)
        await self.assertFails(d, "closed by agent")
        # Power back on: the agent comes back on the same port.
        self.agent.faults.hangAt = None
        self.assertEqual(self.agent.start(), port)
        result, _ = await self.timed(self.client.verify("panda-0001"))
        self.assertTrue(result.ok, result.reason)


class RawAgentTests(TestCase):
    """The simulated agent's framing, seen by a raw client."""

    timeout = 10

    async def test_framing(self) -> None:
        agent = SimulatedSUTAgent(reactor)
        port = agent.start()
        self.addCleanup(agent.stop, True)
        received: list[bytes] = []
        gone: Deferred[None] = Deferred()

        class Raw(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

            def connectionLost(self, reason: Any) -> None:
                gone.callback(None)

        proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Raw))
        await until(lambda: len(b"".join(received)) >= 3, "the prompt")
        self.assertEqual(b"".join(received), b"$>\x00")
        received.clear()
        # Upper-case command; CR and LF arriving apart count as one line end (the LF is sent once
        # the agent has run the command the CR ended).
        proto.transport.write(b"VER\r")
        await until(lambda: agent.commands == ["VER"], "the agent to run VER on its CR")
        proto.transport.write(b"\nmkdr /mnt/sdcard\r\nfoo bar\r\nisdir\r\n")
        await deferLater(reactor, 0.05)
        proto.transport.write(b"quit\n")
        await gone
        self.assertEqual(
            b"".join(received),
            b"SUTAgentAndroid Version 1.16\n$>\x00"
            b"##AGENT-WARNING## Could not create the directory /mnt/sdcard\n$>\x00"
            b"##AGENT-WARNING## [foo] command with arg(s) = ['bar'] is currently not implemented.\n$>\x00"
            b"##AGENT-WARNING## Wrong number of arguments for isdir command!\n$>\x00"
            b"quit\n$>\x00",
        )
        self.assertEqual(agent.commands, ["VER", "mkdr /mnt/sdcard", "foo bar", "isdir", "quit"])


class AgentPortTaken(TestCase):
    async def test_agent_moves_when_its_port_stays_taken(self) -> None:
        """A rebooting simulated device whose old port something else holds comes up elsewhere."""
        agent = SimulatedSUTAgent(reactor)
        first = agent.start()
        await agent.stop(True)
        squatter = reactor.listenTCP(first, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(squatter.stopListening)
        agent.start()
        self.addCleanup(agent.stop, True)
        await until(lambda: agent.listening, "the agent to come up on another port", 20)
        self.assertNotEqual(agent.port, first)
        result = await SUTClient(reactor, SUTTimings(connect=2, idle=2, verify=3), address_for=lambda fqdn: ("127.0.0.1", agent.port)).verify("d")
        self.assertTrue(result, result)

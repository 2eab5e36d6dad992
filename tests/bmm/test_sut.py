"""SUTAgent client in memory: StringTransport for the wire, task.Clock for every bound."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mozpool.bmm.sut import (
    SDCARD_MD5,
    ISUTAgent,
    SUTClient,
    SUTClientProtocol,
    SUTResult,
    SUTTimings,
    check_path,
    default_address,
)

PROMPT = b"$>\x00"


class FakeEndpoint:
    """Connects at once over a StringTransport, refuses, or never answers (cancellable)."""

    def __init__(self, test: "SUTTestMixin", mode: str) -> None:
        self.test = test
        self.mode = mode
        self.cancelled = False

    def connect(self, factory: Factory) -> Deferred[Any]:
        if self.mode == "refuse":
            return defer.fail(ConnectionRefusedError())
        if self.mode == "dns":
            return defer.fail(DNSLookupError("nonexistent.invalid"))
        if self.mode == "pending":

            def cancel(d: Deferred[Any]) -> None:
                self.cancelled = True

            return Deferred(cancel)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.test.proto = proto
        self.test.transport = transport
        return defer.succeed(proto)


class SUTTestMixin(SynchronousTestCase):
    mode = "connect"

    def setUp(self) -> None:
        self.clock = Clock()
        self.proto: SUTClientProtocol | None = None
        self.transport: StringTransport | None = None
        self.addresses: list[tuple[str, int, float]] = []
        self.endpoints: list[FakeEndpoint] = []

        def endpoint_factory(host: str, port: int, timeout: float) -> FakeEndpoint:
            self.addresses.append((host, port, timeout))
            ep = FakeEndpoint(self, self.mode)
            self.endpoints.append(ep)
            return ep

        self.client = SUTClient(self.clock, endpoint_factory=endpoint_factory)  # type: ignore[arg-type]
        self.logLines: list[str] = []

    def feed(self, data: bytes) -> None:
        assert self.proto is not None
        self.proto.dataReceived(data)

    def sent(self) -> bytes:
        assert self.transport is not None
        value = self.transport.value()
        self.transport.clear()
        return value

    def converse(self, script: list[tuple[bytes, bytes]]) -> None:
        """Each step: assert the client sent exactly LINE, then answer with BODY + prompt."""
        for line, body in script:
            self.assertEqual(self.sent(), line)
            self.feed((body + b"\n" if body else b"") + PROMPT)

    def result(self, d: Deferred[SUTResult]) -> SUTResult:
        r = self.successResultOf(d)
        self.assertIsInstance(r, SUTResult)
        return r

    def deviceRootScript(self, isdir: bytes = b"TRUE") -> list[tuple[bytes, bytes]]:
        script = [(b"testroot\r\n", b"/mnt/sdcard"), (b"isdir /mnt/sdcard/tests\r\n", isdir)]
        if isdir != b"TRUE":
            script.append((b"mkdr /mnt/sdcard/tests\r\n", b"/mnt/sdcard/tests successfully created"))
        script.append((b"ver\r\n", b"SUTAgentAndroid Version 1.16"))
        return script


class VerifyTests(SUTTestMixin):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ISUTAgent, self.client))

    def test_success(self) -> None:
        d = self.client.verify("panda-0001.example.com", self.logLines.append)
        self.assertEqual(self.addresses[0][:2], ("panda-0001.example.com", 20701))
        self.assertEqual(self.logLines, ["connecting to SUT agent"])
        self.assertNoResult(d)
        self.assertEqual(self.sent(), b"", "nothing may be sent before the prompt")
        self.feed(PROMPT)
        self.converse(self.deviceRootScript())
        r = self.result(d)
        self.assertTrue(r.ok, r.reason)
        self.assertTrue(r)
        self.assertEqual(self.sent(), b"quit\r\n")
        assert self.transport is not None
        self.assertTrue(self.transport.disconnecting)
        # The agent's quit echo after we closed is not an error, and no timer is left behind.
        self.feed(b"quit\n" + PROMPT)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_creates_tests_directory(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.converse(self.deviceRootScript(isdir=b"FALSE"))
        self.assertTrue(self.result(d).ok)

    def test_missing_path_as_ls_text(self) -> None:
        """1.16 answers isdir of a missing path with ls's text: 'not a directory', so mkdr."""
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.converse(self.deviceRootScript(isdir=b"/mnt/sdcard/tests: No such file or directory"))
        self.assertTrue(self.result(d).ok)

    def test_empty_testroot(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.converse([(b"testroot\r\n", b"")])
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("invalid device root", r.reason)
        assert self.transport is not None
        self.assertTrue(self.transport.disconnected, "failure aborts the connection")

    def test_testroot_with_space(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.converse([(b"testroot\r\n", b"/mnt/sd card")])
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("invalid device root", r.reason)

    def test_empty_isdir(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.converse([(b"testroot\r\n", b"/data/local"), (b"isdir /data/local/tests\r\n", b"")])
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("isdir returned nothing", r.reason)

    def test_bad_ver(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        script = self.deviceRootScript()
        script[-1] = (b"ver\r\n", b"SUTAgentAndroid 1.16")
        self.converse(script)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("ver", r.reason)

    def test_warning_on_mkdr(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.converse(
            [
                (b"testroot\r\n", b"/mnt/sdcard"),
                (b"isdir /mnt/sdcard/tests\r\n", b"FALSE"),
                (b"mkdr /mnt/sdcard/tests\r\n", b"##AGENT-WARNING## Could not create the directory /mnt/sdcard/tests"),
            ]
        )
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertEqual(r.reason, "agent warning: Could not create the directory /mnt/sdcard/tests")

    def test_refused(self) -> None:
        self.mode = "refuse"
        r = self.result(self.client.verify("d"))
        self.assertFalse(r.ok)
        self.assertEqual(r.reason, "connection refused")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dns_failure(self) -> None:
        self.mode = "dns"
        r = self.result(self.client.verify("nonexistent.invalid"))
        self.assertFalse(r.ok)
        self.assertIn("DNS lookup failed", r.reason)

    def test_connect_never_completes(self) -> None:
        self.mode = "pending"
        d = self.client.verify("d")
        self.clock.advance(14.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("no connection within 15 s", r.reason)
        self.assertTrue(self.endpoints[0].cancelled)

    def test_no_prompt(self) -> None:
        d = self.client.verify("d")
        self.feed(b"garbage without prompt")
        self.clock.advance(14.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("15 s", r.reason)
        assert self.transport is not None
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_prompt_is_waited_for_across_segments_and_garbage_discarded(self) -> None:
        d = self.client.verify("d")
        self.feed(b"junk$")
        self.feed(b">")
        self.assertEqual(self.sent(), b"")
        self.feed(b"\x00")
        self.assertEqual(self.sent(), b"testroot\r\n")
        self.feed(b"/mnt/sdcard\r\n$>")
        self.assertEqual(self.sent(), b"", "no command before the whole prompt")
        self.feed(b"\x00")
        self.assertEqual(self.sent(), b"isdir /mnt/sdcard/tests\r\n")
        self.feed(b"TRUE\n" + PROMPT)
        self.converse([(b"ver\r\n", b"SUTAgentAndroid Version 1.16")])
        self.assertTrue(self.result(d).ok)

    def test_closed_before_prompt(self) -> None:
        d = self.client.verify("d")
        assert self.proto is not None
        self.proto.connectionLost(Failure(Exception("reset")))
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("closed by agent", r.reason)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed_mid_command(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.feed(b"/mnt/sd")
        assert self.proto is not None
        self.proto.connectionLost(Failure(Exception("reset")))
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("'testroot'", r.reason)

    def test_bytes_after_prompt(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.assertEqual(self.sent(), b"testroot\r\n")
        self.feed(b"/mnt/sdcard\n" + PROMPT + b"xx")
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("bytes after prompt", r.reason)
        assert self.transport is not None
        self.assertTrue(self.transport.disconnected)

    def test_bytes_after_initial_prompt(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT + b"extra")
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("bytes after prompt", r.reason)
        self.assertEqual(self.sent(), b"")

    def test_idle_timeout(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.clock.advance(14.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("no data from agent for 15 s", r.reason)
        self.assertIn("testroot", r.reason)
        assert self.transport is not None
        self.assertTrue(self.transport.disconnected)

    def test_idle_timer_restarts_on_data(self) -> None:
        d = self.client.verify("d")
        self.feed(PROMPT)
        self.sent()
        self.clock.advance(14)
        self.feed(b"/mnt/")
        self.clock.advance(14)
        self.feed(b"sdcard\n")
        self.clock.advance(1)
        self.assertNoResult(d)
        self.feed(PROMPT)
        self.assertEqual(self.sent(), b"isdir /mnt/sdcard/tests\r\n")

    def test_total_deadline_with_drip(self) -> None:
        """Data every 10 s keeps the idle timer alive; the 30 s total bound still ends it."""
        d = self.client.verify("d")
        self.feed(PROMPT)
        for _ in range(2):
            self.clock.advance(10)
            self.feed(b"/")
        self.assertNoResult(d)
        self.clock.advance(10)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertEqual(r.reason, "verify did not finish within 30 s")
        assert self.transport is not None
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_configurable_timings(self) -> None:
        self.client.timings = SUTTimings(connect=1, idle=1, verify=2, sdcard=3, reboot=4)
        d = self.client.verify("d")
        self.clock.advance(1)
        self.assertIn("1 s", self.result(d).reason)


class SDCardTests(SUTTestMixin):
    def sdcardScript(self, existing: bool) -> list[tuple[bytes, bytes]]:
        D = b"/mnt/sdcard/tests/sdcardtest"
        script = self.deviceRootScript()
        if existing:
            script += [
                (b"isdir " + D + b"\r\n", b"TRUE"),
                (b"rmdr " + D + b"\r\n", b"Deleting file(s) from " + D + b"\nsdcard_check\nDeleting directory " + D),
            ]
        else:
            script += [(b"isdir " + D + b"\r\n", b"FALSE")]
        script += [
            (b"isdir " + D + b"\r\n", b"FALSE"),
            (b"mkdr " + D + b"\r\n", D + b" successfully created"),
            (b"isdir " + D + b"\r\n", b"TRUE"),
            (b"push " + D + b"/sdcard_check 15\r\nautophone test\n", SDCARD_MD5.encode()),
            (b"isdir " + D + b"\r\n", b"TRUE"),
            (b"rmdr " + D + b"\r\n", b"Deleting file(s) from " + D + b"\nsdcard_check\nDeleting directory " + D),
        ]
        return script

    def test_success(self) -> None:
        d = self.client.check_sdcard("d", self.logLines.append)
        self.assertEqual(self.logLines, ["verifying SD card"])
        self.feed(PROMPT)
        self.converse(self.sdcardScript(existing=False))
        r = self.result(d)
        self.assertTrue(r.ok, r.reason)
        self.assertEqual(self.sent(), b"quit\r\n")

    def test_success_with_leftover_directory(self) -> None:
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        self.converse(self.sdcardScript(existing=True))
        self.assertTrue(self.result(d).ok)

    def test_md5_case_insensitive(self) -> None:
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        script = self.sdcardScript(existing=False)
        script[-3] = (script[-3][0], SDCARD_MD5.upper().encode())
        self.converse(script)
        self.assertTrue(self.result(d).ok)

    def test_bad_md5(self) -> None:
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        script = self.sdcardScript(existing=False)[:-2]
        script[-1] = (script[-1][0], b"0" * 32)
        self.converse(script)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertIn("md5 mismatch", r.reason)

    def test_push_failed(self) -> None:
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        script = self.sdcardScript(existing=False)[:-2]
        script[-1] = (script[-1][0], b"##AGENT-WARNING## Push failed!")
        self.converse(script)
        self.assertEqual(self.result(d).reason, "agent warning: Push failed!")

    def test_read_only_storage(self) -> None:
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        script = self.sdcardScript(existing=False)[:-3]
        script[-1] = (script[-1][0], b"FALSE")
        self.converse(script)
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertEqual(r.reason, "failed to create directory under device root")

    def test_total_deadline(self) -> None:
        """Each command answered just inside the idle bound; the 195 s total still ends it."""
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        script = self.sdcardScript(existing=False)
        elapsed = 0.0
        for line, body in script:
            self.assertEqual(self.sent(), line)
            self.clock.advance(14)
            elapsed += 14
            if elapsed >= 195:
                break
            self.feed(body + b"\n" + PROMPT)
        # 13 commands x 14 s would be 182 s < 195 s: the operation finishes in time.
        self.assertTrue(self.result(d).ok)

    def test_total_deadline_passes(self) -> None:
        d = self.client.check_sdcard("d")
        self.feed(PROMPT)
        for _ in range(19):
            self.clock.advance(10)
            self.feed(b"x")
        self.assertNoResult(d)
        self.clock.advance(5)
        r = self.result(d)
        self.assertEqual(r.reason, "sdcard check did not finish within 195 s")


class RebootTests(SUTTestMixin):
    def test_success(self) -> None:
        d = self.client.reboot("d", self.logLines.append)
        self.assertEqual(self.logLines, ["starting reboot"])
        self.feed(PROMPT)
        self.converse(self.deviceRootScript())
        r = self.result(d)
        self.assertTrue(r.ok, r.reason)
        self.assertEqual(self.sent(), b"rebt\r\n")
        assert self.transport is not None
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_before_rebt(self) -> None:
        d = self.client.reboot("d")
        self.feed(PROMPT)
        script = self.deviceRootScript()
        self.converse(script[:-1])
        assert self.proto is not None
        self.proto.connectionLost(Failure(Exception("reset")))
        r = self.result(d)
        self.assertFalse(r.ok)
        self.assertNotIn(b"rebt", self.sent())

    def test_total_deadline(self) -> None:
        d = self.client.reboot("d")
        self.feed(PROMPT)
        for _ in range(4):
            self.clock.advance(10)
            self.feed(b"x")
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.result(d).reason, "reboot did not finish within 45 s")


class ProtocolTests(SynchronousTestCase):
    def connected(self) -> tuple[SUTClientProtocol, StringTransport, Clock]:
        clock = Clock()
        proto = SUTClientProtocol(clock, 15)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(PROMPT)
        self.successResultOf(proto.when_prompted())
        return proto, transport, clock

    def test_push_is_one_write(self) -> None:
        proto, transport, _ = self.connected()
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        proto.command("push /a/b 3", b"xyz")
        self.assertEqual(writes, [b"push /a/b 3\r\nxyz"])

    def test_no_pipelining(self) -> None:
        proto, _, _ = self.connected()
        proto.command("ver")
        self.assertRaises(Exception, proto.command, "ver")

    def test_body_stripped(self) -> None:
        proto, _, _ = self.connected()
        d = proto.command("rmdr /x")
        proto.dataReceived(b"Deleting file(s) from /x\r\nf\r\nDeleting directory /x\r\n" + PROMPT)
        self.assertEqual(self.successResultOf(d), "Deleting file(s) from /x\r\nf\r\nDeleting directory /x")

    def test_empty_body(self) -> None:
        proto, _, _ = self.connected()
        d = proto.command("mkdr /x")
        proto.dataReceived(PROMPT)
        self.assertEqual(self.successResultOf(d), "")

    def test_unsolicited_bytes(self) -> None:
        proto, transport, _ = self.connected()
        proto.dataReceived(b"hello")
        self.assertTrue(transport.disconnected)
        self.failureResultOf(proto.command("ver"))


class HelperTests(SynchronousTestCase):
    def test_check_path(self) -> None:
        self.assertEqual(check_path("/mnt/sdcard/tests"), "/mnt/sdcard/tests")
        for bad in ["/a b", "/a\tb", '/a"b', "/a'b", ""]:
            self.assertRaises(Exception, check_path, bad)

    def test_default_address(self) -> None:
        self.assertEqual(default_address("panda-1.example.com"), ("panda-1.example.com", 20701))
        self.assertEqual(default_address("localhost:30001"), ("localhost", 30001))
        self.assertEqual(default_address("[::1]:30001"), ("::1", 30001))

    def test_result_truthiness(self) -> None:
        self.assertTrue(SUTResult(True))
        self.assertFalse(SUTResult(False, "x"))

    def test_address_hook(self) -> None:
        clock = Clock()
        seen: list[tuple[str, int, float]] = []

        def factory(host: str, port: int, timeout: float) -> Any:
            seen.append((host, port, timeout))
            return FakeEndpoint(None, "refuse")  # type: ignore[arg-type]

        client = SUTClient(clock, address_for=lambda fqdn: ("127.0.0.1", 40123), endpoint_factory=factory)
        self.assertFalse(self.successResultOf(client.verify("panda-0001")).ok)
        self.assertEqual(seen[0][:2], ("127.0.0.1", 40123))

    def test_bad_address(self) -> None:
        client = SUTClient(Clock(), endpoint_factory=lambda h, p, t: FakeEndpoint(None, "refuse"))  # type: ignore
        r = self.successResultOf(client.verify("host:notaport"))
        self.assertFalse(r.ok)
        self.assertIn("agent address", r.reason)


class UnexpectedErrorTests(SynchronousTestCase):
    def test_bug_is_logged_with_traceback(self) -> None:
        """A programming error still ends in a SUTResult, and its traceback is logged."""

        def factory(host: str, port: int, timeout: float) -> Any:
            raise ZeroDivisionError("bug")

        client = SUTClient(Clock(), endpoint_factory=factory)
        r = self.successResultOf(client.verify("d"))
        self.assertFalse(r.ok)
        self.assertIn("internal error", r.reason)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

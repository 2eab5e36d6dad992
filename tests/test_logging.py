"""Log hygiene (level, repeats), RFC 5424 formatting, and the syslog transports on loopback."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from twisted.internet import protocol, reactor, task
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.logconfig import REPEATS_PER_WINDOW, WINDOW_SECONDS, Hygiene, json_observer, level_named
from mozpool.syslog import SyslogObserver, format_5424, parse_target
from tests.support.polling import until


def event(text: str, level: LogLevel = LogLevel.info, when: float = 1000.0, **fields: Any) -> dict[str, Any]:
    return {"log_format": text, "log_level": level, "log_time": when, "log_namespace": "mozpool.test", **fields}


class HygieneTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out: list[dict[str, Any]] = []
        self.hygiene = Hygiene(self.out.append, limit_repeats=True)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.out]

    def test_debug_is_off_by_default(self) -> None:
        self.hygiene(event("chatty", LogLevel.debug))
        self.hygiene(event("useful"))
        self.assertEqual(self.texts(), ["useful"])
        self.hygiene.level = level_named("debug")
        self.hygiene(event("chatty", LogLevel.debug))
        self.assertEqual(self.texts()[-1], "chatty")

    def test_repeats_are_counted_and_reported(self) -> None:
        for i in range(2400):
            self.hygiene(event("{kind} timeout tick still running; skipping one", LogLevel.warn,
                               when=1000 + i * 0.02, kind="device"))
        self.assertEqual(len(self.out), REPEATS_PER_WINDOW)
        self.hygiene(event("something else"))
        self.hygiene(event("{kind} timeout tick still running; skipping one", LogLevel.warn,
                           when=1000 + WINDOW_SECONDS + 1, kind="device"))
        summary = self.texts()[-2]
        self.assertEqual(summary, f"(suppressed {2400 - REPEATS_PER_WINDOW} more of: device timeout tick still"
                                  " running; skipping one)")
        self.assertEqual(self.out[-2]["log_level"], LogLevel.warn)
        self.assertEqual(self.texts()[-1], "device timeout tick still running; skipping one")

    def test_different_subjects_are_different_messages(self) -> None:
        for i in range(10):
            self.hygiene(event("{device}: rebooting", device=f"panda-{i}"))
        self.assertEqual(len(self.out), 10)

    def test_same_text_from_other_values_is_the_same_message(self) -> None:
        """Messages are told apart by their fields' values when those are plain, else by their
        text: a list field formatted alike is one message, and its summary reads as it did."""
        for i in range(REPEATS_PER_WINDOW + 2):
            self.hygiene(event("{device}: {ports}", device="panda-1", ports=[1, 2]))
            self.hygiene(event("{device[0]}: {n:03d}", device="panda-2", n=7, when=1000 + i))
        self.assertEqual(len(self.out), 2 * REPEATS_PER_WINDOW)
        n = REPEATS_PER_WINDOW + 2
        for i in range(n):  # a called field is its value (here one a call), not a missing "who()"
            self.hygiene(event("{who()} rebooted", who=lambda i=i: f"panda-{i}"))
        self.assertEqual(self.texts()[-n:], [f"panda-{i} rebooted" for i in range(n)])
        self.hygiene.flush(2000.0)
        self.assertEqual(sorted(self.texts()[-2:]), [
            "(suppressed 2 more of: p: 007)",
            "(suppressed 2 more of: panda-1: [1, 2])",
        ])

    def test_errors_and_failures_always_pass(self) -> None:
        for _ in range(20):
            self.hygiene(event("bad", LogLevel.error))
            self.hygiene(event("worse", LogLevel.warn, log_failure=Failure(ValueError("x"))))
        self.assertEqual(len(self.out), 40)

    def test_flush_reports_pending_counts(self) -> None:
        for _ in range(REPEATS_PER_WINDOW + 3):
            self.hygiene(event("again"))
        self.hygiene.flush(2000.0)
        self.assertEqual(self.texts()[-1], "(suppressed 3 more of: again)")

    def test_off_outside_a_daemon(self) -> None:
        hygiene = Hygiene(self.out.append)
        for _ in range(20):
            hygiene(event("again"))
        self.assertEqual(len(self.out), 20)

    def test_bad_level(self) -> None:
        self.assertRaises(ValueError, level_named, "loud")


class Format(SynchronousTestCase):
    def test_rfc5424(self) -> None:
        line = format_5424(
            event("{kind} {key}: {message}", kind="device", key="panda-0003", message='entering "ready"]\\x',
                  when=1364922311.25),
            facility=16, hostname="imaging1", procid=42,
        ).decode()
        self.assertEqual(
            line,
            '<134>1 2013-04-02T17:05:11.250Z imaging1 mozpool 42 test [mozpool@32473 device="panda-0003"] '
            'device panda-0003: entering "ready"]\\x',
        )
        self.assertIn('request="7"', format_5424(event("x", request=7), 16, "h", 1).decode())
        self.assertIn(" - x", format_5424(event("x"), 16, "h", 1).decode(), "no structured data: nil")
        self.assertTrue(format_5424(event("x", LogLevel.error), 3, "h", 1).startswith(b"<27>1 "))

    def test_sd_values_escaped_and_one_line(self) -> None:
        line = format_5424(event("a\nb", device='x"]\\'), 16, "h", 1).decode()
        self.assertIn('device="x\\"\\]\\\\"', line)
        self.assertNotIn("\n", line)

    def test_targets(self) -> None:
        self.assertEqual(parse_target("udp:127.0.0.1:514"), ("udp", ("127.0.0.1", 514)))
        self.assertEqual(parse_target("tcp:[::1]:6514"), ("tcp", ("::1", 6514)))
        self.assertEqual(parse_target("unix:/dev/log"), ("unix", "/dev/log"))
        for bad in ("udp:host", "tcp::514", "file:/x", "udp:h:99999", ""):
            self.assertRaises(ValueError, parse_target, bad)
        self.assertRaises(ValueError, SyslogObserver, reactor, "udp:127.0.0.1:514", facility="local9")


class _Collect(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.got.append(data)


class _Lines(protocol.Protocol):
    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def dataReceived(self, data: bytes) -> None:
        self.sink.append(data)


class Transports(TestCase):
    async def test_udp(self) -> None:
        collector = _Collect()
        port = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        observer = SyslogObserver(reactor, f"udp:127.0.0.1:{port.getHost().port}", "local3", hostname="h")
        observer.startService()
        self.addCleanup(observer.stopService)
        observer(event("hello {device}", device="panda-0001"))
        await until(lambda: collector.got, "a datagram")
        self.assertTrue(collector.got[0].startswith(b"<158>1 "))
        self.assertIn(b'[mozpool@32473 device="panda-0001"] hello panda-0001', collector.got[0])

    async def test_udp_with_nobody_listening_is_harmless(self) -> None:
        observer = SyslogObserver(reactor, "udp:127.0.0.1:9", hostname="h")
        observer.startService()
        self.addCleanup(observer.stopService)
        for _ in range(100):
            observer(event("into the void"))
        await task.deferLater(reactor, 0.05, lambda: None)

    async def test_unix_socket_survives_a_syslog_restart(self) -> None:
        """unix:PATH (/dev/log): lines arrive; a syslog daemon that starts late is reached when it
        comes; one that restarts (a new socket at PATH) gets the very next line, and one that is
        away for a while gets the lines written once it is back."""
        directory = tempfile.mkdtemp(prefix="mozpool-syslog-")  # short: socket paths are limited
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "log")
        observer = SyslogObserver(reactor, f"unix:{path}", "local3", hostname="h")
        observer.startService()
        self.addCleanup(observer.stopService)
        observer(event("before syslog started"))  # lost, as over UDP; connecting is tried again

        def listen() -> _Collect:
            collector = _Collect()
            port = reactor.listenUNIXDatagram(path, collector)
            self.addCleanup(port.stopListening)
            collector.port = port  # type: ignore[attr-defined]
            return collector

        def sent(collector: _Collect, text: str) -> bool:
            observer(event(text + " {device}", device="panda-0001"))
            return any(text.encode() in line for line in collector.got)

        first = listen()
        await until(lambda: sent(first, "late"), "a line once syslog started")
        self.assertTrue(first.got[-1].startswith(b"<158>1 "), first.got[-1])
        self.assertIn(b'[mozpool@32473 device="panda-0001"] late panda-0001', first.got[-1])

        async def restart(collector: _Collect) -> None:
            await collector.port.stopListening()  # type: ignore[attr-defined]
            os.unlink(path)

        await restart(first)
        second = listen()
        observer(event("right after a restart"))  # sent once more on a new connection: not lost
        await until(lambda: any(b"right after a restart" in line for line in second.got), "the next line")

        await restart(second)
        observer(event("while syslog is away"))
        third = listen()
        await until(lambda: sent(third, "back"), "a line after syslog came back")
        self.assertFalse([line for line in third.got if b"away" in line])

    async def test_tcp_keeps_a_backlog_until_the_server_comes(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        from tests.system.daemon import free_port

        port_number = free_port()
        observer = SyslogObserver(reactor, f"tcp:127.0.0.1:{port_number}", hostname="h")
        observer.startService()
        self.addCleanup(observer.stopService)
        observer(event("before the server"))
        received: list[bytes] = []
        listening = await TCP4ServerEndpoint(reactor, port_number, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(lambda: _Lines(received)))
        self.addCleanup(listening.stopListening)
        await until(lambda: b"before the server" in b"".join(received), "the backlog")
        observer(event("after"))
        await until(lambda: b"after" in b"".join(received), "a live message")
        first = b"".join(received)
        length, _, rest = first.partition(b" ")
        self.assertTrue(rest.startswith(b"<"))
        self.assertTrue(rest[: int(length)].endswith(b"before the server"), "octet counting (RFC 6587)")
        self.assertTrue(rest[int(length):].lstrip(b"0123456789 ").startswith(b"<134>1 "))
        # drop the connection server-side: the observer reconnects and carries on
        self.flushLoggedErrors()


class JSONFile(SynchronousTestCase):
    def test_one_object_a_line(self) -> None:
        path = self.mktemp()
        observer = json_observer(path)
        observer(event("hello {who}", who="world"))
        observer.close()
        with open(path) as f:
            lines = f.read().split("\x1e")
        objects = [json.loads(x) for x in lines if x.strip()]
        self.assertEqual(objects[0]["who"], "world")
        self.assertTrue(os.path.getsize(path) > 0)




"""The pdudaemon driver against a recording fake of treq: the requests it makes, how pdudaemon's
answers become outcomes, deadlines on a Clock, one operation per PDU at a time."""

from __future__ import annotations

from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from zope.interface.verify import verifyObject

from mozpool.bmm.interfaces import DriverContext, IPowerControl, PowerConfigError, PowerResult
from mozpool.bmm.pdudaemon import (
    DRIVER,
    PdudaemonClient,
    PdudaemonTiming,
    PduPort,
    parse_controller,
    parse_location,
)

SERVER = "http://pdud.example.com:16421"
PLUG = "pdudaemon://pdud.example.com/plug-1/3"


class Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    def content(self) -> "Deferred[bytes]":
        return succeed(self.body)


class RecordingHTTP:
    """treq's ``get``: records each URL; each call's answer is given by the test later
    (``answer``/``fail``), or at once from ``auto``."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.pending: list[Deferred[Any]] = []
        self.cancelled = 0
        self.auto: tuple[int, bytes] | None = None

    def get(self, url: str, **kw: Any) -> "Deferred[Any]":
        self.urls.append(url)
        if self.auto is not None:
            return succeed(Response(*self.auto))

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append(d)
        return d

    def answer(self, code: int = 200, body: bytes = b"OK - accepted request\n") -> None:
        self.pending.pop(0).callback(Response(code, body))

    def fail(self, exc: Exception) -> None:
        self.pending.pop(0).errback(exc)


class Parsing(SynchronousTestCase):
    def test_location(self) -> None:
        where = parse_location("pdudaemon://PDUD.example.com:16500/pdu-3.lab/5")
        self.assertEqual(where, PduPort("pdud.example.com", 16500, "pdu-3.lab", "5"))
        self.assertEqual(where.controller, "pdudaemon://pdud.example.com:16500/pdu-3.lab")
        self.assertEqual(where.outlet, "5")
        self.assertEqual(str(where), "pdudaemon://pdud.example.com:16500/pdu-3.lab/5")

    def test_defaults_and_escapes(self) -> None:
        where = parse_location("pdudaemon://pdud/127.0.0.1:20901/relay%201")
        self.assertEqual((where.port, where.pdu, where.outlet), (16421, "127.0.0.1:20901", "relay 1"))
        self.assertEqual(str(where), "pdudaemon://pdud:16421/127.0.0.1:20901/relay%201")
        self.assertEqual(parse_location("pdudaemon://[::1]:9/p/1").server, "[::1]:9")

    def test_bad(self) -> None:
        for bad in (None, "", "pdudaemon://host/pdu", "pdudaemon://host/pdu/1/2", "pdudaemon:///pdu/1",
                    "pdudaemon://host:x/pdu/1", "proxr://host/1/1", "pdudaemon://host//1"):
            self.assertRaises(PowerConfigError, parse_location, bad)

    def test_controller(self) -> None:
        self.assertEqual(parse_controller("pdudaemon://pdud/plug-1").pdu, "plug-1")
        self.assertRaises(PowerConfigError, parse_controller, PLUG)

    def test_driver_row(self) -> None:
        self.assertEqual(DRIVER.scheme, "pdudaemon")
        self.assertIsInstance(DRIVER.parse(PLUG), PduPort)
        client = DRIVER.make(DriverContext(Clock(), RecordingHTTP(), simulated=True, time_scale=0.01))
        self.assertEqual(client.timing.cycle_delay, 0)
        client = DRIVER.make(DriverContext(Clock(), RecordingHTTP(), simulated=False, time_scale=0.01))
        self.assertEqual(client.timing.cycle_delay, 1)


class Client(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.http = RecordingHTTP()
        self.client = PdudaemonClient(self.clock, self.http, PdudaemonTiming(deadline=30, test_deadline=10))

    def result(self, d: Deferred[PowerResult]) -> PowerResult:
        result = self.successResultOf(d)
        self.assertIsInstance(result, PowerResult)
        return result

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IPowerControl, self.client))

    def test_requests(self) -> None:
        """Exactly pdudaemon's listener paths and query names; a cycle is its reboot, with the
        pause in whole seconds."""
        self.http.auto = (200, b"OK - accepted request\n")
        for op in (self.client.power_on, self.client.power_off, self.client.power_cycle):
            result = self.result(op(PLUG))
            self.assertEqual((result.ok, result.note, result.status), (True, "no read-back", None))
        self.assertEqual(self.http.urls, [
            f"{SERVER}/power/control/on?hostname=plug-1&port=3",
            f"{SERVER}/power/control/off?hostname=plug-1&port=3",
            f"{SERVER}/power/control/reboot?hostname=plug-1&port=3&delay=1",
        ])

    def test_names_are_encoded(self) -> None:
        self.http.auto = (200, b"OK - accepted request\n")
        self.result(self.client.power_on("pdudaemon://pdud.example.com/127.0.0.1:20901/a%26b"))
        self.assertEqual(self.http.urls, [f"{SERVER}/power/control/on?hostname=127.0.0.1%3A20901&port=a%26b"])

    def test_refused_answer(self) -> None:
        """pdudaemon's 500 'Invalid request' (unknown PDU, or its driver failed every retry)."""
        d = self.client.power_cycle(PLUG)
        self.http.answer(500, b"Invalid request\n")
        result = self.result(d)
        self.assertFalse(result.ok)
        self.assertIn("pdudaemon at pdud.example.com:16421 could not reboot PDU plug-1 port 3: HTTP 500"
                      " 'Invalid request'", result.reason)
        self.assertIn("does not know that PDU or port", result.reason)

    def test_other_answer(self) -> None:
        d = self.client.power_on(PLUG)
        self.http.answer(404, b"404: Not Found")
        self.assertIn("HTTP 404 '404: Not Found'", self.result(d).reason)

    def test_connection_refused(self) -> None:
        d = self.client.power_off(PLUG)
        self.http.fail(neterror.ConnectionRefusedError())
        self.assertEqual(self.result(d), PowerResult(False, "connection refused by pdudaemon at pdud.example.com:16421"))

    def test_dropped_connection(self) -> None:
        d = self.client.power_off(PLUG)
        self.http.fail(ResponseNeverReceived([Failure(neterror.ConnectionLost())]))
        self.assertIn("closed the connection without a complete answer", self.result(d).reason)

    def test_hung_pdudaemon_fails_at_the_deadline(self) -> None:
        d = self.client.power_cycle(PLUG)
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        result = self.result(d)
        self.assertFalse(result.ok)
        self.assertIn("timeout communicating with pdudaemon at pdud.example.com:16421 after 30.0s", result.reason)
        self.assertEqual(self.http.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_operation_per_pdu(self) -> None:
        """The second waits for the first; another PDU does not; a deadline counts queue time and
        a queued operation past it never reaches pdudaemon."""
        first = self.client.power_cycle(PLUG)
        second = self.client.power_off("pdudaemon://pdud.example.com/plug-1/4", deadline=5)
        other = self.client.power_on("pdudaemon://pdud.example.com/plug-2/1")
        self.assertEqual(len(self.http.urls), 2)
        self.assertIn("plug-2", self.http.urls[1])
        self.clock.advance(5)
        result = self.result(second)
        self.assertIn("after 5.0s (still queued behind other operations on PDU plug-1)", result.reason)
        third = self.client.power_on(PLUG)
        self.http.answer()  # the first
        self.assertTrue(self.result(first).ok)
        self.assertEqual(len(self.http.urls), 3)
        self.assertIn("/on?hostname=plug-1&port=3", self.http.urls[2])
        self.http.answer()  # plug-2
        self.http.answer()  # the third
        self.assertTrue(self.result(other).ok and self.result(third).ok)
        self.successResultOf(self.client.drained())

    def test_cancelled_by_its_caller(self) -> None:
        d = self.client.power_on(PLUG)
        d.cancel()
        self.assertEqual(self.result(d), PowerResult(False, "cancelled"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_read_back(self) -> None:
        result = self.result(self.client.get_status(PLUG))
        self.assertFalse(result.ok)
        self.assertTrue(result.reason.startswith("no read-back"))
        self.assertEqual(self.http.urls, [])

    def test_bad_location_fails_at_once(self) -> None:
        self.assertEqual(self.result(self.client.power_on(None)).reason, "no relay configured")
        self.assertIn("expected pdudaemon://", self.result(self.client.power_on("pdudaemon://h/p")).reason)
        self.assertEqual(self.http.urls, [])

    def test_controller_test(self) -> None:
        """A request without a port: pdudaemon refuses it at once, switching nothing."""
        d = self.client.test_controller("pdudaemon://pdud.example.com/plug-1")
        self.assertEqual(self.http.urls, [f"{SERVER}/power/control/on?hostname=plug-1"])
        self.http.answer(500, b"Invalid request\n")
        self.assertTrue(self.result(d).ok)
        d = self.client.test_controller("pdudaemon://pdud.example.com/plug-1")
        self.http.answer(200, b"<html>a web server</html>")
        self.assertIn("is it pdudaemon?", self.result(d).reason)
        d = self.client.test_controller("pdudaemon://pdud.example.com/plug-1")
        self.clock.advance(10)
        self.assertIn("timeout", self.result(d).reason)
        self.assertFalse(self.result(self.client.test_controller("pdudaemon://h/p/1")).ok)

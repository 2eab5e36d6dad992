"""The simulated boot loader's TFTP client: against our server over loopback UDP, and in memory
(a task.Clock and a recording datagram transport) for retransmission, bounds and TIDs."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.bmm.pxe import pxe_filename, set_pxe_config
from mozpool.bmm.tftp import TFTPServer
from mozpool.bmm.tftp.packets import (
    encode_data,
    encode_error,
    encode_oack,
    parse_ack,
    parse_error,
    parse_request,
)
from mozpool.fakes.tftpclient import TFTPError, TFTPNotFound, TFTPTimeout, fetch

SERVER = ("127.0.0.1", 6969)
TID = ("127.0.0.1", 50001)


class AgainstOurServer(TestCase):
    """Real datagrams on 127.0.0.1 to mozpool.bmm.tftp's server."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.server = TFTPServer(self.root, reactor, interface="127.0.0.1")
        self.port = reactor.listenUDP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.address = self.port.getHost().port

    async def test_fetch_pxe_config(self) -> None:
        mac = "02010000000a"
        set_pxe_config(self.root, mac, "append mobile-imaging-url=http://%IPADDRESS%/scripts/x.sh\n", "127.0.0.1")
        data = await fetch(reactor, "127.0.0.1", self.address, "pxelinux.cfg/" + pxe_filename(mac), deadline=5)
        self.assertEqual(data, b"append mobile-imaging-url=http://127.0.0.1/scripts/x.sh\n")

    async def test_multi_block_file(self) -> None:
        payload = os.urandom(512 * 3 + 100)
        with open(os.path.join(self.root, "kernel"), "wb") as f:
            f.write(payload)
        self.assertEqual(await fetch(reactor, "127.0.0.1", self.address, "kernel", deadline=5), payload)

    async def test_exact_multiple_of_block_size(self) -> None:
        payload = b"x" * 1024
        with open(os.path.join(self.root, "even"), "wb") as f:
            f.write(payload)
        self.assertEqual(await fetch(reactor, "127.0.0.1", self.address, "even", deadline=5), payload)

    async def test_blksize_option(self) -> None:
        payload = os.urandom(5000)
        with open(os.path.join(self.root, "big"), "wb") as f:
            f.write(payload)
        data = await fetch(reactor, "127.0.0.1", self.address, "big", blksize=1468, deadline=5)
        self.assertEqual(data, payload)

    async def test_not_found(self) -> None:
        with self.assertRaises(TFTPNotFound) as caught:
            await fetch(reactor, "127.0.0.1", self.address, "pxelinux.cfg/01-02-00-00-00-00-99", deadline=5)
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(self.server.sessions, {})

    async def test_access_violation(self) -> None:
        with self.assertRaises(TFTPError) as caught:
            await fetch(reactor, "127.0.0.1", self.address, "../etc/passwd", deadline=5)
        self.assertEqual(caught.exception.code, 2)
        self.assertNotIsInstance(caught.exception, TFTPNotFound)


class FakePort:
    def __init__(self, protocol: DatagramProtocol) -> None:
        self.protocol = protocol
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def stopListening(self) -> None:
        self.closed = True

    def getHost(self) -> Any:
        return None


class UDPClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192) -> FakePort:
        fake = FakePort(protocol)
        protocol.makeConnection(fake)  # type: ignore[arg-type]
        self.ports.append(fake)
        return fake


class InMemory(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = UDPClock()

    def start(self, **kw: Any) -> Any:
        kw.setdefault("deadline", 30)
        d = fetch(self.clock, *SERVER, "pxelinux.cfg/x", **kw)
        self.port = self.clock.ports[-1]
        return d

    def receive(self, packet: bytes, addr: Any = TID) -> None:
        self.port.protocol.datagramReceived(packet, addr)

    def test_lock_step(self) -> None:
        d = self.start()
        request = parse_request(self.port.sent[0][0])
        self.assertEqual((request.filename, request.mode, request.options), (b"pxelinux.cfg/x", "octet", {}))
        self.assertEqual(self.port.sent[0][1], SERVER)
        self.receive(encode_data(1, b"a" * 512))
        self.assertEqual(parse_ack(self.port.sent[-1][0]), 1)
        self.assertEqual(self.port.sent[-1][1], TID, "answers go to the transfer's own port")
        self.receive(encode_data(2, b"bc"))
        self.assertEqual(parse_ack(self.port.sent[-1][0]), 2)
        self.assertEqual(self.successResultOf(d), b"a" * 512 + b"bc")
        self.assertTrue(self.port.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_duplicate_data_is_acked_again_not_appended(self) -> None:
        d = self.start()
        self.receive(encode_data(1, b"a" * 512))
        self.receive(encode_data(1, b"a" * 512))
        self.assertEqual([parse_ack(p) for p, _ in self.port.sent[1:]], [1, 1])
        self.receive(encode_data(2, b""))
        self.assertEqual(self.successResultOf(d), b"a" * 512)

    def test_foreign_tid_gets_error_5(self) -> None:
        d = self.start()
        self.receive(encode_data(1, b"a" * 512))
        self.receive(encode_data(2, b"evil"), ("127.0.0.1", 50002))
        self.assertEqual(parse_error(self.port.sent[-1][0])[0], 5)
        self.assertEqual(self.port.sent[-1][1], ("127.0.0.1", 50002))
        self.assertNoResult(d)
        self.receive(encode_data(2, b"ok"))
        self.assertEqual(self.successResultOf(d), b"a" * 512 + b"ok")

    def test_retransmits_then_times_out(self) -> None:
        d = self.start(timeout=1.0, retries=3)
        self.clock.advance(1)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.port.sent), 4, "the RRQ and three retransmissions")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, TFTPTimeout)
        self.assertTrue(self.port.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_ack_is_resent(self) -> None:
        d = self.start(timeout=1.0, retries=3)
        self.receive(encode_data(1, b"a" * 512))
        self.clock.advance(1)
        self.assertEqual(parse_ack(self.port.sent[-1][0]), 1)
        self.assertEqual(self.port.sent[-1][1], TID)
        self.receive(encode_data(2, b"z"))
        self.assertEqual(self.successResultOf(d), b"a" * 512 + b"z")

    def test_total_deadline(self) -> None:
        d = self.start(timeout=1.0, retries=5, deadline=3.5)
        for block in range(1, 4):  # a server that trickles: never silent, never done
            self.clock.advance(0.9)
            self.receive(encode_data(block, b"a" * 512))
        self.assertNoResult(d)
        self.clock.advance(0.9)
        self.failureResultOf(d, TFTPTimeout)
        self.assertTrue(self.port.closed)

    def test_error_from_server(self) -> None:
        d = self.start()
        self.receive(encode_error(1, "file not found"), SERVER)
        failure = self.failureResultOf(d, TFTPNotFound)
        self.assertEqual(failure.value.message, "file not found")
        self.assertTrue(self.port.closed)

    def test_oack(self) -> None:
        d = self.start(blksize=8)
        self.assertEqual(parse_request(self.port.sent[0][0]).options, {"blksize": "8"})
        self.receive(encode_oack({"blksize": "8"}))
        self.assertEqual(parse_ack(self.port.sent[-1][0]), 0)
        self.receive(encode_data(1, b"12345678"))
        self.receive(encode_data(2, b"9"))
        self.assertEqual(self.successResultOf(d), b"123456789")

    def test_oversized_file_refused(self) -> None:
        d = self.start(max_size=1000)
        self.receive(encode_data(1, b"a" * 512))
        self.receive(encode_data(2, b"a" * 512))
        self.failureResultOf(d, TFTPError)
        self.assertTrue(self.port.closed)

    def test_cancel_closes(self) -> None:
        d = self.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.port.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

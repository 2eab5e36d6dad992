"""Unit tests for the TFTP server: the protocol driven in memory with a fake datagram reactor."""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

from twisted.application.internet import UDPServer
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mozpool.bmm.tftp import TFTPServer, make_tftp_service
from mozpool.bmm.tftp import packets as P
from mozpool.bmm.tftp.netascii import NetasciiSource, from_netascii, to_netascii
from mozpool.bmm.tftp.paths import PathRefused, resolve

from .tftp_workers import InMemoryWorkerPool

CLIENT = ("127.0.0.1", 40000)
STRANGER = ("127.0.0.1", 40001)


class FakeDatagramPort:
    """A UDP port that records what its protocol writes; no socket, so the transfer uses write()."""

    def __init__(self, reactor: FakeUDPReactor, port: int, protocol: DatagramProtocol, interface: str) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, Any]] = []
        self.closed = False

    def write(self, datagram: bytes, addr: Any) -> None:
        assert not self.closed, "write on a closed port"
        self.written.append((bytes(datagram), addr))  # the kernel copies a datagram at the send

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.doStop()

    def take(self) -> list[tuple[bytes, Any]]:
        out, self.written = self.written, []
        return out


class FakeSocket:
    """Stands in for the port's socket: the transfer's fast path sends on it directly."""

    def __init__(self, refuseSegmentation: int | None = None) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.segmented: list[tuple[bytes, list[Any]]] = []
        self.refuse = refuseSegmentation

    def sendto(self, datagram: bytes, addr: Any) -> int:
        self.sent.append((bytes(datagram), addr))
        return len(datagram)

    def sendmsg(self, buffers: list[bytes], ancdata: list[Any], flags: int, addr: Any) -> int:
        if self.refuse is not None:
            raise OSError(self.refuse, os.strerror(self.refuse))
        data = b"".join(buffers)
        self.segmented.append((data, ancdata))
        return len(data)


class FakeUDPReactor(Clock):
    """task.Clock plus listenUDP handing out FakeDatagramPorts with increasing port numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeDatagramPort] = []
        self._nextPort = 50000

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192) -> FakeDatagramPort:
        if port == 0:
            port = self._nextPort
            self._nextPort += 1
        p = FakeDatagramPort(self, port, protocol, interface)
        self.ports.append(p)
        protocol.makeConnection(p)  # type: ignore[arg-type]
        return p


class TFTPTestMixin:
    #: 0: transfers run in the server's process; N: handed over to N (in-memory) workers
    workers = 0

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())  # type: ignore[attr-defined]
        self.root.makedirs()
        self.reactor = FakeUDPReactor()
        self.pool: InMemoryWorkerPool | None = None
        options: dict[str, Any] = {}
        if self.workers:
            self.pool = InMemoryWorkerPool(self.reactor, self.workers, interface="127.0.0.1")
            self.pool.startService()
            options = {"handover": self.pool, "handover_min_bytes": 0}
        self.server = TFTPServer(self.root, self.reactor, **options)
        self.main = self.reactor.listenUDP(69, self.server, interface="127.0.0.1")
        if self.pool is not None:
            self.addCleanup(self.pool.stopService)  # type: ignore[attr-defined]
            self.assertEqual(len(self.pool.sides), self.workers)  # type: ignore[attr-defined]

    def write(self, name: str, content: bytes) -> bytes:
        fp = self.root.preauthChild(name)
        fp.parent().makedirs(ignoreExistingDirectory=True)
        fp.setContent(content)
        return content

    def rrq(self, name: bytes | str, mode: str = "octet", options: dict[str, str] | None = None,
            addr: tuple[str, int] = CLIENT) -> FakeDatagramPort | None:
        """Send an RRQ; return the new transfer port, or None when none was opened."""
        if isinstance(name, str):
            name = name.encode()
        before = len(self.reactor.ports)
        self.server.datagramReceived(P.encode_request(name, mode, options), addr)
        if len(self.reactor.ports) == before:
            return None
        return self.reactor.ports[-1]

    def mainError(self) -> tuple[int, str]:
        """The single ERROR the main socket sent."""
        sent = self.main.take()
        assert len(sent) == 1, sent  # noqa: S101
        assert sent[0][1] == CLIENT  # noqa: S101
        return P.parse_error(sent[0][0])

    def ack(self, port: FakeDatagramPort, block: int, addr: tuple[str, int] = CLIENT) -> None:
        port.protocol.datagramReceived(P.encode_ack(block), addr)

    def blocks(self, port: FakeDatagramPort) -> list[tuple[int, bytes]]:
        return [P.parse_data(d) for d, a in port.take()]

    def download(self, port: FakeDatagramPort, windowsize: int = 1, oack: bool = False) -> bytes:
        """Acknowledge every window until the transfer ends; return the payload received."""
        if oack:
            self.ack(port, 0)
        out = []
        while not port.closed:
            sent = self.blocks(port)
            assert sent, "transfer stalled"  # noqa: S101
            out += [payload for _, payload in sent]
            self.ack(port, sent[-1][0])
        return b"".join(out)


class PacketTests(SynchronousTestCase):
    def test_parse_request_with_options(self) -> None:
        req = P.parse_request(P.encode_request(b"a/b", "OcTeT", {"BlkSize": "1024", "tsize": "0"}))
        self.assertEqual((req.opcode, req.filename, req.mode), (P.RRQ, b"a/b", "octet"))
        self.assertEqual(req.options, {"blksize": "1024", "tsize": "0"})

    def test_trailing_option_name_ignored(self) -> None:
        req = P.parse_request(b"\x00\x01f\x00octet\x00blksize\x00")
        self.assertEqual(req.options, {})

    def test_malformed(self) -> None:
        for bad in [b"\x00\x01", b"\x00\x01file", b"\x00\x01file\x00", b"\x00\x01\x00octet\x00",
                    b"\x00\x01file\x00octet", b"\x00\x03file\x00octet\x00"]:
            self.assertRaises(P.MalformedPacket, P.parse_request, bad)

    def test_round_trips(self) -> None:
        self.assertEqual(P.parse_data(P.encode_data(65537, b"xy")), (1, b"xy"))
        self.assertEqual(P.parse_ack(P.encode_ack(7)), 7)
        self.assertEqual(P.parse_error(P.encode_error(5, "who")), (5, "who"))
        self.assertEqual(P.parse_oack(P.encode_oack({"tsize": "9"})), {"tsize": "9"})


class NetasciiTests(SynchronousTestCase):
    def test_conversion(self) -> None:
        self.assertEqual(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n")
        self.assertEqual(from_netascii(to_netascii(b"a\nb\rc\r\n\0")), b"a\nb\rc\r\n\0")

    def test_state_across_blocks(self) -> None:
        """A conversion that grows past a block boundary carries its tail into the next block."""
        path = self.mktemp()
        content = b"\n" * 7 + b"x\r" * 5
        with open(path, "wb") as f:
            f.write(content)
        src = NetasciiSource(open(path, "rb"))
        self.addCleanup(src.close)
        blocks = []
        while True:
            b = src.read(4)
            blocks.append(b)
            if len(b) < 4:
                break
        self.assertTrue(all(len(b) == 4 for b in blocks[:-1]))
        self.assertEqual(b"".join(blocks), to_netascii(content))


class TransferTests(TFTPTestMixin, SynchronousTestCase):
    def test_plain_rrq(self) -> None:
        """No options: DATA 1 at once from a new port, full blocks then a short last one."""
        content = self.write("k", os.urandom(1000))
        port = self.rrq("k")
        assert port is not None
        self.assertEqual(port.port, 50000)
        self.assertEqual(port.interface, "127.0.0.1")
        self.assertEqual(self.main.take(), [])
        sent = port.take()
        self.assertEqual([a for _, a in sent], [CLIENT])
        self.assertEqual(P.parse_data(sent[0][0]), (1, content[:512]))
        self.ack(port, 1)
        self.assertEqual(self.blocks(port), [(2, content[512:])])
        self.assertFalse(port.closed)
        self.ack(port, 2)
        self.assertTrue(port.closed)
        self.assertEqual(self.server.sessions, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        done = port.protocol.done  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(done), "complete")

    def test_zero_length_tail(self) -> None:
        """A file of exactly two blocks ends with an empty DATA 3."""
        content = self.write("k", os.urandom(1024))
        port = self.rrq("k")
        assert port is not None
        self.assertEqual(self.blocks(port), [(1, content[:512])])
        self.ack(port, 1)
        self.assertEqual(self.blocks(port), [(2, content[512:])])
        self.ack(port, 2)
        self.assertEqual(self.blocks(port), [(3, b"")])
        self.assertFalse(port.closed)
        self.ack(port, 3)
        self.assertTrue(port.closed)

    def test_empty_file(self) -> None:
        self.write("empty", b"")
        port = self.rrq("empty")
        assert port is not None
        self.assertEqual(self.blocks(port), [(1, b"")])
        self.ack(port, 1)
        self.assertTrue(port.closed)

    def test_options(self) -> None:
        """Known valid options are acknowledged, unknown and invalid ones left out; DATA after ACK 0."""
        content = self.write("k", os.urandom(5000))
        port = self.rrq("k", options={"blksize": "1024", "tsize": "0", "timeout": "3",
                                      "windowsize": "4", "multicast": "", "foo": "1"})
        assert port is not None
        sent = port.take()
        self.assertEqual(len(sent), 1)
        self.assertEqual(P.parse_oack(sent[0][0]),
                         {"blksize": "1024", "tsize": "5000", "timeout": "3", "windowsize": "4"})
        self.ack(port, 3)  # not ACK 0: ignored
        self.assertEqual(port.take(), [])
        self.ack(port, 0)
        self.assertEqual(self.blocks(port), [(i, content[(i - 1) * 1024:i * 1024]) for i in (1, 2, 3, 4)])
        self.ack(port, 4)
        self.assertEqual(self.blocks(port), [(5, content[4096:])])
        self.ack(port, 5)
        self.assertTrue(port.closed)

    def test_option_limits(self) -> None:
        self.write("k", b"x")
        cases = [
            ({"blksize": "70000"}, {"blksize": "65464"}),
            ({"tsize": "enable"}, {"tsize": "1"}),
            ({"blksize": "7"}, None),
            ({"blksize": "8"}, {"blksize": "8"}),
            ({"blksize": "-512"}, None),
            ({"blksize": "abc"}, None),
            ({"timeout": "0"}, None),
            ({"timeout": "256"}, None),
            ({"timeout": "255"}, {"timeout": "255"}),
            ({"windowsize": "0"}, None),
            ({"windowsize": "65536"}, None),
            ({"windowsize": "1000"}, {"windowsize": "64"}),
        ]
        for i, (options, expected) in enumerate(cases):
            port = self.rrq("k", options=options, addr=("127.0.0.1", 1000 + i))
            assert port is not None
            first = port.take()[0][0]
            if expected is None:
                self.assertEqual(P.opcode_of(first), P.DATA, options)
            else:
                self.assertEqual(P.parse_oack(first), expected)
            port.protocol.abort()  # type: ignore[attr-defined]

    def test_max_blksize_configurable(self) -> None:
        self.server.max_blksize = 1468
        self.write("k", b"x")
        port = self.rrq("k", options={"blksize": "8192"})
        assert port is not None
        self.assertEqual(P.parse_oack(port.take()[0][0]), {"blksize": "1468"})

    def test_tsize_omitted_in_netascii(self) -> None:
        self.write("k", b"a\n")
        port = self.rrq("k", mode="netascii", options={"tsize": "0", "blksize": "512"})
        assert port is not None
        self.assertEqual(P.parse_oack(port.take()[0][0]), {"blksize": "512"})

    def test_only_tsize_omitted_means_no_oack(self) -> None:
        self.write("k", b"a\n")
        port = self.rrq("k", mode="netascii", options={"tsize": "0"})
        assert port is not None
        self.assertEqual(self.blocks(port), [(1, b"a\r\n")])

    def test_netascii(self) -> None:
        content = self.write("cfg", b"x" * 511 + b"\n" + b"bare\rcr\n" * 100)
        port = self.rrq("cfg", mode="NETASCII")
        assert port is not None
        got = self.download(port)
        self.assertEqual(got, to_netascii(content))
        self.assertEqual(from_netascii(got), content)

    def test_windowsize(self) -> None:
        """Up to W blocks in flight; an ACK at the window's end brings the next full window."""
        content = self.write("k", os.urandom(8 * 100 + 3))
        port = self.rrq("k", options={"blksize": "8", "windowsize": "4"})
        assert port is not None
        port.take()  # the OACK
        self.ack(port, 0)
        self.assertEqual([n for n, _ in self.blocks(port)], [1, 2, 3, 4])
        self.ack(port, 4)
        self.assertEqual([n for n, _ in self.blocks(port)], [5, 6, 7, 8])
        self.ack(port, 8)
        rest = []
        while not port.closed:
            sent = self.blocks(port)
            rest += sent
            self.ack(port, sent[-1][0])
        self.assertEqual(rest[-1], (101, content[800:]))

    def test_window_partial_ack_resumes(self) -> None:
        """ACK k short of the window: resend from k+1 and refill the window (RFC 7440)."""
        self.write("k", os.urandom(8 * 20))
        port = self.rrq("k", options={"blksize": "8", "windowsize": "4"})
        assert port is not None
        port.take()  # the OACK
        self.ack(port, 0)
        self.assertEqual([n for n, _ in self.blocks(port)], [1, 2, 3, 4])
        self.ack(port, 2)
        self.assertEqual([n for n, _ in self.blocks(port)], [3, 4, 5, 6])

    def test_stale_and_duplicate_acks_ignored(self) -> None:
        self.write("k", os.urandom(8 * 20))
        port = self.rrq("k", options={"blksize": "8", "windowsize": "4"})
        assert port is not None
        self.ack(port, 0)
        port.take()
        self.ack(port, 4)
        self.assertEqual([n for n, _ in self.blocks(port)], [5, 6, 7, 8])
        for stale in (4, 3, 0, 9, 60000):
            self.ack(port, stale)
        self.assertEqual(port.take(), [])
        self.ack(port, 0)  # ACK 0 again after the OACK: nothing either
        self.assertEqual(port.take(), [])

    def test_block_number_wraps(self) -> None:
        """Past block 65535 numbers wrap to 0 and ACKs are compared modulo 2^16."""
        content = self.write("big", os.urandom(8 * 65540 + 5))
        port = self.rrq("big", options={"blksize": "8", "windowsize": "64"})
        assert port is not None
        port.take()  # the OACK
        self.ack(port, 0)
        numbers = []
        out = []
        while not port.closed:
            sent = self.blocks(port)
            numbers += [n for n, _ in sent]
            out += [p for _, p in sent]
            self.ack(port, sent[-1][0])
        self.assertEqual(numbers[65534:65538], [65535, 0, 1, 2])
        self.assertEqual(b"".join(out), content)

    def test_retransmission_backoff_and_give_up(self) -> None:
        """Resend after 1, 2, 4, 8 s; the 5th consecutive timeout sends ERROR 0 and closes."""
        content = self.write("k", os.urandom(2000))
        port = self.rrq("k")
        assert port is not None
        first = port.take()
        self.assertEqual(P.parse_data(first[0][0]), (1, content[:512]))
        for interval in (1, 2, 4, 8):
            self.reactor.advance(interval - 0.01)
            self.assertEqual(port.take(), [])
            self.reactor.advance(0.01)
            self.assertEqual(port.take(), first)
        self.reactor.advance(7.99)
        self.assertFalse(port.closed)
        self.reactor.advance(0.01)
        self.assertEqual([P.parse_error(d) for d, _ in port.take()], [(0, "timeout")])
        self.assertTrue(port.closed)
        self.assertEqual(self.server.sessions, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(port.protocol.done), "timeout")  # type: ignore[attr-defined]

    def test_progress_resets_backoff(self) -> None:
        self.write("k", os.urandom(2000))
        port = self.rrq("k")
        assert port is not None
        port.take()
        self.reactor.advance(1)
        self.reactor.advance(2)
        self.assertEqual(len(port.take()), 2)
        self.ack(port, 1)
        self.assertEqual([n for n, _ in self.blocks(port)], [2])
        self.reactor.advance(0.99)
        self.assertEqual(port.take(), [])
        self.reactor.advance(0.01)
        self.assertEqual([n for n, _ in self.blocks(port)], [2])

    def test_retransmit_whole_window(self) -> None:
        self.write("k", os.urandom(8 * 20))
        port = self.rrq("k", options={"blksize": "8", "windowsize": "3"})
        assert port is not None
        self.ack(port, 0)
        port.take()
        self.ack(port, 1)  # partial: 2,3 again plus 4
        self.assertEqual([n for n, _ in self.blocks(port)], [2, 3, 4])
        self.reactor.advance(1)
        self.assertEqual([n for n, _ in self.blocks(port)], [2, 3, 4])

    def test_negotiated_timeout_is_fixed(self) -> None:
        self.write("k", os.urandom(2000))
        port = self.rrq("k", options={"timeout": "3"}, )
        assert port is not None
        oack = port.take()
        for _ in range(4):
            self.reactor.advance(3)
            self.assertEqual(port.take(), oack)
        self.reactor.advance(3)
        self.assertEqual([P.parse_error(d) for d, _ in port.take()], [(0, "timeout")])
        self.assertTrue(port.closed)

    def test_retries_parameter(self) -> None:
        self.server.retries = 2
        self.write("k", os.urandom(2000))
        port = self.rrq("k")
        assert port is not None
        port.take()
        self.reactor.advance(1)
        self.assertEqual(len(port.take()), 1)
        self.reactor.advance(2)
        self.assertTrue(port.closed)

    def test_final_ack_missing_closes_silently(self) -> None:
        self.write("k", os.urandom(100))
        port = self.rrq("k")
        assert port is not None
        for _ in range(4):
            self.reactor.advance(8)
        self.assertEqual(len(port.take()), 5)  # DATA 1 and four resends
        self.reactor.advance(8)
        self.assertEqual(port.take(), [])
        self.assertTrue(port.closed)

    def test_error_to_oack_ends_quietly(self) -> None:
        self.write("k", os.urandom(100))
        port = self.rrq("k", options={"tsize": "0"})
        assert port is not None
        port.take()
        port.protocol.datagramReceived(P.encode_error(8, "no thanks"), CLIENT)
        self.assertTrue(port.closed)
        self.reactor.advance(60)
        self.assertEqual(port.take(), [])
        self.assertEqual(self.successResultOf(port.protocol.done), "peer error")  # type: ignore[attr-defined]

    def test_unknown_tid(self) -> None:
        """A stranger gets ERROR 5; the transfer carries on with its client."""
        content = self.write("k", os.urandom(600))
        port = self.rrq("k")
        assert port is not None
        port.take()
        self.ack(port, 1, addr=STRANGER)
        self.ack(port, 1, addr=("127.0.0.2", CLIENT[1]))
        sent = port.take()
        self.assertEqual([a for _, a in sent], [STRANGER, ("127.0.0.2", CLIENT[1])])
        self.assertEqual(P.parse_error(sent[0][0])[0], 5)
        port.protocol.datagramReceived(P.encode_error(0, "x"), STRANGER)  # never answered
        self.assertEqual(port.take(), [])
        self.assertFalse(port.closed)
        self.ack(port, 1)
        self.assertEqual(self.blocks(port), [(2, content[512:])])

    def test_duplicate_rrqignored(self) -> None:
        self.write("k", b"x")
        self.assertIsNotNone(self.rrq("k"))
        self.assertIsNone(self.rrq("k"))
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(self.main.take(), [])
        self.assertEqual(len(self.server.sessions), 1)
        self.assertIsNotNone(self.rrq("k", addr=STRANGER))

    def test_repeated_rrqafter_abort_served(self) -> None:
        """PXE ROM style: OACK, ERROR, RRQ again from the same port; the RRQ may be read first."""
        self.write("k", b"x")
        first = self.rrq("k", options={"tsize": "0"})
        assert first is not None
        self.assertIsNone(self.rrq("k", options={"tsize": "0", "blksize": "1468"}))
        first.protocol.datagramReceived(P.encode_error(0, "abort"), CLIENT)
        self.reactor.advance(0)
        second = self.reactor.ports[-1]
        self.assertIsNot(second, first)
        self.assertEqual(P.parse_oack(second.take()[0][0]), {"tsize": "1", "blksize": "1468"})

    def test_server_busy(self) -> None:
        self.server.max_transfers = 1
        self.write("k", b"x")
        self.assertIsNotNone(self.rrq("k", addr=STRANGER))
        self.assertIsNone(self.rrq("k"))
        self.assertEqual(self.mainError(), (0, "server busy"))

    def test_stop_aborts_transfers(self) -> None:
        self.write("k", os.urandom(2000))
        port = self.rrq("k")
        assert port is not None
        self.main.stopListening()
        self.assertTrue(port.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class SocketPathTests(TFTPTestMixin, SynchronousTestCase):
    """The fast path used with real ports: direct sendto and segmented (GSO) window sends."""

    def rrqWithSocket(self, sock: FakeSocket, options: dict[str, str]) -> FakeDatagramPort:
        original = self.reactor.listenUDP

        def listenUDP(port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192) -> FakeDatagramPort:
            p = FakeDatagramPort(self.reactor, 60000, protocol, interface)
            p.socket = sock  # type: ignore[attr-defined]
            p.maxThroughput = 256 * 1024  # type: ignore[attr-defined]
            self.reactor.ports.append(p)
            protocol.makeConnection(p)  # type: ignore[arg-type]
            return p

        self.reactor.listenUDP = listenUDP  # type: ignore[method-assign]
        try:
            port = self.rrq("k", options=options)
        finally:
            self.reactor.listenUDP = original  # type: ignore[method-assign]
        assert port is not None
        return port

    def test_lock_step_sends_singly(self) -> None:
        content = self.write("k", os.urandom(20))
        sock = FakeSocket()
        port = self.rrqWithSocket(sock, {"blksize": "8"})
        self.assertEqual(port.maxThroughput, 1)  # type: ignore[attr-defined]
        self.ack(port, 0)
        self.assertEqual([P.parse_data(d) for d, _ in sock.sent[1:]], [(1, content[:8])])
        self.assertEqual((port.written, sock.segmented), ([], []))

    def test_window_sent_segmented(self) -> None:
        """One send per window, cut by the kernel into 12-byte datagrams; the OACK stays whole."""
        content = self.write("k", os.urandom(8 * 5 + 3))
        sock = FakeSocket()
        port = self.rrqWithSocket(sock, {"blksize": "8", "windowsize": "16"})
        self.assertEqual(P.parse_oack(sock.sent[0][0]), {"blksize": "8", "windowsize": "16"})
        self.ack(port, 0)
        self.assertEqual(len(sock.sent), 1)
        [(joined, ancdata)] = sock.segmented
        self.assertEqual(ancdata, [(socket.SOL_UDP, 103, struct.pack("=H", 12))])
        packets = [joined[i:i + 12] for i in range(0, len(joined), 12)]
        self.assertEqual([P.parse_data(p) for p in packets],
                         [(i + 1, content[i * 8:(i + 1) * 8]) for i in range(6)])
        self.ack(port, 6)
        self.assertTrue(port.closed)

    def test_segmentation_refused_falls_back(self) -> None:
        """A device without checksum offload answers EIO: the same blocks go one by one."""
        self.write("k", os.urandom(8 * 3))
        sock = FakeSocket(refuseSegmentation=errno.EIO)
        port = self.rrqWithSocket(sock, {"blksize": "8", "windowsize": "4"})
        self.ack(port, 0)
        self.assertEqual([P.parse_data(d)[0] for d, _ in sock.sent[1:]], [1, 2, 3, 4])
        self.reactor.advance(1)  # retransmission now also goes singly
        self.assertEqual([P.parse_data(d)[0] for d, _ in sock.sent[5:]], [1, 2, 3, 4])


class RefusalTests(TFTPTestMixin, SynchronousTestCase):
    def assertRefused(self, name: bytes | str, code: int, mode: str = "octet") -> None:
        self.assertIsNone(self.rrq(name, mode=mode))
        self.assertEqual(self.mainError()[0], code)
        self.assertEqual(self.server.sessions, {})

    def test_wrq_refused(self) -> None:
        self.server.datagramReceived(P.encode_request(b"k", "octet", opcode=P.WRQ), CLIENT)
        self.assertEqual(self.mainError(), (2, "writes not permitted"))
        self.assertEqual(len(self.reactor.ports), 1)
        self.assertFalse(self.root.child("k").exists())

    def test_missing_file(self) -> None:
        self.assertRefused("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", 1)

    def test_bad_mode(self) -> None:
        self.write("k", b"x")
        self.assertRefused("k", 4, mode="mail")

    def test_malformed(self) -> None:
        for bad in (b"\x00", b"\x00\x01k\x00", b"\x00\x01k\x00octet", b"\x00\x09junk"):
            self.server.datagramReceived(bad, CLIENT)
            self.assertEqual(self.mainError()[0], 4)

    def test_stray_packets_ignored(self) -> None:
        for packet in (P.encode_ack(1), P.encode_data(1, b"x"), P.encode_oack({"a": "1"}), P.encode_error(0, "x")):
            self.server.datagramReceived(packet, CLIENT)
        self.assertEqual(self.main.take(), [])

    def test_dot_dot(self) -> None:
        self.write("inside/k", b"x")
        outside = FilePath(self.root.dirname()).child("secret")
        outside.setContent(b"secret")
        for name in ("../secret", "inside/../../secret", "inside/../k", "..", "/../secret"):
            self.assertRefused(name, 2)

    def test_absolute_path_stays_in_root(self) -> None:
        """Leading slashes are stripped: /etc/passwd means <root>/etc/passwd, never the real one."""
        self.assertRefused("/etc/passwd", 1)
        content = self.write("boot/k", b"kernel")
        port = self.rrq("//boot/k")
        assert port is not None
        self.assertEqual(self.download(port), content)

    def test_symlink_out(self) -> None:
        secret = FilePath(self.mktemp())
        secret.makedirs()
        secret.child("f").setContent(b"secret")
        os.symlink(secret.child("f").path, self.root.child("link").path)
        os.symlink(secret.path, self.root.child("dirlink").path)
        os.symlink("/nonexistent-target", self.root.child("dangling").path)
        self.assertRefused("link", 2)
        self.assertRefused("dirlink/f", 2)
        self.assertRefused("dangling", 2)

    def test_symlink_inside_served(self) -> None:
        content = self.write("real/k", b"inside")
        os.symlink("real/k", self.root.child("alias").path)
        port = self.rrq("alias")
        assert port is not None
        self.assertEqual(self.download(port), content)

    def test_illegal_characters(self) -> None:
        self.write("k", b"x")
        for name in (b"a\\k", b"k\x01", b"\x7fk", b"/", b"///"):
            self.assertRefused(name, 2)

    def test_special_files(self) -> None:
        self.root.child("dir").makedirs()
        os.mkfifo(self.root.child("fifo").path)
        self.assertRefused("dir", 2)
        self.assertRefused("fifo", 2)
        self.assertRefused(".", 2)

    def test_unreadable(self) -> None:
        if os.getuid() == 0:
            raise SkipTest("root reads every file; unreadable files exist only for other users")
        self.write("k", b"x")
        os.chmod(self.root.child("k").path, 0)
        self.assertRefused("k", 2)

    def test_resolve_function(self) -> None:
        root = os.fsencode(self.root.path)
        self.write("a/b", b"x")
        self.assertEqual(resolve(root, b"/a/b"), os.path.realpath(os.path.join(root, b"a/b")))
        with self.assertRaises(PathRefused) as cm:
            resolve(root, b"a/../../x")
        self.assertEqual(cm.exception.code, 2)


class ServiceTests(SynchronousTestCase):
    def test_make_tftpservice(self) -> None:
        reactor = FakeUDPReactor()
        service = make_tftp_service(self.mktemp(), 6969, "127.0.0.1", reactor, retries=3)
        self.assertTrue(IService.providedBy(service))
        self.assertIsInstance(service, UDPServer)
        service.startService()
        self.assertEqual(len(reactor.ports), 1)
        port = reactor.ports[0]
        self.assertEqual((port.port, port.interface), (6969, "127.0.0.1"))
        self.assertIsInstance(port.protocol, TFTPServer)
        self.assertEqual(port.protocol.retries, 3)  # type: ignore[attr-defined]

    def test_transfer_interface_follows_main_socket(self) -> None:
        root = FilePath(self.mktemp())
        root.makedirs()
        root.child("k").setContent(b"x")
        reactor = FakeUDPReactor()
        server = TFTPServer(root.path, reactor)
        reactor.listenUDP(69, server, interface="10.0.0.5")
        server.datagramReceived(P.encode_request(b"k"), CLIENT)
        self.assertEqual(reactor.ports[-1].interface, "10.0.0.5")


class TransferWorkerTests(TransferTests):
    """The same transfers, each handed over to one of two workers."""

    workers = 2

    def test_handed_over(self) -> None:
        """The daemon keeps a RemoteTransfer; the worker runs the ReadTransfer on its own socket."""
        self.write("k", os.urandom(600))
        port = self.rrq("k")
        assert port is not None and self.pool is not None
        [remote] = self.server.sessions.values()
        self.assertEqual(type(remote).__name__, "RemoteTransfer")
        self.assertEqual(self.pool.transfers(), [port.protocol])
        self.assertEqual(self.main.take(), [])


class SocketPathWorkerTests(SocketPathTests):
    workers = 2


class RefusalWorkerTests(RefusalTests):
    workers = 2

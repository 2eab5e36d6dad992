"""Unit tests of the ProXR client (spec bmm-protocols 1.2-1.5), in memory on a fake clock."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mozpool.cli import relay as relay_cli
from mozpool.bmm.relay import (
    BoardAddress,
    IPowerControl,
    ProXRProtocol,
    RelayClient,
    RelayConfigError,
    RelayError,
    RelayInfo,
    RelayResult,
    RelayTiming,
    comms_test_frame,
    decode_status,
    parse_board_address,
    parse_relay_info,
    read_frame,
    set_frame,
)

BOARD = "10.0.0.1"
INFO = f"{BOARD}:bank2:relay5"
OFF_2_5 = bytes.fromhex("fe7002")  # energise: device off
ON_2_5 = bytes.fromhex("fe6802")  # release: device on
READ_2_5 = bytes.fromhex("fe7802")


class ParseTests(SynchronousTestCase):
    def test_relay_info_default_port(self) -> None:
        info = parse_relay_info("relay-3.example.com:bank2:relay5")
        self.assertEqual(info, RelayInfo(BoardAddress("relay-3.example.com", 2101), 2, 5))
        self.assertEqual(str(info), "relay-3.example.com:bank2:relay5")

    def test_relay_info_with_port(self) -> None:
        info = parse_relay_info("localhost:40001:bank1:relay8")
        self.assertEqual((info.board.host, info.board.port, info.bank, info.relay),
                         ("localhost", 40001, 1, 8))
        self.assertEqual(str(info), "localhost:40001:bank1:relay8")

    def test_board_key_is_normalised(self) -> None:
        self.assertEqual(parse_board_address("Relay-1").key, parse_board_address("relay-1:2101").key)
        self.assertNotEqual(parse_board_address("relay-1").key, parse_board_address("relay-1:2102").key)

    def test_ipv6_literal(self) -> None:
        self.assertEqual(parse_board_address("[::1]:4000"), BoardAddress("::1", 4000))
        self.assertEqual(parse_relay_info("[::1]:4000:bank1:relay1").board.port, 4000)

    def test_missing(self) -> None:
        for value in (None, "", "  "):
            e = self.assertRaises(RelayConfigError, parse_relay_info, value)
            self.assertEqual(str(e), "no relay configured")

    def test_malformed(self) -> None:
        for value in ("host:bank2", "host:bnk2:relay5", "host:bank2:relay", "host:bank0:relay1",
                      "host:bank5:relay1", "host:bank1:relay9", "host:x:bank1:relay1",
                      ":bank1:relay1", "host:99999:bank1:relay1", "host:bank-1:relay1"):
            self.assertRaises(RelayConfigError, parse_relay_info, value)

    def test_range_checked_in_value_object(self) -> None:
        self.assertRaises(RelayConfigError, RelayInfo, BoardAddress("h"), 0, 1)
        self.assertRaises(RelayConfigError, RelayInfo, BoardAddress("h"), 1, 9)


class CodecTests(SynchronousTestCase):
    def test_spec_example(self) -> None:
        self.assertEqual(set_frame(2, 5, device_on=False), OFF_2_5)
        self.assertEqual(set_frame(2, 5, device_on=True), ON_2_5)
        self.assertEqual(read_frame(2, 5), READ_2_5)
        self.assertEqual(comms_test_frame(), bytes([254, 33]))

    def test_code_ranges(self) -> None:
        reads = {read_frame(1, n)[1] for n in range(1, 9)}
        offs = {set_frame(1, n, False)[1] for n in range(1, 9)}
        ons = {set_frame(1, n, True)[1] for n in range(1, 9)}
        self.assertEqual(reads, set(range(116, 124)))
        self.assertEqual(offs, set(range(108, 116)))
        self.assertEqual(ons, set(range(100, 108)))

    def test_decode_status(self) -> None:
        self.assertIs(decode_status(0), True)
        self.assertIs(decode_status(1), False)
        for byte in (7, 85, 255):
            self.assertRaises(RelayError, decode_status, byte)

    def test_out_of_range_frames(self) -> None:
        self.assertRaises(RelayConfigError, read_frame, 5, 1)
        self.assertRaises(RelayConfigError, set_frame, 1, 0, True)


class BoardTransport(StringTransportWithDisconnection):
    """Records a polite close (``disconnecting``) as well as an abort (``disconnected``)."""

    def loseConnection(self) -> None:
        self.disconnecting = True
        super().loseConnection()


class Harness(SynchronousTestCase):
    """A client on a MemoryReactorClock; the test plays the board."""

    timing = RelayTiming()

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = RelayClient(self.reactor, self.timing)

    def accept(self, index: int = -1) -> BoardTransport:
        """Complete the connection attempt number ``index``."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = BoardTransport()
        transport.protocol = proto
        proto.makeConnection(transport)
        return transport

    def refuse(self, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(self.reactor.connectors[index],
                                       Failure(ConnectionRefusedError()))

    def reply(self, transport: BoardTransport, expected: bytes, answer: bytes) -> None:
        """Check the frame the client sent, then answer it."""
        self.assertEqual(transport.value(), expected)
        transport.clear()
        transport.protocol.dataReceived(answer)

    def result(self, d: Deferred) -> RelayResult:
        result = self.successResultOf(d)
        self.assertIsInstance(result, RelayResult)
        return result

    def failed(self, d: Deferred, *fragments: str) -> RelayResult:
        result = self.result(d)
        self.assertFalse(result.ok)
        self.assertFalse(result)
        for fragment in fragments:
            self.assertIn(fragment, result.reason)
        return result


class OperationTests(Harness):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IPowerControl, self.client))

    def test_power_on(self) -> None:
        d = self.client.power_on(INFO)
        self.assertEqual(self.reactor.tcpClients[0][:2], (BOARD, 2101))
        t = self.accept()
        self.assertNoResult(d)
        self.reply(t, ON_2_5, b"\x55")
        self.assertTrue(self.result(d).ok)
        self.assertTrue(t.disconnecting)
        self.assertFalse(t.disconnected)
        self.assertEqual(t.value(), b"")

    def test_power_off(self) -> None:
        d = self.client.power_off(INFO)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x55")
        self.assertTrue(self.result(d).ok)

    def test_set_with_wrong_reply(self) -> None:
        d = self.client.set_status(INFO, False)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x00")
        self.failed(d, "did not succeed, status: 0")

    def test_get_status(self) -> None:
        for byte, status in ((0, True), (1, False)):
            self.setUp()
            d = self.client.get_status(INFO)
            t = self.accept()
            self.reply(t, READ_2_5, bytes([byte]))
            result = self.result(d)
            self.assertTrue(result.ok)
            self.assertIs(result.status, status)

    def test_get_status_bad_byte_is_an_error(self) -> None:
        for byte in (7, 85):
            self.setUp()
            d = self.client.get_status(INFO)
            t = self.accept()
            self.reply(t, READ_2_5, bytes([byte]))
            result = self.failed(d, "protocol error")
            self.assertIsNone(result.status)

    def test_two_way_comms(self) -> None:
        d = self.client.test_two_way_comms(BOARD)
        t = self.accept()
        self.reply(t, bytes([254, 33]), b"\x55")
        self.assertTrue(self.result(d).ok)

    def test_two_way_comms_only_85_passes(self) -> None:
        d = self.client.test_two_way_comms(f"{BOARD}:4000")
        self.assertEqual(self.reactor.tcpClients[0][:2], (BOARD, 4000))
        t = self.accept()
        self.reply(t, bytes([254, 33]), b"\x00")
        self.failed(d, "two-way comms test")

    def test_two_way_comms_bad_address(self) -> None:
        self.failed(self.client.test_two_way_comms("host:notaport"), "bad port")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_power_cycle(self) -> None:
        d = self.client.power_cycle(INFO)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x55")
        self.reply(t, READ_2_5, b"\x01")
        self.reactor.advance(0.999)
        self.assertEqual(t.value(), b"", "device powered again before the 1 s pause")
        self.reactor.advance(0.001)
        self.reply(t, ON_2_5, b"\x55")
        self.assertNoResult(d)
        self.reply(t, READ_2_5, b"\x00")
        self.assertTrue(self.result(d).ok)
        self.assertTrue(t.disconnecting)

    def test_power_cycle_relay_did_not_change(self) -> None:
        d = self.client.power_cycle(INFO)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x55")
        self.reply(t, READ_2_5, b"\x00")  # stuck relay: still released
        self.failed(d, "bank 2 relay 5 on 10.0.0.1 did not change state")
        self.reactor.advance(5)
        self.assertEqual(t.value(), b"", "no attempt to go on after a failed step")

    def test_power_cycle_final_verification(self) -> None:
        d = self.client.power_cycle(INFO)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x55")
        self.reply(t, READ_2_5, b"\x01")
        self.reactor.advance(1)
        self.reply(t, ON_2_5, b"\x55")
        self.reply(t, READ_2_5, b"\x07")
        self.failed(d, "did not change state")

    def test_no_relay_configured(self) -> None:
        for op in (self.client.power_cycle, self.client.power_on, self.client.get_status):
            self.failed(op(None), "no relay configured")
            self.failed(op(""), "no relay configured")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_out_of_range_rejected_before_connecting(self) -> None:
        self.failed(self.client.power_cycle(f"{BOARD}:bank5:relay1"), "bank 5 out of range")
        self.failed(self.client.power_off(f"{BOARD}:bank1:relay9"), "relay 9 out of range")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_extra_bytes(self) -> None:
        d = self.client.power_off(INFO)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x55\x55")
        self.failed(d, "protocol error", "2 bytes")
        self.assertTrue(t.disconnected, "connection not aborted")

    def test_closed_mid_command_fails_at_once(self) -> None:
        d = self.client.power_cycle(INFO)
        t = self.accept()
        t.loseConnection()
        self.failed(d, "closed by 10.0.0.1")

    def test_refused(self) -> None:
        d = self.client.power_on(INFO)
        self.refuse()
        self.failed(d, "connection refused by 10.0.0.1")

    def test_hang_times_out_at_deadline(self) -> None:
        d = self.client.get_status(INFO)
        t = self.accept()
        self.reactor.advance(29.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.failed(d, "timeout communicating with 10.0.0.1")
        self.assertTrue(t.disconnected, "connection not aborted")

    def test_timeout_during_cycle_pause_aborts(self) -> None:
        d = self.client.power_cycle(INFO, deadline=0.5)
        t = self.accept()
        self.reply(t, OFF_2_5, b"\x55")
        self.reply(t, READ_2_5, b"\x01")
        self.reactor.advance(0.5)
        self.failed(d, "timeout")
        self.assertTrue(t.disconnected)
        self.reactor.advance(1)
        self.assertEqual(t.value(), b"")

    def test_connect_timeout(self) -> None:
        d = self.client.test_two_way_comms(BOARD)
        self.assertEqual(self.reactor.tcpClients[0][3], 10.0)
        self.reactor.advance(10)
        self.failed(d, "timeout communicating with 10.0.0.1", "while connecting")
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_deadline_per_call(self) -> None:
        d = self.client.power_off(INFO, deadline=2)
        self.assertEqual(self.reactor.tcpClients[0][3], 2)
        self.accept()
        self.reactor.advance(2)
        self.failed(d, "timeout")


class SerialisationTests(Harness):
    def test_one_board_one_connection_then_pause(self) -> None:
        d1 = self.client.power_on(INFO)
        d2 = self.client.power_off(f"{BOARD}:bank1:relay1")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        t1 = self.accept(0)
        self.reactor.advance(3)
        self.reply(t1, ON_2_5, b"\x55")
        self.assertTrue(self.result(d1).ok, "caller waited for the recovery pause")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.999)
        self.assertEqual(len(self.reactor.tcpClients), 1, "next connection before the pause ended")
        self.reactor.advance(0.001)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        # the deadline counts from the request: 30 - 4 s spent in the queue
        self.assertAlmostEqual(self.reactor.tcpClients[1][3], 26.0)
        t2 = self.accept(1)
        self.reply(t2, bytes.fromhex("fe6c01"), b"\x55")
        self.assertTrue(self.result(d2).ok)
        self.reactor.advance(1)
        self.assertEqual(self.client.busy_boards(), [])

    def test_fifo(self) -> None:
        ds = [self.client.power_on(f"{BOARD}:bank1:relay{n}") for n in (1, 2, 3)]
        for n, d in zip((1, 2, 3), ds):
            t = self.accept()
            self.reply(t, set_frame(1, n, True), b"\x55")
            self.assertTrue(self.result(d).ok)
            self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_two_boards_in_parallel(self) -> None:
        d1 = self.client.power_on(INFO)
        d2 = self.client.power_on("10.0.0.2:bank2:relay5")
        self.assertEqual([c[0] for c in self.reactor.tcpClients], [BOARD, "10.0.0.2"])
        t1, t2 = self.accept(0), self.accept(1)
        self.reply(t2, ON_2_5, b"\x55")
        self.reply(t1, ON_2_5, b"\x55")
        self.assertTrue(self.result(d1).ok and self.result(d2).ok)

    def test_same_board_spelled_differently(self) -> None:
        def endpoint(reactor: Any, board: BoardAddress, timeout: float) -> TCP4ClientEndpoint:
            return TCP4ClientEndpoint(reactor, "10.9.9.9", board.port, timeout=timeout)

        self.client = RelayClient(self.reactor, self.timing, endpoint)
        self.client.power_on("Relay-1:bank1:relay1")
        self.client.power_on("relay-1:2101:bank1:relay2")
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_deadline_passes_in_queue(self) -> None:
        d1 = self.client.power_on(INFO)
        d2 = self.client.power_on(f"{BOARD}:bank1:relay1", deadline=5)
        d3 = self.client.power_on(f"{BOARD}:bank1:relay2")
        t1 = self.accept(0)
        self.reactor.advance(5)
        self.failed(d2, "timeout", "still queued")
        self.reply(t1, ON_2_5, b"\x55")
        self.assertTrue(self.result(d1).ok)
        self.reactor.advance(1)
        # d2 left the queue without connecting or adding a pause: d3 is next, right now
        self.assertEqual(len(self.reactor.tcpClients), 2)
        t3 = self.accept(1)
        self.reply(t3, set_frame(1, 2, True), b"\x55")
        self.assertTrue(self.result(d3).ok)

    def test_lock_released_after_timeout(self) -> None:
        d1 = self.client.get_status(INFO)
        d2 = self.client.get_status(INFO, deadline=60)
        t1 = self.accept(0)
        self.reactor.advance(30)
        self.failed(d1, "timeout")
        self.assertTrue(t1.disconnected)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        t2 = self.accept(1)
        self.reply(t2, READ_2_5, b"\x01")
        self.assertIs(self.result(d2).status, False)

    def test_lock_released_after_refusal(self) -> None:
        d1 = self.client.power_on(INFO)
        d2 = self.client.power_on(INFO)
        self.refuse(0)
        self.failed(d1, "refused")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertNoResult(d2)

    def test_lock_released_after_protocol_error(self) -> None:
        d1 = self.client.power_off(INFO)
        self.client.power_off(INFO)
        self.reply(self.accept(0), OFF_2_5, b"\x07")
        self.failed(d1, "status: 7")
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_connection_that_does_not_close_is_aborted(self) -> None:
        """A board that never completes the close still frees the lock, after a grace period."""
        d1 = self.client.power_on(INFO)
        self.client.power_on(INFO)
        host, port, factory, _t, _b = self.reactor.tcpClients[0]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        t = StringTransport()  # loseConnection never reports connectionLost
        proto.makeConnection(t)
        self.assertEqual(t.value(), ON_2_5)
        proto.dataReceived(b"\x55")
        self.assertTrue(self.result(d1).ok)
        self.reactor.advance(1)
        self.assertTrue(t.disconnected, "not aborted after the grace period")
        proto.connectionLost(Failure(ConnectionRefusedError()))
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proto = ProXRProtocol(BoardAddress(BOARD))
        self.transport = BoardTransport()
        self.transport.protocol = self.proto
        self.proto.makeConnection(self.transport)

    def test_no_pipelining(self) -> None:
        self.proto.command(READ_2_5)
        self.assertRaises(RuntimeError, self.proto.command, READ_2_5)

    def test_one_write_per_frame(self) -> None:
        writes: list[bytes] = []
        self.transport.write = writes.append  # type: ignore[method-assign]
        self.proto.command(OFF_2_5)
        self.assertEqual(writes, [OFF_2_5])

    def test_unsolicited_byte_is_a_protocol_error(self) -> None:
        self.proto.dataReceived(b"\x55")
        self.assertTrue(self.transport.disconnected)
        failure = self.failureResultOf(self.proto.command(READ_2_5), RelayError)
        self.assertIn("unexpected", failure.value.reason)

    def test_command_after_close(self) -> None:
        self.transport.loseConnection()
        self.failureResultOf(self.proto.command(READ_2_5), RelayError)
        self.assertTrue(self.proto.lost.called)

    def test_reply_split_is_one_byte_each(self) -> None:
        d = self.proto.command(READ_2_5)
        self.proto.dataReceived(b"\x01")
        self.assertEqual(self.successResultOf(d), 1)


class CommandLineParsingTests(SynchronousTestCase):
    """The ``relay`` command's argument checks, which exit before any reactor runs."""

    def run_main(self, *argv: str) -> tuple[int, list[str]]:
        out = io.StringIO()
        with redirect_stdout(out):
            e = self.assertRaises(SystemExit, relay_cli.main, list(argv))
        return e.code, out.getvalue().splitlines()  # type: ignore[return-value]

    def test_parse(self) -> None:
        command, info = relay_cli.parse_args(["powercycle", "Relay-1:4000", "2", "5"])
        self.assertEqual((command, info), ("powercycle", RelayInfo(BoardAddress("relay-1", 4000), 2, 5)))

    def test_usage(self) -> None:
        for argv in ([], ["status", "h", "1"], ["reboot", "h", "1", "1"], ["status", "h", "1", "1", "x"]):
            self.assertEqual(self.run_main(*argv), (2, [relay_cli.USAGE]))

    def test_bad_numbers(self) -> None:
        for argv, reason in ((["turnon", "h", "x", "1"], "integers"),
                             (["turnon", "h", "0", "1"], "bank 0 out of range"),
                             (["turnon", "h", "1", "9"], "relay 9 out of range"),
                             (["turnon", "h:port", "1", "1"], "bad port")):
            code, lines = self.run_main(*argv)
            self.assertEqual((code, lines[0], len(lines)), (2, relay_cli.USAGE, 2))
            self.assertIn(reason, lines[1])

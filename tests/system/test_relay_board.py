"""The ProXR client against the simulated board over loopback TCP (spec bmm-protocols 1.3-1.8).

Real time on 127.0.0.1 with short deadlines and pauses so the whole file runs in seconds;
every fault mode of the simulated board, the bounds, the per-board discipline, and the
``relay`` command as a real subprocess.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mozpool
from mozpool.bmm.relay import RelayClient, RelayResult, RelayTiming
from mozpool.fakes.relayboard import (
    FakeRelayBoard,
    fixture_location,
    fixture_relay_info,
    start_boards,
    stop_boards,
)
from tests.support.polling import until

DEADLINE = 0.5
PAUSE = 0.05
SLACK = 1.5  # scheduling noise allowed on top of a bound (a busy 2-core CI box)
LONG = 5.0  # deadline for checks that something fails "at once", not at the deadline
TIMING = RelayTiming.uniform(DEADLINE, cycle_pause=PAUSE, recovery_pause=PAUSE, close_grace=0.2)
# The tests that time no deadline: a working operation cannot miss LONG on a busy machine.
EASY = RelayTiming.uniform(LONG, cycle_pause=PAUSE, recovery_pause=PAUSE, close_grace=0.2)
CYCLE = [("set", "device-off", 2, 5), ("get", 2, 5), ("set", "device-on", 2, 5), ("get", 2, 5)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__)))


class Raw(Protocol):
    """A bare client connection to poke the simulated board with."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class BoardCase(TestCase):
    timeout = 30

    def make_board(self, **options: Any) -> FakeRelayBoard:
        # By default the board keeps listening and counts overlapping connections instead, and
        # every test checks the client never had two open; with the client's pause shortened to
        # 0.05 s, a stop-listen/re-listen cycle would race it on a loaded machine.  The tests of
        # the single-connection stack itself turn it on.
        options.setdefault("single_connection", False)
        options.setdefault("recovery_pause", 0)
        options.setdefault("record_actions", True)
        board = FakeRelayBoard(reactor, **options)
        board.start()
        self.addCleanup(board.stop)
        self.addCleanup(lambda: self.assertLessEqual(
            board.max_open_connections, 1, "two connections to one board at once"))
        return board

    def make_client(self, timing: RelayTiming = EASY) -> RelayClient:
        client = RelayClient(reactor, timing)
        self.addCleanup(client.drained)
        return client

    async def timed(self, d: Deferred[RelayResult]) -> tuple[RelayResult, float]:
        start = time.monotonic()
        result = await d
        return result, time.monotonic() - start

    async def raw(self, board: FakeRelayBoard) -> Raw:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", board.port, timeout=2)
        proto = await connectProtocol(endpoint, Raw())
        self.addCleanup(lambda: proto.lost if proto.transport.abortConnection() is None else None)
        return proto

    def assertFailedWith(self, result: RelayResult, fragment: str) -> None:
        self.assertFalse(result.ok, "operation should have failed")
        self.assertIn(fragment, result.reason)


class OperationTests(BoardCase):
    async def test_power_cycle(self) -> None:
        board = self.make_board()
        seen: list[tuple[int, int, bool]] = []
        board.add_listener(lambda b, r, on: seen.append((b, r, on)))
        result, took = await self.timed(self.make_client().power_cycle(board.relay_info(2, 5)))
        self.assertTrue(result.ok, result.reason)
        self.assertEqual(board.actions, CYCLE)
        self.assertEqual(seen, [(2, 5, False), (2, 5, True)])
        self.assertTrue(board.device_on(2, 5))
        self.assertGreaterEqual(took, PAUSE)

    async def test_power_cycle_of_a_device_that_is_off(self) -> None:
        board = self.make_board(device_on=False)
        result = await self.make_client().power_cycle(board.relay_info(2, 5))
        self.assertTrue(result.ok, result.reason)
        self.assertTrue(board.device_on(2, 5))

    async def test_turn_off_status_turn_on(self) -> None:
        board = self.make_board()
        client = self.make_client()
        info = board.relay_info(4, 8)
        self.assertTrue((await client.power_off(info)).ok)
        self.assertFalse(board.device_on(4, 8))
        self.assertEqual(board.state[(4, 8)], 1, "device off must energise the relay")
        self.assertIs((await client.get_status(info)).status, False)
        self.assertTrue((await client.power_on(info)).ok)
        self.assertIs((await client.get_status(info)).status, True)
        self.assertTrue((await client.test_two_way_comms(board.address())).ok)
        self.assertEqual(board.max_open_connections, 1)


class FaultTests(BoardCase):
    async def test_refuse(self) -> None:
        board = self.make_board()
        await board.refuse()
        client = self.make_client()
        result, took = await self.timed(client.power_cycle(board.relay_info(1, 1), deadline=LONG))
        self.assertFailedWith(result, "connection refused")
        self.assertLess(took, LONG / 2)

    async def test_hang(self) -> None:
        board = self.make_board()
        board.hang = True
        result, took = await self.timed(self.make_client(TIMING).power_on(board.relay_info(1, 1)))
        self.assertFailedWith(result, "timeout communicating with 127.0.0.1")
        self.assertGreaterEqual(took, DEADLINE - 0.01)
        self.assertLess(took, DEADLINE + SLACK)
        await until(lambda: board.open_connections == 0, "the hung connection to be aborted")

    async def test_wrong_byte_to_set(self) -> None:
        board = self.make_board()
        board.wrong_byte, board.wrong_byte_kinds = 0, frozenset({"set"})
        result = await self.make_client().power_off(board.relay_info(1, 1))
        self.assertFailedWith(result, "did not succeed, status: 0")

    async def test_wrong_byte_to_read_never_reports_on(self) -> None:
        board = self.make_board()
        client = self.make_client()
        board.wrong_byte_kinds = frozenset({"get"})
        for byte in (85, 7):
            board.wrong_byte = byte
            result = await client.get_status(board.relay_info(1, 1))
            self.assertFailedWith(result, "protocol error")
            self.assertIsNone(result.status)

    async def test_wrong_byte_to_comms_test(self) -> None:
        board = self.make_board()
        board.wrong_byte, board.wrong_byte_kinds = 0, frozenset({"test"})
        result = await self.make_client().test_two_way_comms(board.address())
        self.assertFailedWith(result, "two-way comms test")

    async def test_stuck_relay(self) -> None:
        board = self.make_board()
        board.stuck.add((2, 5))
        result = await self.make_client().power_cycle(board.relay_info(2, 5))
        self.assertFailedWith(result, "did not change state")
        self.assertEqual(board.actions, CYCLE[:2])

    async def test_slow_within_deadline(self) -> None:
        board = self.make_board()
        board.delay = 0.05
        result, took = await self.timed(self.make_client().power_cycle(board.relay_info(2, 5)))
        self.assertTrue(result.ok, result.reason)
        self.assertGreaterEqual(took, 4 * 0.05 + PAUSE)

    async def test_slow_past_deadline(self) -> None:
        board = self.make_board()
        board.delay = 0.2  # 4 replies + pause = 0.85 s > 0.5 s
        result, took = await self.timed(self.make_client(TIMING).power_cycle(board.relay_info(2, 5)))
        self.assertFailedWith(result, "timeout")
        self.assertGreaterEqual(took, DEADLINE - 0.01)
        self.assertLess(took, DEADLINE + SLACK)

    async def test_drop_mid_command(self) -> None:
        board = self.make_board()
        board.drop_after = 5  # first frame answered, then 2 bytes into the second
        client = self.make_client()
        result, took = await self.timed(client.power_cycle(board.relay_info(2, 5), deadline=LONG))
        self.assertFailedWith(result, "closed by 127.0.0.1")
        self.assertLess(took, LONG / 2, "should fail at once, not at the deadline")
        self.assertEqual(board.actions, CYCLE[:1])

    async def test_extra_bytes(self) -> None:
        board = self.make_board()
        board.extra_bytes = True
        result = await self.make_client().power_on(board.relay_info(1, 1))
        self.assertFailedWith(result, "protocol error")

    async def test_accept_and_close(self) -> None:
        board = self.make_board()
        board.accept_and_close = True
        client = self.make_client()
        result, took = await self.timed(client.get_status(board.relay_info(1, 1), deadline=LONG))
        self.assertFailedWith(result, "closed by 127.0.0.1")
        self.assertLess(took, LONG / 2)

    async def test_second_connection_not_served(self) -> None:
        board = self.make_board(single_connection=True)
        holder = await self.raw(board)
        await until(lambda: board.open_connections == 1, "the board to accept")
        result, took = await self.timed(self.make_client(TIMING).get_status(board.relay_info(1, 1)))
        self.assertFalse(result.ok)
        self.assertLess(took, DEADLINE + SLACK)
        holder.transport.write(bytes([254, 33]))
        await until(lambda: holder.received, "the first connection to be served")
        self.assertEqual(holder.received, bytes([85]))
        self.assertEqual(board.max_open_connections, 1)

    async def test_board_recovers_after_refusing(self) -> None:
        board = self.make_board()
        client = self.make_client()
        await board.refuse()
        self.assertFalse((await client.test_two_way_comms(board.address())).ok)
        board.accept()
        self.assertTrue(board.listening)
        self.assertTrue((await client.test_two_way_comms(board.address())).ok)


class DisciplineTests(BoardCase):
    async def test_one_connection_at_a_time_with_pause(self) -> None:
        board = self.make_board()
        client = self.make_client(RelayTiming.uniform(5, recovery_pause=0.1))
        done: list[float] = []
        ds = [client.power_on(board.relay_info(1, n)).addCallback(
            lambda r: (done.append(time.monotonic()), r)[1]) for n in range(1, 6)]
        for d in ds:
            self.assertTrue((await d).ok)
        self.assertEqual(board.max_open_connections, 1)
        self.assertEqual(board.connections_made, 5)
        self.assertEqual([a[3] for a in board.actions], [1, 2, 3, 4, 5], "not FIFO")
        gaps = [b - a for a, b in zip(done, done[1:])]
        self.assertGreaterEqual(min(gaps), 0.1 - 0.01, "recovery pause not kept")

    async def test_pause_holds_next_operation_not_result(self) -> None:
        board = self.make_board()
        client = self.make_client(RelayTiming.uniform(LONG, recovery_pause=0.3))
        first = client.test_two_way_comms(board.address())
        second = client.test_two_way_comms(board.address())
        self.assertTrue((await first).ok)
        first_at = time.monotonic()
        self.assertEqual(client.busy_boards(), [board.address()], "caller waited for the pause")
        self.assertEqual(board.connections_made, 1)
        self.assertTrue((await second).ok)
        self.assertGreaterEqual(time.monotonic() - first_at, 0.3 - 0.01)

    async def test_two_boards_overlap(self) -> None:
        boards = [self.make_board(), self.make_board()]
        for board in boards:
            board.delay = 1.0  # each connection stays open for a second
        client = self.make_client(RelayTiming.uniform(LONG, recovery_pause=0.05))
        results = [client.power_on(b.relay_info(1, 1)) for b in boards]
        # one after the other, the two connections would never be open at the same time
        await until(lambda: all(b.open_connections for b in boards),
                         "both boards to have a connection open at the same time", 2.5)
        for d in results:
            self.assertTrue((await d).ok)

    async def test_deadline_includes_queue_time(self) -> None:
        board = self.make_board()
        board.hang = True
        client = self.make_client(TIMING)
        first = client.get_status(board.relay_info(1, 1))
        second, took = await self.timed(client.get_status(board.relay_info(1, 2), deadline=0.2))
        self.assertFailedWith(second, "still queued")
        self.assertLess(took, 0.2 + SLACK)
        self.assertFailedWith(await first, "timeout")
        self.assertEqual(board.connections_made, 1)

    async def test_lock_released_after_failures(self) -> None:
        board = self.make_board()
        client = self.make_client(TIMING)
        board.hang = True
        timed_out = client.power_on(board.relay_info(1, 1))
        board_ok = client.power_on(board.relay_info(1, 2), deadline=3)
        self.assertFalse((await timed_out).ok)
        board.hang = False
        self.assertTrue((await board_ok).ok)


class CommandLineTests(BoardCase):
    """``relay`` as a real subprocess against a simulated board."""

    timeout = 120

    async def relay(self, *args: str) -> tuple[str, int]:
        env = dict(os.environ, PYTHONPATH=REPO)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "mozpool.cli.relay", *args], env=env, path=REPO)
        return out.decode(), code

    async def test_commands(self) -> None:
        board = self.make_board(single_connection=True)
        addr = board.address()
        self.assertEqual(await self.relay("turnoff", addr, "3", "7"), ("OK\n", 0))
        self.assertFalse(board.device_on(3, 7))
        self.assertEqual(await self.relay("status", addr, "3", "7"),
                         ("bank 3, relay 7 status: off\n", 0))
        self.assertEqual(await self.relay("powercycle", addr, "3", "7"), ("OK\n", 0))
        self.assertTrue(board.device_on(3, 7))
        self.assertEqual(board.actions[-4:], [("set", "device-off", 3, 7), ("get", 3, 7),
                                              ("set", "device-on", 3, 7), ("get", 3, 7)])
        self.assertEqual(await self.relay("turnon", addr, "3", "7"), ("OK\n", 0))
        self.assertEqual(await self.relay("status", addr, "3", "7"),
                         ("bank 3, relay 7 status: on\n", 0))

    async def test_failures_and_usage(self) -> None:
        board = self.make_board()
        await board.refuse()
        self.assertEqual(await self.relay("turnon", board.address(), "1", "1"), ("FAILED\n", 1))
        usage = "Usage: relay [powercycle|status|turnon|turnoff] <hostname> <bank> <relay>\n"
        self.assertEqual(await self.relay("status", board.address()), (usage, 2))
        out, code = await self.relay("status", board.address(), "5", "1")
        self.assertEqual((out.splitlines()[0] + "\n", code), (usage, 2))
        self.assertIn("bank 5", out.splitlines()[1])


class FakesModeTests(SynchronousTestCase):
    def test_fixture_layout(self) -> None:
        self.assertEqual(fixture_location(0), (0, 1, 1))
        self.assertEqual(fixture_location(9), (0, 2, 2))
        self.assertEqual(fixture_location(31), (0, 4, 8))
        self.assertEqual(fixture_location(32), (1, 1, 1))

    def test_start_boards(self) -> None:
        boards = start_boards(reactor, 3)
        try:
            ports = {b.port for b in boards}
            self.assertEqual(len(ports), 3)
            self.assertTrue(all(b.listening and b.port > 0 for b in boards))
            self.assertEqual(fixture_relay_info(33, boards), f"127.0.0.1:{boards[1].port}:bank1:relay2")
            self.assertEqual(len(boards[0].state), 32)
        finally:
            stop_boards(boards)
        self.assertFalse(any(b.listening for b in boards))


class SimulatedBoardWireTests(BoardCase):
    """The simulated board's own parsing, which the client tests rely on."""

    async def test_split_and_joined_frames(self) -> None:
        board = self.make_board()
        proto = await self.raw(board)
        for chunk in (b"\xfe", b"\x70", b"\x02\xfe\x78\x02\xfe\x21"):
            proto.transport.write(chunk)
            await deferLater(reactor, 0.01)  # let each chunk go out as its own segment
        await until(lambda: len(proto.received) >= 3, "three replies")
        self.assertEqual(proto.received, bytes([85, 1, 85]))
        self.assertEqual(board.actions, [("set", "device-off", 2, 5), ("get", 2, 5)])

    async def test_bad_frames_close_without_reply(self) -> None:
        board = self.make_board(banks=1, single_connection=True)
        for frame in (b"\x00\x21", b"\xfe\x10\x01", b"\xfe\x78\x02"):
            await until(lambda: board.listening, "the board to listen again")
            proto = await self.raw(board)
            proto.transport.write(frame)
            await until(lambda: proto.lost.called, f"{frame!r} to close the connection")
            self.assertEqual(proto.received, b"")

    async def test_relistens_after_pause(self) -> None:
        board = self.make_board(single_connection=True, recovery_pause=0.3)
        proto = await self.raw(board)
        await until(lambda: board.open_connections == 1, "the board to accept")
        self.assertFalse(board.listening)
        closing_at = time.monotonic()
        proto.transport.loseConnection()
        await until(lambda: board.listening, "the board to listen again")
        self.assertGreaterEqual(time.monotonic() - closing_at, 0.3 - 0.01,
                                "listening again without the pause")

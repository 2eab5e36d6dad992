"""Whole-board faults of the simulated pool (issue 15, item 7): ``--fail-board`` and ``[fakes]
fail_board`` parsed, boards found by number or name, faults switched on and off, and a flaky
board's dropped connections."""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.bmm.relay import RelayClient, RelayTiming
from mozpool.db.fixtures import fake_device_rows
from mozpool.fakes.boardfaults import BoardFault, parse_board_fault, parse_board_faults
from mozpool.fakes.pool import DeviceRow, FakePool
from mozpool.tap import Options, fake_board_faults
from tests.system.daemon import free_board_ports


class Parsing(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_board_fault("1:hang"), BoardFault("1", "hang"))
        self.assertEqual(parse_board_fault("localhost:40001:dead"), BoardFault("localhost:40001", "dead"))
        self.assertEqual(parse_board_fault("localhost-40001:flaky"), BoardFault("localhost-40001", "flaky", 0.5))
        self.assertEqual(parse_board_fault("2:flaky:0.25"), BoardFault("2", "flaky", 0.25))
        self.assertEqual(parse_board_fault("1:hang@600-1800"), BoardFault("1", "hang", 1.0, 600.0, 1800.0))
        self.assertEqual(parse_board_fault("1:dead@-300"), BoardFault("1", "dead", 1.0, None, 300.0))
        self.assertEqual(parse_board_faults("1:hang, 2:dead"), [BoardFault("1", "hang"), BoardFault("2", "dead")])

    def test_refused(self) -> None:
        for bad in ("1", "1:zap", ":hang", "1:hang:0.5", "1:flaky:2", "1:flaky:x", "1:hang@x", "1:hang@10-5", "1:hang@"):
            self.assertRaises(ValueError, parse_board_fault, bad)

    def test_options(self) -> None:
        options = Options()
        options.parseOptions(["--fakes", "64", "--fail-board", "1:hang", "--fail-board", "2:flaky:0.1", "--db",
                              "sqlite:///" + self.mktemp()])
        self.assertEqual(fake_board_faults(options.config),
                         [BoardFault("1", "hang"), BoardFault("2", "flaky", 0.1)])
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--fakes", "2", "--fail-board", "1:melt"])
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--fail-board", "1:hang"])

    def test_config(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[fakes]\nfail_board = 1:dead@100-200\n[health]\nboard_failures = 2\n")
        options = Options()
        options.parseOptions(["--config", path, "--fakes", "40", "--db", "sqlite:///" + self.mktemp()])
        self.assertEqual(fake_board_faults(options.config), [BoardFault("1", "dead", 1.0, 100.0, 200.0)])
        with open(path, "w") as f:
            f.write("[health]\nboard_failures = 0\n")
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])


class Boards(TestCase):
    async def test_faults_by_number_and_name_switched_on_and_off(self) -> None:
        base = free_board_ports(2)
        rows = [DeviceRow(name=r[0], fqdn=r[1], mac=r[6], relay_info=r[8], state=r[3])
                for r in fake_device_rows(40, 1, 1, "now", relay_base_port=base)]
        pool = FakePool(reactor, rows, api_url="http://127.0.0.1:1", tftp_address=("127.0.0.1", 1), http=object(),
                        rng=random.Random(1), board_faults=[BoardFault("2", "dead")])
        await pool.start()
        self.addCleanup(pool.stop)
        first, second = pool.boards[base], pool.boards[base + 1]
        self.assertIs(pool.find_board("1"), first)
        self.assertIs(pool.find_board(f"localhost-{base}"), first)
        self.assertIs(pool.find_board(f"localhost:{base + 1}"), second)
        self.assertRaises(KeyError, pool.find_board, "3")
        self.assertRaises(KeyError, pool.find_board, "nowhere")
        self.assertFalse(second.listening, "dead from the start")
        pool.set_board_fault("1", "hang")
        self.assertTrue(first.hang)
        pool.set_board_fault("1", "flaky", 0.3)
        self.assertEqual((first.hang, first.flaky), (False, 0.3))
        pool.set_board_fault("2", "ok")
        self.assertTrue(second.listening)
        self.assertRaises(ValueError, pool.set_board_fault, "1", "melt")
        # a flaky board drops (here: every) connection unanswered; a healthy one answers
        client = RelayClient(reactor, RelayTiming.uniform(2.0, cycle_pause=0.05, recovery_pause=0.05, close_grace=0.2))
        pool.set_board_fault("1", "flaky", 1.0)
        self.assertFalse(await client.test_controller(f"localhost:{base}"))
        pool.set_board_fault("1", "ok")
        self.assertTrue(await client.test_controller(f"localhost:{base}"))
        await client.drained()

    def test_windows_follow_the_time_scale(self) -> None:
        clock = Clock()
        rows = [DeviceRow("a", "a.x", "020000000001", "localhost:1:bank1:relay1")]
        pool = FakePool(clock, rows, api_url="http://x", tftp_address=("127.0.0.1", 69), http=object(),
                        time_scale=0.01)
        seen: list[tuple[str, str]] = []
        pool.find_board = lambda board: object()  # type: ignore[assignment,method-assign,return-value]
        pool.set_board_fault = lambda board, mode, p=1.0: seen.append((board, mode))  # type: ignore[method-assign]
        pool._schedule_fault(BoardFault("1", "hang", 1.0, 600.0, 1800.0))
        clock.advance(5.99)
        self.assertEqual(seen, [])
        clock.advance(0.01)
        self.assertEqual(seen, [("1", "hang")])
        clock.advance(12)
        self.assertEqual(seen, [("1", "hang"), ("1", "ok")])

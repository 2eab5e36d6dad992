"""The API of fault isolation (issue 15): GET /api/health/, GET /api/relay/{relay}/health/, the
``board_health`` event and the /metrics lines; and request selection passing by the devices of a
suspect power controller."""

from __future__ import annotations

import random

from twisted.internet import defer

from mozpool.broker import selection
from mozpool.db import changes, health
from mozpool.timeutil import dbnow
from mozpool.web import events
from tests.support.dbtest import on_both_backends
from tests.web.fakes import FakeLifeGuard
from tests.web.support import A, B, APITest

BOARD = "localhost:20001"  # A's panda-0001..0003


class Status(FakeLifeGuard):
    def quarantine_status(self) -> "defer.Deferred[dict[str, object]]":
        return defer.succeed({"imaging_server": A, "quarantines": 0, "cap": 5, "window": 1800.0})


class BoardHealth(APITest):
    async def suspect(self) -> None:
        await self.db.runInteraction(health.set_health, BOARD, health.SUSPECT, dbnow(self.clock),
                                     "3 devices behind it failed in its power path", "2030-01-01 00:00:00",
                                     {"probes": 2})

    async def test_a_healthy_pool(self) -> None:
        got = await self.ok("GET", "/api/health/")
        self.assertEqual([(b["name"], b["health"], b["imaging_server"]) for b in got["boards"]],
                         [("localhost-20001", "ok", A), ("localhost-50001", "ok", B)])
        self.assertEqual(got["servers"], [{"imaging_server": A, "quarantines": 0, "held": []},
                                          {"imaging_server": B, "quarantines": 0, "held": []}])
        self.assertEqual((got["quarantine_cap"], got["quarantine_window"]), (None, None), "no LifeGuard here")

    async def test_a_suspect_board_and_its_devices(self) -> None:
        await self.suspect()
        await self.db.query("UPDATE devices SET state = 'board_suspect' WHERE name = 'panda-0001'")
        await self.db.query("UPDATE devices SET state = 'held' WHERE name = 'bpanda-0001'")
        self.api = self.makeAPI(lifeguard=Status())
        got = await self.ok("GET", "/api/relay/localhost-20001/health/")
        board = got["board"]
        self.assertEqual((board["health"], board["failed_probes"], board["next_probe"]),
                         ("suspect", 2, "2030-01-01T00:00:00"))
        self.assertEqual(board["reason"], "3 devices behind it failed in its power path")
        self.assertEqual([(d["name"], d["state"]) for d in got["devices"]],
                         [("panda-0001", "board_suspect"), ("panda-0002", "new"), ("panda-0003", "new")])
        report = await self.ok("GET", "/api/health/")
        self.assertEqual([b["health"] for b in report["boards"]], ["suspect", "ok"])
        self.assertEqual(report["servers"][1]["held"], ["bpanda-0001"])
        self.assertEqual((report["quarantine_cap"], report["quarantine_window"]), (5, 1800.0))
        await self.error(404, "GET", "/api/relay/nowhere/health/")

    async def test_board_health_is_an_event(self) -> None:
        await self.suspect()
        found = await self.db.runInteraction(changes.read_after, 0)
        board = [ch for ch in found if ch.kind == changes.BOARD_HEALTH]
        self.assertEqual(len(board), 1)
        self.assertEqual({k: board[0].data[k] for k in ("board", "fqdn", "health", "old_health", "board_server")},
                         {"board": "localhost-20001", "fqdn": BOARD, "health": "suspect", "old_health": "ok",
                          "board_server": A})
        self.assertIn("board_health", events.TYPES)

    async def test_metrics(self) -> None:
        await self.suspect()
        await self.db.query("UPDATE devices SET state = 'held' WHERE name = 'panda-0002'")
        lines = (await self.call("GET", "/metrics")).body.decode().splitlines()
        self.assertIn('mozpool_power_controllers{health="suspect"} 1', lines)
        self.assertIn('mozpool_power_controllers{health="ok"} 1', lines)
        self.assertIn(f'mozpool_power_controller_suspect{{board="localhost-20001",imaging_server="{A}"}} 1', lines)
        self.assertIn(f'mozpool_devices_held{{imaging_server="{A}"}} 1', lines)

    async def test_selection_passes_by_a_suspect_boards_devices(self) -> None:
        await self.db.query("UPDATE devices SET state = 'ready'")
        await self.suspect()
        request_id = await self.add_request(state="finding_device")
        info = await self.db.runInteraction(selection.request_info, request_id)
        rng = random.Random(1)
        picked = set()
        for _ in range(20):
            claimed = await self.db.runInteraction(
                selection.pick_and_claim, info, [rng.random() for _ in range(3)], dbnow(self.clock))
            assert claimed.device is not None
            picked.add(claimed.device.name)
        self.assertEqual(picked, {"bpanda-0001", "bpanda-0002"})

    async def test_a_look_for_a_device_passes_by_a_suspect_boards_devices(self) -> None:
        """The same through the request's look (find_now), which counts the suspect controllers
        in its context read and asks for their devices only when there are some."""
        await self.db.query("UPDATE devices SET state = 'ready'")
        request_id = await self.add_request(state="finding_device")
        rng = random.Random(2)

        async def looks() -> set[str]:
            picked = set()
            for _ in range(20):
                _, found = await self.db.runInteraction(
                    selection.find_now, request_id, [rng.random() for _ in range(3)], dbnow(self.clock))
                assert found.claimed.device is not None
                picked.add(found.claimed.device.name)
            return picked

        self.assertGreater(await looks(), {"bpanda-0001", "bpanda-0002"})  # before: every device
        await self.suspect()
        self.assertEqual(await looks(), {"bpanda-0001", "bpanda-0002"})


BoardHealthSQLite, BoardHealthMariaDB = on_both_backends(BoardHealth)

"""Server liveness: heartbeats, the server list, unreachable devices, selection avoiding them,
and a named request for one failing at once."""

from __future__ import annotations

import os


from twisted.internet import reactor, task

from mozpool import liveness
from mozpool.broker import selection
from mozpool.db import catalog
from mozpool.timeutil import deadline_text
from tests.support.dbtest import on_both_backends
from tests.web.support import A, B, EPOCH, APITest


class Liveness(APITest):
    async def beat(self, fqdn: str, at: float) -> None:
        await self.db.runInteraction(catalog.heartbeat, fqdn, deadline_text(at))

    async def test_heartbeat_service_and_file(self) -> None:
        path = self.mktemp()
        heart = liveness.Heartbeat(self.db, A, self.clock, time_scale=0.5, heartbeat_file=path)
        heart.startService()
        self.addCleanup(heart.stopService)
        await heart.beat()
        self.assertTrue(os.path.exists(path))
        first = os.path.getmtime(path)
        rows = await self.db.runInteraction(catalog.server_list)
        self.assertEqual([r["last_seen"][:19] for r in rows if r["fqdn"] == A], ["2013-04-02 17:05:11"])
        os.utime(path, (first - 100, first - 100))
        before = heart.beats
        self.clock.advance(liveness.HEARTBEAT_INTERVAL * 0.5)  # the loop's next beat
        deadline = reactor.seconds() + 10  # the beat writes on a real database thread
        while heart.beats <= before and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertGreater(heart.beats, before)
        self.assertGreater(os.path.getmtime(path), first - 100, "touched again")

    async def test_the_heartbeat_counts_the_servers_alive(self) -> None:
        """Itself and every server heard from within the dead interval (the intake shares its
        batches among them)."""
        heart = liveness.Heartbeat(self.db, A, self.clock)
        await heart.beat()
        self.assertEqual(heart.servers_alive, 1)
        await self.beat(B, self.clock.seconds() - 5)
        await heart.beat()
        self.assertEqual(heart.servers_alive, 2)
        await self.beat(B, self.clock.seconds() - liveness.DEAD_AFTER * liveness.HEARTBEAT_INTERVAL - 1)
        await heart.beat()
        self.assertEqual(heart.servers_alive, 1)

    async def test_server_list_and_unreachable_devices(self) -> None:
        self.api.time_scale = 1.0
        await self.beat(A, EPOCH)
        await self.beat(B, EPOCH - 31)  # three 10 s intervals and a bit
        got = await self.ok("GET", "/api/server/list/")
        servers = {s["fqdn"]: s for s in got["servers"]}
        self.assertEqual(servers[A], {"fqdn": A, "alive": True, "last_seen": "2013-04-02T17:05:11", "devices": 3})
        self.assertEqual(servers[B], {"fqdn": B, "alive": False, "last_seen": "2013-04-02T17:04:40", "devices": 2})
        details = {d["name"]: d for d in (await self.ok("GET", "/api/device/list/?details"))["devices"]}
        self.assertEqual(details["bpanda-0001"]["unreachable_since"], "2013-04-02T17:04:40")
        self.assertIsNone(details["panda-0001"]["unreachable_since"])
        summary = await self.ok("GET", "/api/pool/summary/")
        self.assertEqual(summary["unreachable_servers"],
                         [{"fqdn": B, "last_seen": "2013-04-02T17:04:40", "devices": 2}])
        await self.beat(B, EPOCH - 29)
        got = await self.ok("GET", "/api/server/list/")
        self.assertTrue(all(s["alive"] for s in got["servers"]))

    async def test_selection_avoids_dead_servers(self) -> None:
        await self.sql("UPDATE devices SET state = 'ready'")
        await self.beat(A, EPOCH - 100)
        await self.beat(B, EPOCH)
        cutoff = deadline_text(EPOCH - 30)
        for draw in range(20):
            rid = await self.add_request(server=A, state="finding_device")
            info, outcome = await self.db.runInteraction(selection.find_now, rid, [draw / 20], "2013-04-02 17:05:11",
                                                         cutoff)
            claimed = outcome.claimed
            assert claimed.device is not None
            self.assertTrue(claimed.device.name.startswith("bpanda-"), claimed.device.name)
            await self.db.runInteraction(selection.clear_claim, rid, "2013-04-02 17:05:11")

    async def test_named_request_for_a_dead_servers_device_fails_at_once(self) -> None:
        await self.sql("UPDATE devices SET state = 'ready'")
        await self.beat(B, EPOCH - 100)
        rid = await self.add_request(server=A, device="bpanda-0001", state="finding_device")
        await self.sql("DELETE FROM device_requests WHERE request_id = ?", (rid,))
        _, outcome = await self.db.runInteraction(selection.find_now, rid, [0.1], "2013-04-02 17:05:11",
                                                  deadline_text(EPOCH - 30))
        self.assertEqual(outcome, selection.FindOutcome(unreachable=(B, "2013-04-02 17:03:31")))


LivenessSQLite, LivenessMariaDB = on_both_backends(Liveness)


"""The pool in memory (mozpool.web.poolview) against the database it mirrors, on both back-ends:
equal after seeded random sequences of the real write paths, after a missed change (a gap in the
feed), after a restart and with two servers on one database; the answers served from it equal
the database path's byte for byte."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from twisted.internet import defer, task

from mozpool.broker import queries as broker_queries
from mozpool.broker import selection
from mozpool.broker.interfaces import RequestSpec
from mozpool.db import catalog, devices, logs, schema, summary
from mozpool.db.errors import Conflict
from mozpool.db.fixtures import load_fixture
from mozpool.db.pool import Cursor, Database
from mozpool.inventory import queries as inventory_queries
from mozpool.inventory.plan import Change
from mozpool.lifeguard import queries as lifeguard_queries
from mozpool.liveness import HEARTBEAT_INTERVAL, dead_before
from mozpool.statemachine import queries as machine_queries
from mozpool.timeutil import apitime, dbnow, deadline_text
from mozpool.web import events, poolview
from mozpool.web import queries as web_queries
from mozpool.web.events import ChangeFeed, EventHub
from mozpool.web.poolview import PoolView
from mozpool.web.ui import queries as ui_queries
from mozpool.web.ui import viewqueries
from tests.support.dbtest import DatabaseTest, on_both_backends
from tests.web.support import A, B, EPOCH, APITest

STATES = ("ready", "new", "pxe_booting", "failed_pxe_booting", "locked_out", "troubleshooting", "unknown",
          "maintenance_mode", "self_test_running")
REQUEST_STATES = ("new", "finding_device", "contacting_lifeguard", "pending", "ready", "failed_bad_image")
#: the write paths random_step takes, the likelier ones more than once
STEPS = (
    "state", "state", "state", "comments", "environment", "log", "new_request", "request_state",
    "claim", "claim", "release", "close", "image", "clear_image", "inventory_insert",
    "inventory_update", "inventory_move", "inventory_delete", "heartbeat", "time",
)
#: clock seconds after which the view has read the servers' heartbeats again
SERVERS_READ = HEARTBEAT_INTERVAL / 5


class Server:
    """One imaging server's feed and view over a database."""

    def __init__(self, db: Database, clock: task.Clock, fqdn: str, refresh: float = math.inf) -> None:
        self.db = db
        self.fqdn = fqdn
        self.hub = EventHub(clock)
        self.feed = ChangeFeed(db, self.hub, clock)
        # No periodic full read unless a test asks for one: it would hide a change missed.
        self.view = PoolView(db, clock, refresh=refresh)
        self.view.attach(self.feed)


class ViewTest(DatabaseTest):
    """Mixin: servers A (6 devices) and B (4 devices) on one database, A's view following it."""

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.url = self.databaseURL()
        self.db = self.makeDatabase(self.url)
        await schema.create_schema(self.db)
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        await load_fixture(self.db, A, 6, dbnow(self.clock))
        await load_fixture(self.db, B, 4, dbnow(self.clock), prefix="bpanda", relay_base_port=50001)
        self.a = Server(self.db, self.clock, A)
        self.rng = random.Random(17)
        self.inventory_ids = 1000

    def now(self) -> str:
        return dbnow(self.clock)

    async def write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the database of the server taking the writes."""
        return await getattr(self, "writer", self.db).runInteraction(fn, *args)

    # --- the property ------------------------------------------------------------------------

    async def assert_in_sync(self, server: Server) -> None:
        """The server's view, once in sync, equals one read afresh, and serves what the
        database path serves, byte for byte."""
        self.clock.advance(SERVERS_READ)
        await server.view.sync()
        fresh = PoolView(server.db, self.clock)
        await fresh.rebuild()
        self.assertEqual(server.view.snapshot(), fresh.snapshot())  # type: ignore[attr-defined]
        await self.assert_serves_the_database(server.view)

    async def assert_serves_the_database(self, view: PoolView) -> None:
        cutoff = dead_before(self.clock, 1.0)
        details = await devices.list_details(self.db, cutoff)
        self.assertEqual(view.details_body(), json.dumps({"devices": details}).encode())  # type: ignore[attr-defined]
        names = await devices.list_names(self.db)
        self.assertEqual(view.names_body(), json.dumps({"devices": names}).encode())  # type: ignore[attr-defined]
        report = await summary.pool_summary(self.db, cutoff)
        generated = apitime(self.now())
        self.assertEqual(  # type: ignore[attr-defined]
            view.summary_body(generated), json.dumps({"generated_at": generated, **report}).encode())
        for name in names:
            state = await self.write(web_queries.device_state, name)
            self.assertEqual(view.state_of(name), state)  # type: ignore[attr-defined]

    # --- the real write paths, at random -----------------------------------------------------

    async def device_ids(self, where: str = "1 = 1") -> list[int]:
        rows = await self.write(lambda c: c.execute(f"SELECT d.id FROM devices d WHERE {where} ORDER BY d.id").fetchall())
        return [int(r[0]) for r in rows]

    async def request_ids(self, where: str = "r.state <> 'closed'") -> list[int]:
        rows = await self.write(lambda c: c.execute(
            "SELECT r.id FROM requests r LEFT JOIN device_requests dr ON dr.request_id = r.id"
            f" WHERE {where} ORDER BY r.id").fetchall())
        return [int(r[0]) for r in rows]

    async def random_step(self, fqdn: str = A) -> str:
        """One write through a real write path; what it was."""
        rng, now = self.rng, self.now()
        ids = await self.device_ids()
        device = rng.choice(ids)
        step = rng.choice(STEPS)

        def write_state(c: Cursor, table: str, kind: str, row_id: int, state: str) -> None:
            old = c.scalar(f"SELECT state FROM {table} WHERE id = ?", (row_id,))
            machine_queries.write_state(c, table, kind, row_id, state, None, "{}", now,
                                        [f"entering state {state}"], old_state=old)

        if step == "state":
            await self.write(write_state, "devices", "device", device, rng.choice(STATES))
        elif step == "comments":
            await self.write(web_queries.set_comments, device, rng.choice([None, "", "flaky", "é \"quoted\""]), now)
        elif step == "environment":
            await self.write(web_queries.set_environment, device, rng.choice(["prod", "staging", "qa"]), now)
        elif step == "log":
            await self.write(logs.add_log, "device", device, "test", "a line", now)
        elif step == "new_request":
            spec = RequestSpec(assignee="tester", duration=3600, image="android")
            await self.write(broker_queries.insert_request, fqdn, "any", spec, "2013-04-02 18:05:11", now, "created")
        elif step == "request_state":
            open_ = await self.request_ids()
            if open_:
                await self.write(write_state, "requests", "request", rng.choice(open_), rng.choice(REQUEST_STATES))
        elif step == "claim":
            free = await self.request_ids("r.state <> 'closed' AND dr.device_id IS NULL")
            if free:
                try:
                    await self.write(selection.claim, rng.choice(free), device, now)
                except Conflict:
                    pass  # the device is held: nothing written
        elif step == "release":
            held = await self.request_ids("dr.device_id IS NOT NULL")
            if held:
                await self.write(selection.clear_claim, rng.choice(held), now)
        elif step == "close":
            open_ = await self.request_ids()
            if open_:
                chosen = rng.choice(open_)
                await self.write(write_state, "requests", "request", chosen, "closed")
                if rng.random() < 0.7:
                    await self.write(selection.clear_claim, chosen, now)
        elif step == "image":
            await self.write(lifeguard_queries.set_next, device, rng.choice(["android", "b2g"]), '{"b2gbase": "x"}')
            await self.write(lifeguard_queries.promote_next, device, now)
        elif step == "clear_image":
            await self.write(lifeguard_queries.clear_image, device, now)
        elif step == "inventory_insert":
            self.inventory_ids += 1
            name = f"inv-{self.inventory_ids}"
            await self.write(inventory_queries.insert_device, Change("insert", "device", name, values={
                "name": name, "fqdn": name + ".example.com", "inventory_id": self.inventory_ids,
                "mac_address": f"{self.inventory_ids:012x}", "relay_info": "", "imaging_server": fqdn,
                "hardware_type": rng.choice(["panda", "tegra"]), "hardware_model": ""}), now)
        elif step in ("inventory_update", "inventory_move"):
            key, value = (("relay_info", f"relay-{rng.randrange(99)}:bank1:relay2") if step == "inventory_update"
                          else ("imaging_server", rng.choice([A, B])))
            await self.write(inventory_queries.update_device, Change(
                "update", "device", "x", row_id=device, values={key: value}, before={key: "?"}), now)
        elif step == "inventory_delete":
            if len(ids) > 3:
                await self.write(inventory_queries.delete_device, Change(
                    "delete", "device", "x", row_id=device, values={"inventory_id": 0}), now)
        elif step == "heartbeat":
            await self.write(catalog.heartbeat, rng.choice([A, B]), deadline_text(self.clock.seconds()))
        elif step == "time":
            self.clock.advance(rng.choice([1, 5, 12, 40]))
        return step

    # --- tests -------------------------------------------------------------------------------

    async def test_equal_after_random_sequences(self) -> None:
        await self.assert_in_sync(self.a)
        seen = set()
        for _ in range(40):
            for _ in range(self.rng.randrange(1, 6)):
                seen.add(await self.random_step())
            await self.assert_in_sync(self.a)
        self.assertEqual(seen, set(STEPS))  # the sequence did take every write path
        self.assertEqual(self.a.view.builds, 1, "followed change by change, never read whole again")

    async def test_a_missed_change_is_repaired_by_the_gap(self) -> None:
        """A journal id that never appears (here: removed before the feed read it) may have been
        a change: once the hole is given up, the view reads everything again."""
        await self.assert_in_sync(self.a)
        (device,) = await self.device_ids("d.name = 'panda-0002'")
        await self.write(web_queries.set_comments, device, "missed", self.now())
        await self.write(lambda c: c.execute("DELETE FROM changes WHERE id = (SELECT MAX(id) FROM changes)"))
        (other,) = await self.device_ids("d.name = 'panda-0003'")
        await self.write(logs.add_log, "device", other, "test", "after", self.now())  # makes the hole seen
        await self.a.view.sync()
        entry = self.a.view.devices[device]
        self.assertIsNone(entry.row[devices.DETAIL_KEYS.index("comments")], "the change was missed")
        self.clock.advance(events.HOLE_SECONDS + 1)
        await self.assert_in_sync(self.a)
        self.assertEqual(self.a.view.devices[device].row[devices.DETAIL_KEYS.index("comments")], "missed")

    async def test_a_restart_reads_everything(self) -> None:
        """A new process's view starts from the database, whatever the journal says."""
        await self.assert_in_sync(self.a)
        await self.a.feed.catch_up()
        for _ in range(8):
            await self.random_step()
        # even a write that journals nothing (an older daemon, a hand-made UPDATE)
        await self.write(lambda c: c.execute("UPDATE devices SET comments = 'by hand' WHERE name = 'panda-0001'"))
        restarted = Server(self.db, self.clock, A)
        await self.assert_in_sync(restarted)
        self.assertIn(b'"comments": "by hand"', restarted.view.details_body())

    async def test_the_periodic_read_corrects_an_unjournalled_write(self) -> None:
        self.a = Server(self.db, self.clock, A, refresh=poolview.REFRESH_SECONDS)
        await self.assert_in_sync(self.a)
        await self.write(lambda c: c.execute("UPDATE devices SET comments = 'by hand' WHERE name = 'panda-0001'"))
        await self.a.view.sync()
        self.assertNotIn(b"by hand", self.a.view.details_body())
        self.clock.advance(poolview.REFRESH_SECONDS)
        await self.assert_in_sync(self.a)
        self.assertIn(b"by hand", self.a.view.details_body())
        self.assertEqual(self.a.view.corrected, 1)

    async def test_two_servers_see_each_others_changes(self) -> None:
        b = Server(self.makeDatabase(self.url), self.clock, B)
        await self.assert_in_sync(self.a)
        await self.assert_in_sync(b)
        for _ in range(6):
            for fqdn, server in ((A, self.a), (B, b)):
                self.writer = server.db
                await self.random_step(fqdn)
            await self.assert_in_sync(self.a)
            await self.assert_in_sync(b)
        self.assertEqual(self.a.view.snapshot(), b.view.snapshot())

    async def test_a_fixture_load_is_read_at_once(self) -> None:
        await self.assert_in_sync(self.a)
        await load_fixture(self.db, B, 3, self.now(), prefix="cpanda", relay_base_port=50101)
        await self.a.view.sync()
        self.assertIn("cpanda-0003", self.a.view.names)
        await self.assert_in_sync(self.a)

    async def test_ui_tables_equal_their_queries(self) -> None:
        for _ in range(25):
            await self.random_step()
        await self.a.view.sync()
        view = self.a.view
        queries_ = [
            ui_queries.DeviceQuery(),
            ui_queries.DeviceQuery(sort="state", descending=True, per_page=4, page=2),
            ui_queries.DeviceQuery(sort="hardware_type"),
            ui_queries.DeviceQuery(sort="image", descending=True),
            ui_queries.DeviceQuery(sort="request"),
            ui_queries.DeviceQuery(sort="comments"),
            ui_queries.DeviceQuery(sort="category", held="no"),
            ui_queries.DeviceQuery(name="PANDA-000", held="yes"),
            ui_queries.DeviceQuery(filters={"hardware_type": "unknown"}),
            ui_queries.DeviceQuery(filters={"environment": "prod", "imaging_server": A}),
            ui_queries.DeviceQuery(filters={"category": "failed"}),
        ]
        for query in queries_:
            self.assertEqual(viewqueries.device_page(view, query), await self.write(ui_queries.device_page, query),
                             query)
        self.assertEqual(viewqueries.needs_a_human(view, 3), await self.write(ui_queries.needs_a_human, 3))
        self.assertEqual(viewqueries.category_counts(view), await self.write(ui_queries.category_counts))
        for server in ("", A):
            self.assertEqual(viewqueries.wired_devices(view, server), await self.write(ui_queries.wired_devices, server))


ViewTestSQLite, ViewTestMariaDB = on_both_backends(ViewTest)


class ServedFromTheView(APITest):
    """The API with a view answers as the API without one (tests/web/test_reads.py holds the
    latter to the spec), and a write through the API is seen by the next read."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.view = await self.makeView()
        self.api = self.makeAPI(view=self.view)

    async def both(self, path: str) -> tuple[Any, Any]:
        """The answers to ``path`` with the view and without it."""
        self.makeAPI()
        without = await self.call("GET", path)
        self.api = self.makeAPI(view=self.view)
        return await self.call("GET", path), without

    async def assert_same(self, *paths: str) -> None:
        for path in paths:
            with_view, without = await self.both(path)
            self.assertEqual((with_view.code, with_view.body), (without.code, without.body), path)
            self.assertEqual(with_view.header("content-type"), without.header("content-type"))

    async def test_reads_equal_the_database_path(self) -> None:
        await self.add_request(device="panda-0002")
        await self.sql("UPDATE devices SET state = 'failed_pxe_booting', comments = 'x' WHERE name = 'bpanda-0001'")
        self.clock.advance(poolview.REFRESH_SECONDS)  # hand-made rows: read at the periodic check
        await self.assert_same("/api/device/list/", "/api/device/list/?details=1", "/api/device/list?details",
                               "/api/pool/summary/", "/api/device/panda-0002/state/?cache=1",
                               "/api/device/nosuch/state/?cache=1")

    async def test_a_dead_server_shows_in_both(self) -> None:
        await self.db.runInteraction(catalog.heartbeat, B, deadline_text(self.clock.seconds()))
        self.clock.advance(10 * HEARTBEAT_INTERVAL)
        await self.assert_same("/api/device/list/?details=1", "/api/pool/summary/")
        self.assertIn(b'"unreachable_since": "2013-04-02T17:05:11"', (await self.call("GET", "/api/device/list/?details")).body)
        # the UI's devices table marks them from the view as from the database
        cutoff = dead_before(self.clock, 1.0)
        await self.view.sync()
        self.assertEqual(viewqueries.down_servers(self.view, cutoff), {B: "2013-04-02 17:05:11"})
        self.assertEqual(await self.db.runInteraction(ui_queries.down_servers, cutoff), {B: "2013-04-02 17:05:11"})

    async def test_a_write_is_seen_by_the_next_read(self) -> None:
        await self.ok("POST", "/api/device/panda-0001/set-comments/", {"comments": "seen at once"})
        by_name = {d["name"]: d for d in (await self.ok("GET", "/api/device/list/?details=1"))["devices"]}
        self.assertEqual(by_name["panda-0001"]["comments"], "seen at once")
        await self.db.runInteraction(
            lambda c: machine_queries.write_state(c, "devices", "device", by_name["bpanda-0002"]["id"], "ready", None,
                                                  "{}", dbnow(self.clock), [], old_state="new"))
        summary_ = await self.ok("GET", "/api/pool/summary/")
        self.assertEqual(summary_["by_category"]["idle"], 1)

    async def test_cached_state_comes_from_the_view_with_cache_headers(self) -> None:
        self.clock.advance(2.5)
        answer = await self.call("GET", "/api/device/panda-0001/state/?cache=1")
        self.assertEqual((answer.code, answer.json()), (200, {"state": "new"}))
        max_age = int(self.view.state_expires() - self.clock.seconds()) + 1
        self.assertLessEqual(max_age, poolview.STATE_TTL + 1)
        self.assertEqual(answer.header("cache-control"), f"public, max-age={max_age}")
        self.assertIsNotNone(answer.header("expires"))
        # a change reaches the cached answer with the next poll, without a read of the state
        await self.db.runInteraction(
            lambda c: machine_queries.write_state(c, "devices", "device", 1, "ready", None, "{}",
                                                  dbnow(self.clock), [], old_state="new"))
        await self.feed.catch_up()
        self.assertEqual(await self.ok("GET", "/api/device/panda-0001/state/?cache=1"), {"state": "ready"})

    async def test_a_stale_view_is_not_used_for_cached_states(self) -> None:
        """Past STALE_SECONDS without a journal read, ?cache=1 reads the database."""
        await self.sql("UPDATE devices SET state = 'ready' WHERE name = 'panda-0001'")
        self.assertEqual(await self.ok("GET", "/api/device/panda-0001/state/?cache=1"), {"state": "new"})
        self.clock.advance(poolview.STALE_SECONDS + 1)
        self.assertEqual(await self.ok("GET", "/api/device/panda-0001/state/?cache=1"), {"state": "ready"})

    async def test_the_ui_device_table_is_served_from_the_view(self) -> None:
        from mozpool.web.ui.app import OperatorUI

        ui = OperatorUI(self.db, A, self.clock, view=self.view)
        calls: list[Any] = []
        original = self.view.read

        async def counted(fn: Any, *args: Any) -> Any:
            calls.append(fn)
            return await original(fn, *args)

        self.view.read = counted  # type: ignore[method-assign]
        rows, total = await ui._read(ui_queries.device_page, ui_queries.DeviceQuery())
        self.assertEqual((total, calls), (5, [viewqueries.device_page]))
        self.assertEqual(rows, (await self.db.runInteraction(ui_queries.device_page, ui_queries.DeviceQuery()))[0])



ServedFromTheViewSQLite, ServedFromTheViewMariaDB = on_both_backends(ServedFromTheView)

"""The database layer on both back-ends: schema, claims, queries, logs, purge, outages."""

from __future__ import annotations

import pymysql
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mozpool.db import catalog, devices, fixtures, logs, requests, schema, summary
from mozpool.db.errors import Conflict, DatabaseUnavailable, SchemaError
from mozpool.db.pool import Cursor, Database, _mysql_open
from mozpool.db.purge import purge
from tests.support.dbtest import DatabaseTest, on_both_backends

NOW = "2026-11-26 12:00:00"


def add_request(c: Cursor, server: int, state: str = "new", expires: str = NOW) -> int:
    image = c.scalar("SELECT id FROM images WHERE name = 'android'")
    c.execute(
        "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
        " state, state_counters, environment) VALUES (?, 'any', 'ci@example.com', ?, ?, '{}', ?, '{}', 'any')",
        (server, expires, image, state),
    )
    return c.lastrowid


class Queries(DatabaseTest):
    async def seed(self, n: int = 40, fqdn: str = "a.example.com:8010") -> None:
        await fixtures.load_fixture(self.db, fqdn, n, NOW)

    async def test_schema_version(self) -> None:
        self.assertEqual(await schema.current_version(self.db), schema.latest_version(self.db.backend))
        await schema.require_current(self.db)
        with self.assertRaises(SchemaError):
            await schema.create_schema(self.db)
        self.assertEqual(await schema.upgrade(self.db), schema.latest_version(self.db.backend))

    async def test_fixture(self) -> None:
        await self.seed(40)
        names = await devices.list_names(self.db)
        self.assertEqual(len(names), 40)
        self.assertEqual(names[:2], ["panda-0001", "panda-0002"])
        details = await devices.list_details(self.db)
        self.assertEqual(details[32]["relay_info"], "localhost:20002:bank1:relay1")
        self.assertEqual(details[9]["relay_info"], "localhost:20001:bank2:relay2")
        self.assertEqual({d["environment"] for d in details}, {"prod", "staging"})
        self.assertEqual([i["name"] for i in await catalog.list_images(self.db)], ["android", "b2g"])
        pxe = await catalog.list_pxe_configs(self.db)
        self.assertEqual(len(pxe), 4)
        self.assertIn("%IPADDRESS%", pxe[0]["contents"])
        boards = await self.db.query("SELECT name, fqdn FROM relay_boards ORDER BY name")
        self.assertEqual(boards, [("localhost-20001", "localhost:20001"), ("localhost-20002", "localhost:20002")])
        # A second server seeding the same database reuses the catalog.
        await fixtures.load_fixture(self.db, "b.example.com", 2, NOW, prefix="b-panda")
        self.assertEqual(len(await devices.list_names(self.db)), 42)
        self.assertEqual(await catalog.server_fqdns(self.db), ["a.example.com:8010", "b.example.com"])

    async def test_duplicate_device_is_conflict(self) -> None:
        await self.seed(2)
        with self.assertRaises(Conflict):
            await self.seed(2)

    async def test_claim_unique_both_ways(self) -> None:
        """A device can be held by one request, and a request holds one device."""
        await self.seed(2)

        def setup(c: Cursor) -> tuple[int, int]:
            server = catalog.server_id(c, "a.example.com:8010")
            return add_request(c, server), add_request(c, server)

        r1, r2 = await self.db.runInteraction(setup)
        claim = "INSERT INTO device_requests (request_id, device_id) VALUES (?, ?)"
        await self.db.runInteraction(lambda c: c.execute(claim, (r1, 1)) and None)
        with self.assertRaises(Conflict):
            await self.db.runInteraction(lambda c: c.execute(claim, (r2, 1)) and None)
        with self.assertRaises(Conflict):
            await self.db.runInteraction(lambda c: c.execute(claim, (r1, 2)) and None)
        details = await devices.list_details(self.db)
        self.assertEqual([d["request_id"] for d in details], [r1, None])
        listed = await requests.list_requests(self.db)
        self.assertEqual([(r["id"], r["assigned_device"]) for r in listed], [(r1, "panda-0001"), (r2, "")])
        req = await self.db.runInteraction(requests.get_request, r1)
        self.assertEqual(req["url"], f"http://a.example.com:8010/api/request/{r1}/")
        self.assertEqual(req["expires"], "2026-11-26T12:00:00")
        self.assertIsNone(await self.db.runInteraction(requests.get_request, 2**70))

    async def test_failed_transaction_rolls_back(self) -> None:
        await self.seed(1)

        def half(c: Cursor) -> None:
            c.execute("UPDATE devices SET comments = 'x' WHERE name = 'panda-0001'")
            c.execute("INSERT INTO imaging_servers (fqdn) VALUES ('a.example.com:8010')")

        with self.assertRaises(Conflict):
            await self.db.runInteraction(half)
        self.assertIsNone((await devices.list_details(self.db))[0]["comments"])

    async def test_logs_timeperiod_and_limit(self) -> None:
        await self.seed(1)

        def write(c: Cursor) -> None:
            for i, ts in enumerate(["2026-11-26 11:00:00", "2026-11-26 11:59:00", "2026-11-26 11:59:30"]):
                logs.add_log(c, "device", 1, "statemachine", f"  line {i}", ts)
            self.assertFalse(logs.add_device_log_by_name(c, "nope", "syslog", "x", NOW))

        await self.db.runInteraction(write)
        everything = await self.db.runInteraction(logs.get_log, "device", 1, NOW)
        self.assertEqual([e["message"] for e in everything], ["line 0", "line 1", "line 2"])
        self.assertEqual(set(everything[0]), {"id", "timestamp", "source", "message"})
        self.assertEqual(everything[0]["timestamp"], "2026-11-26T11:00:00")
        recent = await self.db.runInteraction(logs.get_log, "device", 1, NOW, 120)
        self.assertEqual([e["message"] for e in recent], ["line 1", "line 2"])
        last = await self.db.runInteraction(logs.get_log, "device", 1, NOW, 0, 1)
        self.assertEqual([e["message"] for e in last], ["line 2"])

    async def test_summary(self) -> None:
        await self.seed(4)

        def shape(c: Cursor) -> None:
            c.execute("UPDATE devices SET state = 'ready' WHERE name IN ('panda-0001', 'panda-0002')")
            c.execute("UPDATE devices SET state = 'failed_pxe_booting' WHERE name = 'panda-0003'")
            server = catalog.server_id(c, "a.example.com:8010")
            c.execute("INSERT INTO device_requests (request_id, device_id) VALUES (?, 1)", (add_request(c, server),))

        await self.db.runInteraction(shape)
        s = await summary.pool_summary(self.db)
        self.assertEqual(s["by_category"], {"in_use": 1, "idle": 1, "processing": 1, "failed": 1})
        self.assertEqual(s["by_hardware_type"]["panda"]["total"], 4)
        self.assertEqual([d["name"] for d in s["failed_devices"]], ["panda-0003"])

    async def test_purge(self) -> None:
        await self.seed(1)

        def write(c: Cursor) -> tuple[int, int]:
            server = catalog.server_id(c, "a.example.com:8010")
            old = add_request(c, server, "closed", "2026-11-01 00:00:00")
            new = add_request(c, server, "ready", "2026-11-25 00:00:00")
            c.execute("INSERT INTO device_requests (request_id, device_id) VALUES (?, 1)", (old,))
            logs.add_log(c, "device", 1, "x", "old", "2026-11-01 00:00:00")
            logs.add_log(c, "device", 1, "x", "new", "2026-11-20 00:00:00")
            logs.add_log(c, "request", old, "x", "old", "2026-11-20 00:00:00")
            return old, new

        old, new = await self.db.runInteraction(write)
        counts = await purge(self.db, NOW, 14, 7)
        # the three log lines were journalled as changes, all older than the journal's day
        self.assertEqual(counts, {"device_logs": 1, "request_logs": 1, "requests": 1, "changes": 3,
                                  "state_history": 0, "boots": 0})
        left = await self.db.query("SELECT id FROM requests")
        self.assertEqual(left, [(new,)])
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM device_requests"), [(0,)])
        self.assertEqual(await purge(self.db, NOW), {"device_logs": 0, "request_logs": 0, "requests": 0, "changes": 0,
                                                     "state_history": 0, "boots": 0})

    async def test_varchar_names_case_sensitive(self) -> None:
        await self.seed(1)
        self.assertIsNone(await self.db.runInteraction(devices.owner, "PANDA-0001"))
        self.assertEqual(await self.db.runInteraction(devices.owner, "panda-0001"), (1, "a.example.com:8010"))


QueriesSQLite, QueriesMariaDB = on_both_backends(Queries)


class UnreachableDatabase(DatabaseTest):
    """An unreachable database is DatabaseUnavailable (the API's 503), promptly."""

    def setUp(self) -> None:
        pass

    async def test_unreachable(self) -> None:
        if self.backend == "sqlite":
            url = "sqlite:///" + self.mktemp() + "/missing-dir/x.sqlite"
        else:
            url = "mysql://nobody:nothing@127.0.0.1:1/none"
        db = self.makeDatabase(url)
        start = reactor.seconds()
        with self.assertRaises(DatabaseUnavailable):
            await db.query("SELECT 1")
        self.assertLess(reactor.seconds() - start, 10)


UnreachableDatabaseSQLite, UnreachableDatabaseMariaDB = on_both_backends(UnreachableDatabase)


class MySQLSession(DatabaseTest, TestCase):
    """What every MySQL connection sets when it opens."""

    backend = "mysql"

    def setUp(self) -> None:
        pass

    def test_utc_and_whole_id_lists(self) -> None:
        """Times in UTC; GROUP_CONCAT (dead servers, an image's hardware types) not cut at
        MySQL's default of 1,024 bytes."""
        db = self.makeDatabase()
        conn = pymysql.connect(**db.pool.connkw)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("SET SESSION group_concat_max_len = 1024, time_zone = '+02:00'")
        _mysql_open(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT @@SESSION.group_concat_max_len, @@SESSION.time_zone")
            self.assertEqual(cur.fetchone(), (1 << 20, "+00:00"))


class SchemaNotReady(DatabaseTest):
    """A database without the schema yet (the API listens while start-up creates it) is
    DatabaseUnavailable -- a 503 to retry, not a 500."""

    def setUp(self) -> None:
        self.db = self.makeDatabase()

    async def test_missing_table_is_unavailable(self) -> None:
        with self.assertRaises(DatabaseUnavailable):
            await self.db.query("SELECT name FROM devices")


SchemaNotReadySQLite, SchemaNotReadyMariaDB = on_both_backends(SchemaNotReady)


class QueryBounds(DatabaseTest):
    """The 10 s bound (here 0.2 s) counts from when a query starts running, not while it waits
    its turn: a burst is served; a query that hangs is answered DatabaseUnavailable."""

    async def test_queued_query_is_served_and_a_stuck_one_fails(self) -> None:
        import threading

        from twisted.internet import task

        self.db.timeout = 0.2
        gate = threading.Event()
        self.addCleanup(gate.set)
        stuck = self.db.runInteraction(lambda c: gate.wait(10))  # holds SQLite's only connection
        queued = self.db.query("SELECT 1") if self.backend == "sqlite" else None
        # The stuck query is answered at its bound while it still hangs (the gate opens only
        # after that, however late a busy machine runs the bound's timer) ...
        with self.assertRaises(DatabaseUnavailable):
            await stuck
        # ... and the queued one, kept waiting past the bound, is then served.
        await task.deferLater(reactor, 0.2, gate.set)
        if queued is not None:
            self.assertEqual(await queued, [(1,)], "waiting behind the stuck query is not a failure")


QueryBoundsSQLite, QueryBoundsMariaDB = on_both_backends(QueryBounds)


class URLs(DatabaseTest):
    def setUp(self) -> None:
        pass

    def test_bad_urls(self) -> None:
        for url in ("postgres://x/y", "sqlite://", "nonsense"):
            self.assertRaises(ValueError, Database.fromURL, url, reactor)


URLsSQLite, _ = on_both_backends(URLs)
del _


class Upgrades(DatabaseTest):
    """A version-1 database is upgraded in place, and keeps its rows."""

    def setUp(self) -> None:
        self.db = self.makeDatabase()

    async def test_v1_to_latest(self) -> None:
        v1 = schema.split_statements((schema.sql_dir() / self.db.backend / "schema-v1.sql").read_text())

        def create_v1(c: Cursor) -> None:
            for s in v1:
                c.execute(s)
            c.execute("INSERT INTO schema_version (version) VALUES (1)")

        await self.db.runInteraction(create_v1)
        await fixtures.load_fixture(self.db, "a.example.com", 2, NOW)
        with self.assertRaises(SchemaError):
            await schema.require_current(self.db)
        self.assertEqual(await schema.upgrade(self.db), schema.latest_version(self.db.backend))
        await schema.require_current(self.db)
        self.assertEqual(len(await devices.list_names(self.db)), 2)
        await self.db.query("UPDATE devices SET state_timeout = ? WHERE name = 'panda-0001'", ("2026-11-26 12:00:00.250",))
        self.assertEqual(
            await self.db.query("SELECT state_timeout FROM devices WHERE state_timeout > ?", ("2026-11-26 12:00:00",)),
            [("2026-11-26 12:00:00.250",)],
            "deadlines keep their milliseconds",
        )

    async def test_missing_step_fails_loudly(self) -> None:
        await schema.create_schema(self.db)
        await self.db.query("UPDATE schema_version SET version = 0")
        with self.assertRaises(SchemaError) as e:
            await schema.upgrade(self.db)
        self.assertIn("no upgrade step to v1", str(e.exception))


UpgradesSQLite, UpgradesMariaDB = on_both_backends(Upgrades)


class CallerGoesAway(DatabaseTest):
    """A caller that stops waiting (an HTTP client hung up) is not a database failure."""

    async def test_cancel_is_not_unavailable(self) -> None:
        import threading

        from twisted.internet import defer

        gate = threading.Event()
        self.addCleanup(gate.set)
        d = self.db.runInteraction(lambda c: gate.wait(10))
        d.cancel()
        gate.set()
        failure = self.failureResultOf(d)
        self.assertTrue(failure.check(defer.CancelledError), failure)


CallerGoesAwaySQLite, CallerGoesAwayMariaDB = on_both_backends(CallerGoesAway)

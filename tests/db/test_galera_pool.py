"""The database layer on a private 3-node MariaDB Galera cluster (labservers/galera.py):
the schema created from three nodes at once, claims unique across nodes (certification
failures run again, then Conflict), causal reads, and a node outside the primary component
answering DatabaseUnavailable at once until it rejoins."""

from __future__ import annotations

from collections import Counter

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mozpool.broker import selection
from mozpool.db import fixtures, schema
from mozpool.db.errors import Conflict, DatabaseUnavailable, SchemaError
from mozpool.db.pool import Cursor, Database
from labservers.galera import galeraCluster, galeraURLs

NOW = "2026-11-26 12:00:00"


class GaleraDatabase(TestCase):
    timeout = 180

    def databases(self) -> list[Database]:
        dbs = [Database.fromURL(url, reactor) for url in galeraURLs(self)]
        for db in dbs:
            self.addCleanup(db.close)
        return dbs

    async def test_schema_from_three_nodes_at_once(self) -> None:
        """What three daemons starting together do: one creates the schema, the others are
        told to retry (SchemaError, or a 503-kind failure), never left with half a schema."""
        dbs = self.databases()
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(schema.create_schema(db)) for db in dbs], consumeErrors=True)
        won = [r for ok, r in results if ok]
        lost = [r for ok, r in results if not ok]
        self.assertEqual(len(won), 1, results)
        for failure in lost:
            self.assertTrue(failure.check(SchemaError, Conflict, DatabaseUnavailable), failure)
        for db in dbs:
            self.assertEqual(await schema.current_version(db), schema.latest_version("mysql"))
            await schema.require_current(db)
        tables = [sorted(r[0] for r in await db.query("SHOW TABLES")) for db in dbs]
        self.assertEqual(tables[0], tables[1])
        self.assertEqual(tables[0], tables[2])
        # A second round, as the losers' retry does: nothing to create.
        for db in dbs:
            with self.assertRaises(SchemaError):
                await schema.create_schema(db)

    async def test_daemons_start_on_other_nodes_during_an_upgrade(self) -> None:
        """``mozpool-db upgrade`` on one node while daemons start on the others: until the
        last step has replicated they are told the schema is not current (and retry); then
        every node has the same, current schema.  (Run the upgrade on one node only: two
        upgrades at once on different nodes can interrupt each other's DDL.)"""
        dbs = self.databases()
        v1 = schema.split_statements((schema.sql_dir() / "mysql" / "schema-v1.sql").read_text())

        def create_v1(c: Cursor) -> None:
            for s in v1:
                c.execute(s)
            c.execute("INSERT INTO schema_version (version) VALUES (1)")

        await dbs[0].runInteraction(create_v1)
        latest = schema.latest_version("mysql")
        for db in dbs[1:]:
            with self.assertRaises(SchemaError):
                await schema.require_current(db)
        upgrading = defer.Deferred.fromCoroutine(schema.upgrade(dbs[0]))
        refused = Counter[int]()
        while True:
            done = upgrading.called
            for i, db in enumerate(dbs[1:], 1):
                try:
                    await schema.require_current(db)
                except SchemaError:
                    self.assertFalse(done, "current on node 1, not yet on another")
                    refused[i] += 1
            if done:
                break
            await _sleep(0.01)
        self.assertEqual(await upgrading, latest)
        self.assertGreater(sum(refused.values()), 0)
        columns = "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = DATABASE()"
        shapes = [sorted(await db.query(columns)) for db in dbs]
        self.assertEqual(shapes[0], shapes[1])
        self.assertEqual(shapes[0], shapes[2])

    async def test_claims_unique_across_nodes(self) -> None:
        """Every node claims the same few devices for its own requests at once: each device
        ends held by exactly one request; the losers see Conflict, nothing else."""
        dbs = self.databases()
        await schema.create_schema(dbs[0])
        await fixtures.load_fixture(dbs[0], "a.example.com", 4, NOW)
        device_ids = [int(r[0]) for r in await dbs[0].query("SELECT id FROM devices ORDER BY id")]
        requests = [await dbs[i % 3].runInteraction(_add_request, f"g{i}") for i in range(24)]
        outcomes: Counter[str] = Counter()

        async def claim(i: int, request_id: int) -> None:
            db = dbs[i % 3]
            device = device_ids[i % len(device_ids)]
            try:
                await db.runInteraction(selection.claim, request_id, device, NOW)
                outcomes["claimed"] += 1
            except Conflict:
                outcomes["conflict"] += 1

        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(claim(i, rid)) for i, rid in enumerate(requests)], consumeErrors=True)
        self.assertEqual(outcomes, Counter(claimed=len(device_ids), conflict=len(requests) - len(device_ids)))
        # Read on every node (a different one from most writers): one holder per device.
        for db in dbs:
            held = await db.query("SELECT device_id, COUNT(*) FROM device_requests GROUP BY device_id")
            self.assertEqual(sorted(held), [(d, 1) for d in device_ids])

    async def test_certification_failure_runs_again(self) -> None:
        """Two nodes claim one device in transactions that overlap: both INSERTs succeed
        locally, the second write set to be ordered fails certification (a deadlock error at
        commit, or a brute-force abort); it runs again and then sees the first's claim."""
        dbs = self.databases()
        await schema.create_schema(dbs[0])
        await fixtures.load_fixture(dbs[0], "a.example.com", 1, NOW)
        device = int((await dbs[0].query("SELECT id FROM devices"))[0][0])
        first, second = [await dbs[i].runInteraction(_add_request, f"c{i}") for i in (0, 1)]
        runs: Counter[int] = Counter()

        def slow_claim(c: Cursor, node: int, request_id: int) -> None:
            runs[node] += 1
            selection.claim(c, request_id, device, NOW)
            c.execute("SELECT SLEEP(0.5)")  # both hold their INSERT uncommitted at once

        results = await defer.DeferredList(
            [dbs[0].runInteraction(slow_claim, 0, first), dbs[1].runInteraction(slow_claim, 1, second)],
            consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True], results)
        loser = next(i for i, (ok, _) in enumerate(results) if not ok)
        self.assertTrue(results[loser][1].check(Conflict), results[loser][1])
        self.assertEqual(runs[loser], 2, "lost certification, ran again, then met the winner's claim")
        self.assertEqual(runs[1 - loser], 1)
        held = await dbs[2].query("SELECT request_id FROM device_requests WHERE device_id = ?", (device,))
        self.assertEqual(held, [((first, second)[1 - loser],)])

    async def test_reads_are_causal(self) -> None:
        dbs = self.databases()
        for db in dbs:
            self.assertEqual(await db.query("SELECT @@wsrep_sync_wait"), [(1,)])
        await dbs[0].query("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
        for i in range(20):
            await dbs[i % 3].query("INSERT INTO t VALUES (?, ?)", (i, i))
            self.assertEqual(await dbs[(i + 1) % 3].query("SELECT COUNT(*) FROM t"), [(i + 1,)])

    async def test_node_outside_the_primary_component(self) -> None:
        """A node cut off from the others is unavailable (503) at once, not a source of stale
        rows; it serves again, with what the others wrote meanwhile, once it rejoins."""
        cluster = galeraCluster(self)
        dbs = self.databases()
        await dbs[0].query("CREATE TABLE t (id INT PRIMARY KEY)")
        await dbs[0].query("INSERT INTO t VALUES (1)")
        self.assertEqual(await dbs[2].query("SELECT COUNT(*) FROM t"), [(1,)])
        node = cluster.nodes[2]
        node.isolate()  # blocks until the node reports wsrep_ready OFF
        start = reactor.seconds()
        with self.assertRaises(DatabaseUnavailable) as caught:
            await dbs[2].query("SELECT COUNT(*) FROM t")
        self.assertLess(reactor.seconds() - start, 5.0, "answered, not left to the 10 s bound")
        self.assertIn("WSREP", str(caught.exception))
        self.assertFalse(dbs[2].available)
        start = reactor.seconds()
        with self.assertRaises(DatabaseUnavailable):
            await dbs[2].query("SELECT COUNT(*) FROM t")
        self.assertLess(reactor.seconds() - start, 1.0, "at once while unavailable (not the 10 s bound)")
        await dbs[0].query("INSERT INTO t VALUES (2)")  # the primary component goes on
        node.rejoin()
        deadline = reactor.seconds() + 20
        while not dbs[2].available and reactor.seconds() < deadline:
            await _sleep(0.1)
        self.assertTrue(dbs[2].available)
        self.assertEqual(await dbs[2].query("SELECT COUNT(*) FROM t"), [(2,)])


def _add_request(c: Cursor, assignee: str) -> int:
    server = c.scalar("SELECT id FROM imaging_servers WHERE fqdn = 'a.example.com'")
    image = c.scalar("SELECT id FROM images WHERE name = 'android'")
    c.execute(
        "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
        " state, state_counters, state_timeout, environment) VALUES (?, 'any', ?, ?, ?, '{}', 'finding_device',"
        " '{}', NULL, 'any')",
        (server, assignee, "2026-11-27 12:00:00", image),
    )
    return c.lastrowid


async def _sleep(seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)

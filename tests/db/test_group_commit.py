"""Group commit (mozpool/db/pool.py): interactions queued behind busy connections run together in
one transaction; a member that raises gets its error and the others run again -- on both
back-ends for real, and over a pool the test runs by hand for the order and the faults."""

from __future__ import annotations

from typing import Any

import pymysql
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mozpool.db.errors import Conflict
from mozpool.db.pool import Cursor, Database, alone
from tests.db.test_pool_faults import FakeTxn, ManualPool, ThreadlessClock
from tests.support.dbtest import DatabaseTest, on_both_backends, statements_sent


class Burst(DatabaseTest):
    async def test_a_burst_is_served_and_a_failing_member_undoes_only_its_own_writes(self) -> None:
        await self.db.runInteraction(lambda c: c.execute(
            "INSERT INTO images (name, boot_config_keys, can_reuse, hidden, has_sut_agent)"
            " VALUES ('gc-base', '[]', 0, 0, 0)"))

        def add(c: Cursor, i: int) -> int:
            c.execute("INSERT INTO images (name, boot_config_keys, can_reuse, hidden, has_sut_agent)"
                      " VALUES (?, '[]', 0, 0, 0)", (f"gc-{i}",))
            if i % 10 == 3:
                raise ValueError(f"member {i} fails after its insert")
            return i

        def duplicate(c: Cursor) -> None:
            c.execute("INSERT INTO images (name, boot_config_keys, can_reuse, hidden, has_sut_agent)"
                      " VALUES ('gc-base', '[]', 0, 0, 0)")

        ds = [self.db.runInteraction(add, i) for i in range(100)] + [self.db.runInteraction(duplicate)]
        results = await defer.DeferredList(ds, consumeErrors=True)
        for i, (ok, value) in enumerate(results[:100]):
            if i % 10 == 3:
                self.assertFalse(ok)
                self.assertIsInstance(value.value, ValueError)
            else:
                self.assertEqual((ok, value), (True, i))
        self.assertFalse(results[100][0])
        self.assertIsInstance(results[100][1].value, Conflict)
        names = {r[0] for r in await self.db.query("SELECT name FROM images WHERE name LIKE ?", ("gc-%",))}
        self.assertEqual(names, {"gc-base"} | {f"gc-{i}" for i in range(100) if i % 10 != 3})


BurstSQLite, BurstMariaDB = on_both_backends(Burst)


class HeldBackLines(DatabaseTest):
    """Log lines go at the transaction's end as one multi-row INSERT (Cursor.insert_later), with
    their ids given to their journal entries, which keep their places."""

    async def burst(self) -> tuple[list[tuple], list[tuple]]:
        from mozpool.db import changes, logs

        ids = {f"d{i}": 100 + i for i in range(4)}  # log tables have no foreign keys

        def member(c: Cursor, i: int) -> int | None:
            device = ids[f"d{i % 4}"]
            logs.add_log(c, "device", device, "test", f"{i} first", "2026-11-30 12:00:00")
            changes.record(c, changes.DEVICE_ROW, "2026-11-30 12:00:00", device_id=device, n=i)
            logs.add_log(c, "device", device, "test", f"{i} second", "2026-11-30 12:00:00")
            if i % 5 == 2:
                return logs.add_log_now(c, "device", device, "test", f"{i} now", "2026-11-30 12:00:00")
            return None

        results = await defer.gatherResults([self.db.runInteraction(member, i) for i in range(20)])
        lines = await self.db.query("SELECT id, device_id, message FROM device_logs ORDER BY id")
        journal = await self.db.query("SELECT id, kind, device_id, data FROM changes ORDER BY id")
        now_ids = {r[0] for r in lines if r[2].endswith(" now")}
        self.assertEqual({r for r in results if r is not None}, now_ids)
        return lines, journal

    def check(self, lines: list[tuple], journal: list[tuple]) -> None:
        import json

        self.assertEqual(len(lines), 20 * 2 + 4)
        # Each member's lines in the order it logged them (ids follow the order logged).
        for i in range(20):
            mine = [r[2] for r in lines if r[2].split()[0] == str(i)]
            self.assertEqual(mine, [f"{i} first", f"{i} second"] + ([f"{i} now"] if i % 5 == 2 else []))
        # Every line's journal entry carries its id and text, and keeps its place among the
        # member's other entries (line, row change, line).
        by_id = {r[0]: r for r in lines}
        entries = [(kind, json.loads(data)) for _, kind, _, data in journal if kind in ("device_log", "device_row")]
        self.assertEqual(len([e for e in entries if e[0] == "device_log"]), len(lines))
        for kind, data in entries:
            if kind == "device_log":
                self.assertEqual(by_id[data["id"]][2], data["message"])
        for i in range(20):
            order = [("row" if k == "device_row" else d["message"]) for k, d in entries
                     if (k == "device_row" and d["n"] == i) or (k == "device_log" and d["message"].split()[0] == str(i))]
            self.assertEqual(order[:3], [f"{i} first", "row", f"{i} second"])

    async def test_lines_held_back_keep_their_order_and_their_journal_ids(self) -> None:
        self.check(*await self.burst())

    async def test_the_same_without_insert_returning(self) -> None:
        from mozpool.db import pool

        self.patch(pool, "_returning", lambda txn, mysql: False)
        self.check(*await self.burst())

    async def test_a_transactions_lines_are_one_statement(self) -> None:
        from mozpool.db import logs, pool

        sent = statements_sent(self)
        await self.db.runInteraction(lambda c: c.execute("INSERT INTO imaging_servers (fqdn) VALUES ('a')"))

        def five(c: Cursor) -> None:
            for i in range(5):
                logs.add_log(c, "request", 7, "test", f"line {i}", "2026-11-30 12:00:00")

        del sent[:]
        await self.db.runInteraction(five)
        inserts = [sql for sql in sent if "request_logs" in sql]
        self.assertEqual(len(inserts), 1 if pool._returning(None, False) or self.backend == "mysql" else 5)
        rows = await self.db.query("SELECT message FROM request_logs ORDER BY id")
        self.assertEqual([r[0] for r in rows], [f"line {i}" for i in range(5)])


HeldBackLinesSQLite, HeldBackLinesMariaDB = on_both_backends(HeldBackLines)


class RecordingTxn(FakeTxn):
    def __init__(self) -> None:
        super().__init__({"SELECT 1": [(1,)], "SELECT @@wsrep_on": [(0,)]})
        self.statements: list[str] = []

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.statements.append(sql)
        super().execute(sql, params)


class Batching(SynchronousTestCase):
    """One connection (MySQL's dialect, so no BEGIN is needed); the test is its thread."""

    def setUp(self) -> None:
        self.clock = ThreadlessClock()
        self.pool = ManualPool(connections=1)
        self.db = Database(self.pool, "mysql", self.clock, "mysql://test/x", timeout=10.0)  # type: ignore[arg-type]
        self.ran: list[str] = []

    def call(self, name: str, error: Exception | None = None) -> defer.Deferred[Any]:
        def fn(c: Cursor) -> str:
            self.ran.append(name)
            if error is not None:
                raise error
            return name

        return self.db.runInteraction(fn)

    def run_next(self) -> RecordingTxn:
        """Run the oldest transaction not yet run; return what it was sent."""
        work = self.pool.waiting()[0]
        txn = RecordingTxn()
        work.began = True
        try:
            work.result = work.interaction(txn)
        except Exception:
            from twisted.python.failure import Failure

            work.result = Failure()
        work.end()
        return txn

    def test_calls_queued_behind_a_busy_connection_share_one_transaction(self) -> None:
        first = self.call("first")
        rest = [self.call(f"c{i}") for i in range(5)]
        self.assertEqual(len(self.pool.work), 1, "one connection: the rest wait in the queue")
        self.run_next()
        self.assertEqual(self.successResultOf(first), "first")
        self.assertEqual(len(self.pool.work), 2, "the five queued calls: one transaction")
        self.run_next()
        self.assertEqual([self.successResultOf(d) for d in rest], [f"c{i}" for i in range(5)])
        self.assertEqual(self.ran, ["first"] + [f"c{i}" for i in range(5)])
        self.assertEqual(self.pool.waiting(), [])

    def test_a_member_that_raises_gets_its_error_and_the_others_run_again(self) -> None:
        self.call("busy")
        ok1, bad, ok2 = self.call("a"), self.call("b", ValueError("b fails")), self.call("c")
        self.run_next()
        self.run_next()  # a, b (raises): the transaction is rolled back
        self.failureResultOf(bad, ValueError)
        self.assertNoResult(ok1)
        self.run_next()  # a and c again, in their order
        self.assertEqual((self.successResultOf(ok1), self.successResultOf(ok2)), ("a", "c"))
        self.assertEqual(self.ran, ["busy", "a", "b", "a", "c"])

    def test_a_member_that_loses_the_transaction_reruns_and_the_others_run_again(self) -> None:
        """A deadlock rolls the whole transaction back: the member that met it runs again by the
        usual rule, the others are queued again first, in their order, and nobody fails."""
        deadlocks = [pymysql.err.OperationalError(1213, "Deadlock found")]

        def flaky(c: Cursor) -> str:
            self.ran.append("flaky")
            if deadlocks:
                raise deadlocks.pop()
            return "flaky"

        self.call("busy")
        a, f, b = self.call("a"), self.db.runInteraction(flaky), self.call("b")
        self.run_next()
        self.run_next()  # a, flaky (deadlock): lost; a and b queued again, flaky reruns after them
        for _ in range(3):
            if self.pool.waiting():
                self.run_next()
        self.assertEqual([self.successResultOf(d) for d in (a, f, b)], ["a", "flaky", "b"])
        self.assertEqual(self.ran, ["busy", "a", "flaky", "a", "b", "flaky"])

    def test_a_batch_that_fails_as_a_whole_runs_each_member_alone(self) -> None:
        """A failure at commit (a Galera certification conflict) says nothing of which member
        caused it: each runs again in a transaction of its own."""
        from twisted.python.failure import Failure

        self.call("busy")
        a, b = self.call("a"), self.call("b")
        self.run_next()
        work = self.pool.waiting()[0]
        work.began = True
        work.interaction(RecordingTxn())  # both ran ...
        work.result = Failure(pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"))
        work.end()  # ... and the commit failed
        self.assertNoResult(a)
        self.assertEqual(len(self.pool.waiting()), 1, "a alone first")
        self.run_next()
        self.run_next()
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("a", "b"))
        self.assertEqual(self.ran, ["busy", "a", "b", "a", "b"])
        self.assertEqual(len(self.pool.work), 4, "busy; a and b together; a alone; b alone")

    def test_an_interaction_marked_alone_never_shares(self) -> None:
        @alone
        def ddl(c: Cursor) -> str:
            return "ddl"

        self.call("busy")
        before, d, after = self.call("a"), self.db.runInteraction(ddl), self.call("b")
        for _ in range(4):
            if self.pool.waiting():
                self.run_next()
        self.assertEqual([self.successResultOf(x) for x in (before, d, after)], ["a", "ddl", "b"])
        self.assertEqual(len(self.pool.work), 4, "busy; a; ddl alone; b")

    def test_a_call_abandoned_while_queued_never_runs(self) -> None:
        self.call("busy")
        gone, kept = self.call("gone"), self.call("kept")
        gone.cancel()
        self.failureResultOf(gone)
        self.run_next()
        self.run_next()
        self.assertEqual(self.successResultOf(kept), "kept")
        self.assertEqual(self.ran, ["busy", "kept"])

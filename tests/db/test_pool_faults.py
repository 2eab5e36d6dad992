"""Database faults answer fast (mozpool/db/pool.py): a hung server fails waiting and new calls
within the bound and then at once, with a Retry-After; a probe brings calls back; abandoned
work is skipped; a Galera node outside the primary component (1047) is unavailable; lost
transactions (deadlock, Galera certification) run again.

Most tests drive :class:`Database` over a pool the test runs by hand and a Clock; the last
stops (SIGSTOP) the private MariaDB for real."""

from __future__ import annotations

import os
import signal
from typing import Any, Callable

import pymysql
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.db.errors import Conflict, DatabaseUnavailable
from mozpool.db.pool import PROBE_GAP, PROBE_INTERVAL, PROBE_WAIT, RERUN_ATTEMPTS, RETRY_AFTER, Database


class ThreadlessClock(task.Clock):
    """A Clock whose "pool threads" are the test itself."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class FakeTxn:
    """What adbapi hands an interaction: answers the probe's statements from ``answers``."""

    def __init__(self, answers: dict[str, list[tuple[Any, ...]]]) -> None:
        self.answers = answers
        self.rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        for prefix, rows in self.answers.items():
            if sql.startswith(prefix):
                if isinstance(rows, Exception):
                    raise rows
                self.rows = list(rows)
                return
        self.rows = []

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


PLAIN = {"SELECT 1": [(1,)], "SELECT @@wsrep_on": [(0,)]}
GALERA_READY = {"SELECT 1": [(1,)], "SELECT @@wsrep_on": [(1,)], "SHOW STATUS": [("wsrep_ready", "ON")]}
GALERA_NON_PRIMARY = {"SELECT 1": [(1,)], "SELECT @@wsrep_on": [(1,)], "SHOW STATUS": [("wsrep_ready", "OFF")]}


class Work:
    """One interaction handed to the pool: the test begins it (a thread takes it) and ends it."""

    def __init__(self, interaction: Callable[[Any], Any]) -> None:
        self.interaction = interaction
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self.result: Any = None
        self.began = False

    def begin(self, answers: dict[str, Any] | None = None) -> None:
        """A thread runs it; the answer is held until :meth:`end` (a hung server)."""
        self.began = True
        try:
            self.result = self.interaction(FakeTxn(answers or PLAIN))
        except Exception:
            self.result = Failure()

    def end(self) -> None:
        self.deferred.callback(self.result) if not isinstance(self.result, Failure) else self.deferred.errback(
            self.result)

    def run(self, answers: dict[str, Any] | None = None) -> None:
        self.begin(answers)
        self.end()


class ManualPool:
    def __init__(self, connections: int = 16) -> None:
        self.work: list[Work] = []
        self.closed = False
        #: adbapi's cp_max: the batches that run at once
        self.max = connections

    def runInteraction(self, interaction: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        w = Work(lambda txn: interaction(txn, *args))
        self.work.append(w)
        return w.deferred

    def waiting(self) -> list[Work]:
        return [w for w in self.work if not w.began]

    def close(self) -> None:
        self.closed = True


class Faults(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = ThreadlessClock()
        self.pool = ManualPool()
        self.db = Database(self.pool, "mysql", self.clock, "mysql://test/x", timeout=10.0)  # type: ignore[arg-type]
        self.ran: list[str] = []

    def call(self, name: str) -> defer.Deferred[Any]:
        def fn(c: Any) -> str:
            self.ran.append(name)
            return name

        return self.db.runInteraction(fn)

    def assertUnavailable(self, d: defer.Deferred[Any]) -> DatabaseUnavailable:
        f = self.failureResultOf(d, DatabaseUnavailable)
        self.assertEqual(getattr(f.value, "retry_after", None), RETRY_AFTER)
        return f.value  # type: ignore[return-value]

    def hang(self, calls: int = 7, running: int = 5) -> list[defer.Deferred[Any]]:
        """``calls`` calls, the first ``running`` taken by pool threads, none answered."""
        ds = [self.call(f"c{i}") for i in range(calls)]
        self.addCleanup(lambda: [d.addErrback(lambda f: None) for d in ds])
        for w in self.pool.work[:running]:
            w.begin()
        return ds

    def test_hung_server_fails_every_waiting_call_within_the_bound(self) -> None:
        ds = self.hang()
        self.clock.advance(9.9)
        self.assertEqual([d.called for d in ds], [False] * 7)
        self.clock.advance(0.1)
        for d in ds:
            self.assertIn("no answer from the database for 10 s", str(self.assertUnavailable(d)))
        self.assertFalse(self.db.available)

    def test_then_new_calls_fail_at_once(self) -> None:
        """A call waits at most PROBE_WAIT for the probe begun when the hang was found; once
        that probe has waited that long, calls fail at once."""
        self.hang()
        self.clock.advance(10)
        before = len(self.pool.work)
        d = self.call("late")
        self.assertNoResult(d)
        self.clock.advance(PROBE_WAIT)
        self.assertUnavailable(d)
        self.assertUnavailable(self.call("later"))
        self.assertEqual(len(self.pool.work), before, "no work handed to the pool while it is unavailable")

    def test_first_call_after_the_server_is_back_is_served(self) -> None:
        """A call made while the database is unavailable asks again at once (no more often than
        every PROBE_GAP): when the server is back, that call is served."""
        d = self.call("x")
        refused = pymysql.err.OperationalError(2003, "Can't connect")
        self.pool.work[0].deferred.errback(refused)
        self.assertUnavailable(d)
        self.pool.work[-1].deferred.errback(refused)  # the first probe
        self.assertUnavailable(self.call("too soon"))
        self.clock.advance(PROBE_GAP)
        d = self.call("y")
        self.assertNoResult(d)
        self.pool.work[-1].run(PLAIN)  # the probe that call began: the server is back
        self.assertTrue(self.db.available)
        self.pool.work[-1].run()
        self.assertEqual(self.successResultOf(d), "y")

    def test_work_abandoned_in_the_queue_is_skipped(self) -> None:
        self.hang(calls=7, running=5)
        self.clock.advance(10)
        queued = [w for w in self.pool.work if not w.began and w.interaction is not None][:2]
        for w in queued:
            w.run()
        self.assertNotIn("c5", self.ran)
        self.assertNotIn("c6", self.ran)
        # The hung ones answer late: nobody is told twice.
        for w in self.pool.work[:5]:
            w.end()

    def test_probe_brings_calls_back(self) -> None:
        self.hang()
        self.clock.advance(10)
        probe = self.pool.work[-1]
        self.assertEqual((probe.began, len(self.pool.work)), (False, 8), "one probe asked at once")
        probe.began = True
        probe.deferred.errback(pymysql.err.OperationalError(2013, "Lost connection"))
        self.assertFalse(self.db.available)
        self.clock.advance(PROBE_INTERVAL - 0.01)
        self.assertEqual(len(self.pool.work), 8, "the next probe waits for the interval")
        self.clock.advance(0.01)
        self.assertEqual(len(self.pool.work), 9)
        self.pool.work[-1].run(PLAIN)
        self.assertTrue(self.db.available)
        d = self.call("after")
        self.pool.work[-1].run()
        self.assertEqual(self.successResultOf(d), "after")

    def test_busy_server_that_answers_is_not_unavailable(self) -> None:
        """Work queued behind busy connections waits its turn while answers keep coming."""
        self.pool.max = 5
        self.db.batch_max = 1  # one call a transaction, as without group commit
        ds = [self.call(f"c{i}") for i in range(40)]
        self.assertEqual(len(self.pool.work), 5, "one transaction per connection; the rest queue")
        for w in self.pool.work[:5]:
            w.begin()
        for second in range(30):
            # Five connections, each query 5 s: one answer a second, the rest wait their turn.
            self.clock.advance(1)
            done = next(w for w in self.pool.work if w.began and not w.deferred.called)
            done.end()
            nxt = next((w for w in self.pool.work if not w.began), None)
            if nxt is not None:
                nxt.begin()
        self.assertTrue(self.db.available)
        self.assertEqual([self.successResultOf(d) for d in ds[:30]], [f"c{i}" for i in range(30)])
        self.assertEqual([d.called for d in ds[30:]], [False] * 10, "still waiting, not failed")

    def test_refused_connection_marks_unavailable(self) -> None:
        d = self.call("x")
        self.pool.work[0].deferred.errback(pymysql.err.OperationalError(2003, "Can't connect"))
        self.assertUnavailable(d)
        self.assertFalse(self.db.available)

    def test_galera_node_outside_the_primary_component(self) -> None:
        """1047 is unavailable, not a bug (500); the probe keeps the database unavailable while
        wsrep_ready is OFF and brings it back once the node is ready."""
        d = self.call("x")
        self.pool.work[0].deferred.errback(
            pymysql.err.OperationalError(1047, "WSREP has not yet prepared node for application use"))
        self.assertIn("WSREP", str(self.assertUnavailable(d)))
        self.assertFalse(self.db.available)
        self.pool.waiting()[-1].run(GALERA_NON_PRIMARY)
        self.assertFalse(self.db.available)
        self.assertUnavailable(self.call("y"))
        self.clock.advance(PROBE_INTERVAL)
        self.pool.waiting()[-1].run(GALERA_READY)
        self.assertTrue(self.db.available)

    def test_commit_cut_off_from_the_primary_component(self) -> None:
        """A node that leaves the primary component during a commit answers 1180 (CI saw it): the
        transaction was rolled back and the node cannot serve, so unavailable, not a bug (500)."""
        d = self.call("x")
        self.pool.work[0].deferred.errback(pymysql.err.OperationalError(
            1180, "Error while appending streaming replication fragment(provider status: Not connected to"
                  " Primary Component)"))
        self.assertIn("Primary Component", str(self.assertUnavailable(d)))
        self.assertFalse(self.db.available)
        self.pool.waiting()[-1].run(GALERA_READY)
        self.assertTrue(self.db.available)

    def test_certification_failure_runs_again(self) -> None:
        """Galera reports a write set that lost certification as a deadlock (1213) at commit."""
        d = self.call("x")
        for attempt in range(3):
            self.pool.work[-1].deferred.errback(pymysql.err.OperationalError(1213, "Deadlock found"))
            self.clock.advance(1)
        self.pool.work[-1].run()
        self.assertEqual(self.successResultOf(d), "x")
        self.assertEqual(len(self.pool.work), 4)
        self.assertTrue(self.db.available, "losing a race is not an outage")

    def test_table_definition_changed_runs_again(self) -> None:
        """MariaDB asks for the transaction to be run again (1412) when a table changed after
        its snapshot began: that is a rerun, not a bug (500)."""
        d = self.call("x")
        self.pool.work[-1].deferred.errback(pymysql.err.OperationalError(
            1412, "Table definition has changed, please retry transaction"))
        self.pool.work[-1].run()
        self.assertEqual(self.successResultOf(d), "x")
        self.assertEqual(len(self.pool.work), 2)

    def test_a_schema_being_created_is_not_ready(self) -> None:
        """A daemon answers HTTP while another creates the schema: a table not there yet (1146)
        or one still missing its later columns (1054, seen in CI on the Galera cluster) is 503
        "database not ready", not a bug (500), and no outage."""
        for error in (pymysql.err.ProgrammingError(1146, "Table 'mozpool.devices' doesn't exist"),
                      pymysql.err.OperationalError(1054, "Unknown column 'd.failure' in 'SELECT'")):
            d = self.call("x")
            self.pool.work[-1].deferred.errback(error)
            self.assertTrue(str(self.assertUnavailable(d)).startswith("database not ready"), error)
            self.assertTrue(self.db.available)

    def test_certification_failure_gives_up_as_conflict(self) -> None:
        d = self.call("x")
        for attempt in range(RERUN_ATTEMPTS):
            self.pool.work[-1].deferred.errback(pymysql.err.OperationalError(1213, "Deadlock found"))
            self.clock.advance(1)
        self.failureResultOf(d, Conflict)
        self.assertEqual(len(self.pool.work), RERUN_ATTEMPTS)

    def test_close_stops_probing(self) -> None:
        self.hang()
        self.clock.advance(10)
        self.pool.work[-1].run(GALERA_NON_PRIMARY)  # the first probe fails
        self.db.close()
        self.assertTrue(self.pool.closed)
        before = len(self.pool.work)
        self.clock.advance(100)
        self.assertEqual(len(self.pool.work), before, "no probe after close")


class HungMariaDB(TestCase):
    """SIGSTOP the private MariaDB: calls fail within the bound, then at once; back after SIGCONT."""

    timeout = 60

    async def test_sigstop(self) -> None:
        from labservers.mariadb import mariadbServer, mariadbURL

        server = mariadbServer(self)
        url = mariadbURL(self)
        # A bound well above PROBE_WAIT, so that each wait below is told from the next with room
        # for a busy machine's scheduling delays.
        timeout = 3.0
        db = Database.fromURL(url, reactor, timeout=timeout)
        self.addCleanup(db.close)
        self.assertEqual(await db.query("SELECT 1"), [(1,)])
        pid = server._process.pid  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        start = reactor.seconds()
        results = await defer.DeferredList([db.query("SELECT 1") for _ in range(8)], consumeErrors=True)
        waited = reactor.seconds() - start
        self.assertEqual([ok for ok, _ in results], [False] * 8)
        for _, f in results:
            self.assertTrue(f.check(DatabaseUnavailable), f)
        self.assertLess(waited, timeout + 1.5, "all eight within one bound, not one after another")
        # The probe begun at the hang's discovery (at most PROBE_WAIT, not the bound), then none.
        for bound in (PROBE_WAIT + 1.5, 0.1):
            start = reactor.seconds()
            with self.assertRaises(DatabaseUnavailable):
                await db.query("SELECT 1")
            self.assertLess(reactor.seconds() - start, bound)
        os.kill(pid, signal.SIGCONT)
        deadline = reactor.seconds() + 20
        while not db.available and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(db.available)
        self.assertEqual(await db.query("SELECT 1"), [(1,)])

"""While the database cannot answer: calls that need it answer 503 with Retry-After at once,
and ``state/?cache=1`` answers from memory while the snapshot is younger than
``statecache.STALE_SECONDS`` (mozpool/web/statecache.py, mozpool/db/pool.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.db.errors import Conflict as DatabaseConflict
from mozpool.db.errors import DatabaseUnavailable
from mozpool.web import statecache
from mozpool.web.statecache import StateSnapshot
from tests.web.support import APITest
from tests.web.test_statecache import ControlledDB

STATE = "/api/device/panda-0001/state/"


class DatabaseAway(APITest):
    def go_away(self) -> None:
        """What the pool does when the server hangs or refuses: calls fail at once."""
        self.db.down_reason = "no answer from the database for 10 s (test)"

    async def test_503_with_retry_after(self) -> None:
        self.go_away()
        for path in ("/api/device/list/", STATE, "/api/request/list/", "/api/pool/summary/"):
            answer = await self.error(503, "GET", path)
            self.assertEqual(answer.header("retry-after"), "5", path)
            self.assertIn("database unavailable", answer.json()["error"])
        answer = await self.error(503, "POST", "/api/device/any/request/",
                                  {"assignee": "x", "duration": 60, "image": "android"})
        self.assertEqual(answer.header("retry-after"), "5")
        self.assertEqual((await self.call("GET", "/api/version/")).code, 200, "what needs no database goes on")

    async def test_cached_state_from_memory_while_young(self) -> None:
        await self.ok("GET", STATE + "?cache=1")  # the snapshot
        builds = self.api.snapshot.builds
        self.go_away()
        self.clock.advance(statecache.STALE_SECONDS - 1)
        answer = await self.call("GET", STATE + "?cache=1")
        self.assertEqual((answer.code, answer.json()), (200, {"state": "new"}))
        self.assertEqual(answer.header("cache-control"), "public, max-age=1")
        # Answered before routing (the hot path), from memory, without asking the database.
        calls: list[str] = []
        self.patch(self.api.snapshot, "states", lambda: calls.append("routed"))
        self.assertEqual((await self.call("GET", STATE + "?cache=1")).code, 200)
        self.assertEqual(calls, [])
        self.assertEqual(self.api.snapshot.builds, builds)
        self.assertGreaterEqual(self.api.snapshot.stale_answers, 2)
        # The plain call needs the database: 503.
        await self.error(503, "GET", STATE)

    async def test_too_old_a_snapshot_is_not_an_answer(self) -> None:
        await self.ok("GET", STATE + "?cache=1")
        self.go_away()
        self.clock.advance(statecache.STALE_SECONDS + 1)
        answer = await self.error(503, "GET", STATE + "?cache=1")
        self.assertEqual(answer.header("retry-after"), "5")

    async def test_back_to_normal(self) -> None:
        await self.ok("GET", STATE + "?cache=1")
        self.go_away()
        await self.sql_when_back("UPDATE devices SET state = 'ready' WHERE name = 'panda-0001'")
        self.clock.advance(30)
        self.assertEqual(await self.ok("GET", STATE + "?cache=1"), {"state": "new"})
        self.db.down_reason = ""
        self.assertEqual(await self.ok("GET", STATE + "?cache=1"), {"state": "ready"}, "rebuilt")
        self.assertEqual(await self.ok("GET", STATE), {"state": "ready"})

    async def sql_when_back(self, statement: str) -> None:
        reason, self.db.down_reason = self.db.down_reason, ""
        await self.sql(statement)
        self.db.down_reason = reason


class DatabaseAwaySQLite(DatabaseAway, TestCase):
    """The pool's own fault handling (MariaDB only) is tested in tests/db/test_pool_faults.py;
    here its verdict is set by hand, on SQLite, where nothing probes it back."""

    backend = "sqlite"


class SlowDB(ControlledDB):
    """Answers when the test says so; ``available`` as the pool says, and then fails at once."""

    available = True

    def runInteraction(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        if not self.available:
            return defer.fail(DatabaseUnavailable("down"))
        return super().runInteraction(fn, *args)


class StaleSnapshot(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.db = SlowDB()
        self.snapshot = StateSnapshot(self.db, self.clock)  # type: ignore[arg-type]
        first = self.get()
        self.db.pending.pop().callback({"p1": "ready"})
        self.successResultOf(first)
        self.clock.advance(10)  # stale, young

    def get(self) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self.snapshot.states())

    def test_slow_rebuild_answers_from_memory_after_the_wait(self) -> None:
        d = self.get()
        self.assertNoResult(d)
        self.clock.advance(statecache.REBUILD_WAIT)
        self.assertEqual(self.successResultOf(d)[0], {"p1": "ready"})
        # The rebuild goes on and lands: the next call gets the new snapshot at once.
        self.db.pending.pop().callback({"p1": "new"})
        self.assertEqual(self.successResultOf(self.get())[0], {"p1": "new"})
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer left behind")

    def test_failed_rebuild_answers_from_memory(self) -> None:
        d = self.get()
        self.db.pending.pop().errback(DatabaseUnavailable("hung"))
        self.assertEqual(self.successResultOf(d)[0], {"p1": "ready"})

    def test_unavailable_database_is_not_asked(self) -> None:
        self.db.available = False
        self.assertEqual(self.snapshot.at_once()[0], {"p1": "ready"})  # type: ignore[index]
        self.assertEqual(self.successResultOf(self.get())[0], {"p1": "ready"})
        self.assertEqual(self.db.pending, [])
        self.clock.advance(statecache.STALE_SECONDS)
        self.assertIsNone(self.snapshot.at_once())
        self.failureResultOf(self.get(), DatabaseUnavailable)

    def test_other_failures_are_not_hidden(self) -> None:
        d = self.get()
        self.db.pending.pop().errback(ZeroDivisionError())
        self.failureResultOf(d, ZeroDivisionError)


class LostToConcurrentWork(APITest, TestCase):
    """A transaction that kept losing to concurrent work (mozpool.db.pool gives up after
    RERUN_ATTEMPTS as Conflict), or a write a unique index refused where no handler expected
    one: a 409 the caller may retry, not a 500."""

    backend = "sqlite"

    async def test_409_not_500(self) -> None:
        def lose(fn: Any, *args: Any, **kw: Any) -> defer.Deferred[Any]:
            return defer.fail(DatabaseConflict("transaction lost 5 times to concurrent work: deadlock"))

        self.patch(self.db, "runInteraction", lose)
        answer = await self.error(409, "GET", "/api/request/list/")
        self.assertIn("lost 5 times", answer.json()["error"])
        self.assertEqual(self.flushLoggedErrors(), [])

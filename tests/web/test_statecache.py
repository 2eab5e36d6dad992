"""The device-state snapshot: rebuilt at most every 5 s, one rebuild for concurrent misses."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from mozpool.db.errors import DatabaseUnavailable
from mozpool.web.statecache import StateSnapshot


class ControlledDB:
    """runInteraction answers only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []

    def runInteraction(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d


class SnapshotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.db = ControlledDB()
        self.snapshot = StateSnapshot(self.db, self.clock)  # type: ignore[arg-type]

    def get(self) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self.snapshot.states())

    def test_concurrent_misses_share_one_query(self) -> None:
        first, second = self.get(), self.get()
        self.assertEqual(len(self.db.pending), 1)
        self.db.pending.pop().callback({"p1": "ready"})
        self.assertEqual(self.successResultOf(first), ({"p1": "ready"}, 5.0))
        self.assertEqual(self.successResultOf(second), ({"p1": "ready"}, 5.0))
        self.clock.advance(4.9)
        self.assertEqual(self.successResultOf(self.get())[0], {"p1": "ready"})
        self.assertEqual(self.db.pending, [])
        self.clock.advance(0.1)
        third = self.get()
        self.assertEqual(len(self.db.pending), 1)
        self.db.pending.pop().callback({"p1": "new"})
        self.assertEqual(self.successResultOf(third), ({"p1": "new"}, 10.0))
        self.assertEqual(self.snapshot.builds, 2)

    def test_failed_rebuild_fails_every_waiter_and_retries_next_time(self) -> None:
        first, second = self.get(), self.get()
        self.db.pending.pop().errback(DatabaseUnavailable("down"))
        self.failureResultOf(first, DatabaseUnavailable)
        self.failureResultOf(second, DatabaseUnavailable)
        again = self.get()
        self.assertEqual(len(self.db.pending), 1)
        self.db.pending.pop().callback({})
        self.assertEqual(self.successResultOf(again), ({}, 5.0))

"""Gathered work (mozpool/db/gathered.py): items that arrive while a batch is in the database go
together in the next one, each gets its own result or error, and a failed batch fails only its
own items -- over a database stand-in whose interactions the test finishes by hand."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mozpool.db.gathered import Gathered


class HandDatabase:
    """runInteraction(fn) waits until the test calls :meth:`finish`."""

    def __init__(self) -> None:
        self.running: list[tuple[Callable[[Any], Any], defer.Deferred[Any]]] = []

    def runInteraction(self, fn: Callable[[Any], Any]) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self.running.append((fn, d))
        return d

    def finish(self, i: int = 0) -> None:
        fn, d = self.running.pop(i)
        try:
            result = fn(object())
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


def doubled(items: Sequence[int]) -> Callable[[Any], list[Any]]:
    def serve(cursor: Any) -> list[Any]:
        if 13 in items:
            raise RuntimeError("the batch failed")
        return [ValueError(f"odd {i}") if i % 2 else i * 2 for i in items]

    return serve


class Batches(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = HandDatabase()
        self.served: list[list[int]] = []

        def serve(items: Sequence[int]) -> Callable[[Any], list[Any]]:
            self.served.append(list(items))
            return doubled(items)

        self.gathered: Gathered[int, int] = Gathered(self.db, serve, most=3)  # type: ignore[arg-type]

    def test_items_arriving_meanwhile_go_together_each_with_its_result(self) -> None:
        ds = [self.gathered.submit(i) for i in (2, 4, 6, 8, 3)]
        self.assertEqual(self.served, [[2]], "the first goes alone, at once")
        self.db.finish()
        self.assertEqual(self.successResultOf(ds[0]), 4)
        self.assertEqual(self.served, [[2], [4, 6, 8]], "the rest wait, at most `most` a batch")
        self.db.finish()
        self.assertEqual([self.successResultOf(d) for d in ds[1:4]], [8, 12, 16])
        self.assertEqual(self.served[-1], [3])
        self.db.finish()
        self.assertIsInstance(self.failureResultOf(ds[4], ValueError).value, ValueError)
        self.assertEqual(self.db.running, [])

    def test_a_failed_batch_fails_its_items_and_the_next_is_served(self) -> None:
        first = self.gathered.submit(13)
        later = self.gathered.submit(4)
        self.db.finish()
        self.failureResultOf(first, RuntimeError)
        self.db.finish()
        self.assertEqual(self.successResultOf(later), 8)

    def test_lanes_run_batches_side_by_side(self) -> None:
        gathered: Gathered[int, int] = Gathered(self.db, doubled, most=10, lanes=2)  # type: ignore[arg-type]
        ds = [gathered.submit(i) for i in (2, 4, 6)]
        self.assertEqual(len(self.db.running), 2, "two lanes: two batches at once")
        self.db.finish(1)
        self.assertEqual(self.successResultOf(ds[1]), 8)
        self.assertEqual(len(self.db.running), 2, "the lane freed takes what waits")
        self.db.finish(1)
        self.db.finish(0)
        self.assertEqual([self.successResultOf(ds[0]), self.successResultOf(ds[2])], [4, 12])

    def test_a_result_missing_fails_every_item_of_the_batch(self) -> None:
        gathered: Gathered[int, int] = Gathered(  # type: ignore[arg-type]
            self.db, lambda items: lambda c: [1], most=10)
        d = gathered.submit(1)
        ds = [gathered.submit(i) for i in (1, 2)]  # wait together behind the first
        self.db.finish()
        self.assertEqual(self.successResultOf(d), 1)
        self.db.finish()
        self.failureResultOf(ds[0], RuntimeError)  # which result is whose is unknown: neither is given
        self.failureResultOf(ds[1], RuntimeError)

"""mozpool.heap: start-up's objects frozen out of the collector's full passes."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from mozpool import heap


class FreezeStartUp(SynchronousTestCase):
    def setUp(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)

    def test_survivors_frozen_and_collections_rarer(self) -> None:
        class Node:
            pass

        kept = [Node() for _ in range(1000)]
        cycle = Node()
        cycle.me = cycle  # type: ignore[attr-defined]
        del cycle  # garbage before the freeze: collected, not frozen
        frozen = heap.freeze_start_up()
        # (a few more may be frozen by the time it is asked: the test process has other threads)
        self.assertAlmostEqual(frozen, gc.get_freeze_count(), delta=50)
        self.assertGreaterEqual(frozen, 1000)
        self.assertFalse(any(isinstance(o, Node) for o in gc.get_objects()), "out of the collector's sight")
        self.assertEqual(gc.get_threshold(), heap.THRESHOLDS)
        # What is made later is collected as before, cycles included.
        later = Node()
        later.me = later  # type: ignore[attr-defined]
        del later
        self.assertGreaterEqual(gc.collect(), 1)
        self.assertEqual(len(kept), 1000)

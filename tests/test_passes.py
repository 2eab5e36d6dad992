"""mozpool.passes: wake-ups during a pass coalesce into one more pass; a failing pass is logged
and does not stop the next one."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mozpool.passes import Passes


class Recording(Passes):
    def __init__(self) -> None:
        super().__init__()
        self.gates: list[defer.Deferred[None]] = []
        self.fail_next = False
        self.more = 0

    async def step(self) -> bool:
        gate: defer.Deferred[None] = defer.Deferred()
        self.gates.append(gate)
        await gate
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        if self.more:
            self.more -= 1
            return True
        return False


class PassesTests(SynchronousTestCase):
    def test_wakeups_during_a_pass_make_one_more(self) -> None:
        p = Recording()
        p.wake()
        p.wake()
        p.wake()
        self.assertEqual((len(p.gates), p.busy), (1, True))
        p.gates[0].callback(None)
        self.assertEqual(len(p.gates), 2, "three wake-ups, two passes")
        p.gates[1].callback(None)
        self.assertEqual((p.passes, p.busy), (2, False))

    def test_a_pass_may_ask_for_another(self) -> None:
        p = Recording()
        p.more = 1
        p.wake()
        p.gates[0].callback(None)
        p.gates[1].callback(None)
        self.assertEqual((p.passes, p.busy), (2, False))

    def test_a_failing_pass_is_logged_and_the_next_wake_runs(self) -> None:
        p = Recording()
        p.fail_next = True
        p.wake()
        p.gates[0].callback(None)
        self.assertFalse(p.busy)
        p.wake()
        self.assertEqual(len(p.gates), 2)
        p.gates[1].callback(None)
        self.assertEqual(p.passes, 2)

    def test_stop_waits_for_the_pass_and_refuses_more(self) -> None:
        p = Recording()
        p.wake()
        stopped = p.stop()
        self.assertNoResult(stopped)
        p.gates[0].callback(None)
        self.successResultOf(stopped)
        p.wake()
        self.assertEqual(len(p.gates), 1)

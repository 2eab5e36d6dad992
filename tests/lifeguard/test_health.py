"""Fault isolation by blast radius (issue 15): the device machine's health rows and the health
monitor, driven with events and Clock advances against a real database, a recording fake of the
hardware and a fake probe of the power controllers."""

from __future__ import annotations

import configparser
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mozpool.bmm.interfaces import PowerResult
from mozpool.db import changes, health
from mozpool.lifeguard.health import HealthService, HealthSettings
from mozpool.lifeguard.machine import EVENTS, NOTICES, OUTCOMES, STATES
from mozpool.lifeguard.service import LifeGuard
from mozpool.lifeguard.states import BASIC_PLEASE, DEVICE_STATES, HEALTH_STATES, PARKED_STATES
from tests.lifeguard.support import DEV, FQDN, FakeHardware, LifeGuardTest
from tests.support.dbtest import on_both_backends

BOARD = "localhost:20001"  # the fixture's first board: panda-0001, panda-0002 (and other-0001)
DEV2 = "panda-0002"
IMAGE_ARGS = {"image": "b2g", "boot_config": '{"b2gbase": "http://x/"}'}


class FakeProbe:
    """The relay test, answered by the test: ``answer`` at once, or held until :meth:`reply`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answer: bool | None = True
        self.waiting: list[defer.Deferred[PowerResult]] = []

    def __call__(self, controller: str) -> "defer.Deferred[PowerResult]":
        self.calls.append(controller)
        if self.answer is None:
            d: defer.Deferred[PowerResult] = defer.Deferred()
            self.waiting.append(d)
            return d
        return defer.succeed(PowerResult(self.answer, "" if self.answer else "deadline of 10.0s passed"))

    def reply(self, ok: bool) -> None:
        self.waiting.pop(0).callback(PowerResult(ok, "" if ok else "refused"))


class Table(SynchronousTestCase):
    """The health rows as Automat sees them."""

    def test_health_states_are_defined_once(self) -> None:
        self.assertEqual(set(STATES), DEVICE_STATES)
        for state in HEALTH_STATES:
            self.assertIn(state, BASIC_PLEASE, "an operator can always test or service a device")
        self.assertIn("held", PARKED_STATES)

    def test_notices_and_outcomes_are_not_events(self) -> None:
        self.assertFalse(EVENTS & NOTICES)
        self.assertFalse(EVENTS & OUTCOMES)

    def test_every_outcome_is_given_somewhere_and_leads_somewhere(self) -> None:
        """Each outcome input has rows (a decision's answer is always a row of the table)."""
        from mozpool.lifeguard.machine import builder

        rows = list(builder._automaton.allTransitions())  # type: ignore[attr-defined]
        inputs = {row[1] for row in rows}
        self.assertEqual(OUTCOMES - inputs, set())
        # the health rows, as the spec reads them
        table = {(row[0].name, row[1]): row[2].name for row in rows}
        self.assertEqual(table[("pc_power_cycling", "board_at_fault")], "board_suspect")
        self.assertEqual(table[("pxe_booting", "cap_reached")], "held")
        self.assertEqual(table[("board_suspect", "board_ok")], "start_self_test")
        self.assertEqual(table[("held", "timeout")], "start_self_test")
        self.assertEqual(table[("ready", "unclaimed")], "board_suspect")


class Settings(SynchronousTestCase):
    def parse(self, text: str) -> HealthSettings:
        parser = configparser.ConfigParser()
        parser.read_string(text)
        return HealthSettings.from_config(parser)

    def test_defaults_and_keys(self) -> None:
        self.assertEqual(self.parse(""), HealthSettings())
        s = self.parse("[health]\nboard_failures = 4\nboard_window = 120\nquarantine_cap = 2\nenabled = no\n")
        self.assertEqual((s.board_failures, s.board_window, s.quarantine_cap, s.enabled), (4, 120.0, 2, False))

    def test_bad_values_are_refused(self) -> None:
        for bad in ("board_failures = 0", "board_window = 0", "probe_interval = x", "colour = red",
                    "check_interval = -1"):
            self.assertRaises(ValueError, self.parse, f"[health]\n{bad}\n")


class HealthTest(LifeGuardTest):
    """Two pandas of ours behind one board, the monitor on: 2 devices make a board suspect, one
    automatic quarantine per window."""

    settings = HealthSettings(board_failures=2, board_window=600, probe_interval=30, probe_max_interval=120,
                              check_interval=0, quarantine_cap=1, quarantine_window=600)

    def makeLifeGuard(self, hw: FakeHardware | None = None, http_client: Any = None, in_process: bool = True) -> LifeGuard:
        self.probe = FakeProbe()
        lg = LifeGuard(self.db, self.clock, hw or self.hw, FQDN, self.time_scale, http_client=http_client,
                       request_events=self.request_event if in_process else None, health=self.settings,
                       probe=self.probe)
        runner_post = lg.runner.post

        def post(key: str, event: str, args: dict[str, Any] | None = None) -> "defer.Deferred[Any]":
            d = runner_post(key, event, args)
            self.posted.append(d)
            return d

        lg.runner.post = post  # type: ignore[method-assign]
        self.driver = lg.driver
        assert lg.health is not None
        self.monitor = lg.health
        return lg

    async def settle(self) -> None:
        """Also wait for the monitor's judgements of probes (they post to devices)."""
        await super().settle()
        while self.monitor._judging:
            await self.monitor.idle()
            await super().settle()

    async def board(self) -> health.Board:
        found = await self.db.runInteraction(health.board, BOARD)
        assert found is not None
        return found

    async def tick(self) -> None:
        await self.monitor.tick()
        await self.settle()

    async def suspect_board(self) -> None:
        await self.monitor.suspect(BOARD, "test")
        await self.settle()

    async def board_events(self) -> list[dict[str, Any]]:
        found = await self.db.runInteraction(changes.read_after, 0)
        return [ch.data for ch in found if ch.kind == changes.BOARD_HEALTH]


class PowerPath(HealthTest):
    async def test_one_device_failing_alone_is_counted_as_before(self) -> None:
        """The board answers its probe: the failure is the device's."""
        await self.enter("pc_power_cycling")
        await self.complete("power_cycle", False)
        self.assertEqual(await self.counters(), {"power_cycling": 1})
        self.assertEqual(self.probe.calls, [BOARD], "a power failure makes LifeGuard probe the board")
        self.assertFalse((await self.board()).suspect)
        await self.enter("pc_power_cycling", {"power_cycling": 200})
        await self.after(60)
        self.assertEqual(await self.state(), "failed_power_cycling")

    async def test_a_failed_probe_after_a_power_failure_makes_the_board_suspect(self) -> None:
        self.probe.answer = None
        await self.enter("pc_power_cycling")
        await self.complete("power_cycle", False)
        self.assertEqual(await self.state(), "pc_power_cycling", "counted while the probe runs")
        self.probe.reply(False)
        await self.settle()
        self.assertFalse((await self.board()).suspect, "one failed probe is not enough")
        await self.after(30)  # the second probe, a probe interval later
        self.probe.reply(False)
        await self.settle()
        board = await self.board()
        self.assertTrue(board.suspect)
        self.assertEqual("panda-0001: pc_power_cycling: power_cycling failed (no reason given), and it did not answer 2 "
                         "probes: refused", board.reason)
        # the device's next failure is not counted: it waits for the board
        await self.complete("power_cycle", False)
        self.assertEqual(await self.state(), "board_suspect")
        self.assertEqual(await self.counters(), {"power_cycling": 1})
        self.assertIn("waiting for its power controller, which is suspect: localhost-20001:", "\n".join(
            await self.messages()))

    async def test_failures_of_several_devices_make_the_board_suspect(self) -> None:
        self.probe.answer = None  # probes do not answer yet
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_power_cycling", device=DEV)
        await self.enter("pc_power_cycling", device=DEV2)
        await self.complete("power_cycle", False)  # DEV's: counted, the board is probed
        self.assertEqual(await self.counters(DEV), {"power_cycling": 1})
        self.assertFalse((await self.board()).suspect, "one device")
        await self.complete("power_cycle", False)  # DEV2's: two devices, the probe settles it
        self.assertFalse((await self.board()).suspect, "not before the probe answers")
        self.probe.reply(False)
        await self.settle()
        await self.after(30)
        self.probe.reply(False)
        await self.settle()
        self.assertTrue((await self.board()).suspect, "two devices within the window, and no answer")
        await self.complete("power_cycle", False)  # DEV's next failure: not counted
        self.assertEqual(await self.state(DEV), "board_suspect")
        self.assertEqual(await self.counters(DEV), {"power_cycling": 1}, "only the failure before the verdict")
        await self.complete("power_cycle", False)  # DEV2's
        self.assertEqual(await self.state(DEV2), "board_suspect")
        events = await self.board_events()
        self.assertEqual([(e["board"], e["health"], e["old_health"]) for e in events],
                         [("localhost-20001", "suspect", "ok")])
        self.assertEqual("2 devices behind it failed in its power path within 600 s (panda-0001, panda-0002), and it "
                         "did not answer 2 probes: refused", events[0]["reason"])

    async def test_timeouts_and_queued_cycles_are_not_evidence_against_the_board(self) -> None:
        """Many devices cycling at once wait in the board's queue: that is not the board's fault."""
        self.probe.answer = None
        await self.enter("pc_power_cycling", device=DEV)
        await self.enter("pc_power_cycling", device=DEV2)
        await self.after(60)  # both time out
        self.hw.pending["power_cycle"].pop(0).callback(
            PowerResult(False, "timeout communicating with localhost:20001 after 30.0s (still queued behind other "
                               "operations on the board)"))
        self.hw.pending["power_cycle"].pop(0).callback(PowerResult(False, "cancelled"))
        await self.settle()
        self.assertFalse((await self.board()).suspect)
        self.assertEqual(await self.counters(DEV), {"power_cycling": 2}, "still counted against the device")
        self.assertEqual(self.probe.calls, [BOARD], "but the board is probed, once")
        # a probe that times out while queued is not conclusive either
        self.probe.waiting.pop(0).callback(PowerResult(False, "timeout communicating with localhost:20001 after "
                                                              "10.0s (still queued behind other operations on the board)"))
        await self.settle()
        self.assertFalse((await self.board()).suspect)

    async def test_no_power_cycle_through_a_suspect_board(self) -> None:
        await self.suspect_board()
        await self.event("please_power_cycle")
        self.assertEqual(await self.state(), "board_suspect")
        self.assertNotIn("power_cycle", self.hw.ops())
        await self.event("please_self_test")  # an operator may try; it waits again at once
        self.assertEqual(await self.state(), "board_suspect")
        self.assertNotIn("power_cycle", self.hw.ops())

    async def test_sut_verify_power_cycle_waits_for_a_suspect_board(self) -> None:
        await self.suspect_board()
        await self.enter("sut_verify_power_cycle", {"sut_verifying": 10})
        self.assertEqual(await self.state(), "board_suspect")
        self.assertEqual(self.hw.ops(), [])

    async def test_a_request_holding_the_device_hears_bad_device_and_moves_on(self) -> None:
        request_id = await self.claim()
        await self.event("please_image", IMAGE_ARGS)
        await self.suspect_board()
        await self.complete("power_cycle", False)
        self.assertEqual(await self.state(), "board_suspect")
        self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "failed-bad-device"})])


class Notices(HealthTest):
    async def test_idle_devices_stop_being_offered_claimed_ones_keep_serving(self) -> None:
        request_id = await self.claim(DEV2)
        await self.enter("ready", device=DEV)
        await self.enter("ready", device=DEV2)
        await self.suspect_board()
        self.assertEqual(await self.state(DEV), "board_suspect")
        self.assertEqual(await self.state(DEV2), "ready", "in use by request %d" % request_id)
        self.assertEqual(self.delivered, [])
        avoided = await self.db.runInteraction(health.avoided_device_ids)
        ids = dict(await self.db.query("SELECT name, id FROM devices"))
        # other-0001 is another server's device behind the same board, ready: passed by too
        self.assertEqual(sorted(avoided), sorted([ids[DEV2], ids["other-0001"]]),
                         "selection passes by ready devices behind the board")

    async def test_the_board_answering_again_retests_its_devices(self) -> None:
        await self.enter("ready", device=DEV)
        await self.suspect_board()
        self.assertEqual(await self.state(), "board_suspect")
        board = await self.board()
        self.assertTrue(str(board.next_probe).startswith("2026-11-26 12:00:30"), board.next_probe)
        # the first probe fails: back off (30 s, then 60 s, capped at 120 s)
        self.probe.answer = False
        await self.after(30)
        await self.tick()
        board = await self.board()
        self.assertEqual(board.counters, {"probes": 1})
        self.assertTrue(str(board.next_probe).startswith("2026-11-26 12:01:30"), board.next_probe)
        await self.after(59)
        await self.tick()
        self.assertEqual(len(self.probe.calls), 1, "not before its time")
        self.probe.answer = True
        await self.after(1)
        await self.tick()
        self.assertFalse((await self.board()).suspect)
        self.assertEqual(await self.state(), "pxe_power_cycling", "board_ok -> start_self_test")
        self.assertIn("power_cycle", self.hw.ops())
        events = await self.board_events()
        self.assertEqual([e["health"] for e in events], ["suspect", "ok"])
        self.assertEqual(events[1]["reason"], "answered a probe after 1 failed")

    async def test_board_suspect_retests_hourly_as_a_safety_net(self) -> None:
        await self.suspect_board()
        await self.enter("board_suspect")
        await self.db.runInteraction(health.set_health, BOARD, health.OK, "2026-11-26 12:00:00", "by hand", None, {})
        await self.after(3600)
        self.assertEqual(await self.state(), "pxe_power_cycling")

    async def test_the_sweep_tells_devices_what_they_missed(self) -> None:
        """After a restart, or another server's verdict: the tick's sweep."""
        await self.put("board_suspect")
        await self.tick()
        self.assertEqual(await self.state(), "pxe_power_cycling", "its board is healthy: re-tested")
        await self.enter("ready", device=DEV2)
        await self.db.runInteraction(health.set_health, BOARD, health.SUSPECT, "2026-11-26 12:00:00", "elsewhere",
                                     "2030-01-01 00:00:00", {})
        await self.tick()
        self.assertEqual(await self.state(DEV2), "board_suspect")

    async def test_periodic_checks_find_a_hung_board_with_idle_devices(self) -> None:
        self.monitor.settings = HealthSettings(check_interval=600, probe_interval=30)
        self.probe.answer = False
        await self.enter("ready")
        await self.tick()
        self.assertEqual(self.probe.calls, [], "first check one interval after start")
        await self.after(600)
        await self.tick()
        self.assertEqual(len(self.probe.calls), 1)
        self.assertFalse((await self.board()).suspect, "one failed check is not enough")
        await self.after(30)
        await self.tick()
        self.assertTrue((await self.board()).suspect)
        self.assertEqual(await self.state(), "board_suspect")

    async def test_notices_elsewhere_are_ignored(self) -> None:
        await self.enter("troubleshooting")
        await self.event("board_suspected")
        await self.event("board_ok")
        self.assertEqual(await self.state(), "troubleshooting")
        messages = await self.messages()
        self.assertIn("ignored event board_ok in state troubleshooting", messages)

    async def test_outcomes_cannot_be_delivered_from_outside(self) -> None:
        await self.enter("pc_power_cycling")
        for outcome in ("over_limit", "board_at_fault", "cap_reached", "moved_on"):
            await self.event(outcome)
        self.assertEqual(await self.state(), "pc_power_cycling")


class PxePath(HealthTest):
    async def test_pxe_failures_behind_one_board_blame_it(self) -> None:
        await self.set_images(None, None, "b2g", "{}", device=DEV)
        await self.set_images(None, None, "b2g", "{}", device=DEV2)
        await self.enter("pxe_booting", device=DEV)
        await self.enter("pxe_booting", device=DEV2)
        await self.after(180)
        self.assertTrue((await self.board()).suspect)
        self.assertIn("failed to PXE-boot", (await self.board()).reason)
        # the first to time out was counted and may have started its cycle before the verdict
        while self.hw.outstanding("power_cycle"):
            await self.complete("power_cycle", False)
        states = {await self.state(DEV), await self.state(DEV2)}
        self.assertEqual(states, {"board_suspect"})

    async def test_pxe_failures_behind_several_boards_do_not(self) -> None:
        await self.db.query("UPDATE devices SET relay_info = 'localhost:20002:bank1:relay1' WHERE name = ?", (DEV2,))
        await self.db.query(
            "INSERT INTO relay_boards (name, fqdn, imaging_server_id, state, state_counters)"
            " SELECT 'localhost-20002', 'localhost:20002', id, 'ready', '{}' FROM imaging_servers WHERE fqdn = ?",
            (FQDN,))
        for device in (DEV, DEV2):
            await self.set_images(None, None, "b2g", "{}", device=device)
            await self.enter("pxe_booting", device=device)
        await self.after(180)
        self.assertFalse((await self.board()).suspect)
        self.assertEqual({await self.state(DEV), await self.state(DEV2)}, {"pxe_power_cycling"})


class QuarantineCap(HealthTest):
    async def test_past_the_cap_devices_are_held_then_retested(self) -> None:
        await self.enter("pc_power_cycling", {"power_cycling": 200}, device=DEV)
        await self.after(60)
        self.assertEqual(await self.state(DEV), "failed_power_cycling", "the first quarantine is granted")
        await self.set_images(None, None, "self-test", "", device=DEV2)
        await self.enter("self_test_running", device=DEV2)
        await self.event("failed_self_test", device=DEV2)
        self.assertEqual(await self.state(DEV2), "held")
        self.assertEqual(await self.deadline(DEV2), "2026-11-26 12:11:00", "held for the window")
        messages = await self.messages(DEV2)
        self.assertTrue(any(m.startswith("held instead of quarantined: 1 automatic quarantines on a.example.com "
                                         "within 600 s reached the cap of 1") for m in messages), messages)
        status = await self.lg.quarantine_status()
        self.assertEqual(status, {"imaging_server": FQDN, "quarantines": 1, "cap": 1, "window": 600})
        await self.after(600)
        self.assertEqual(await self.state(DEV2), "pxe_power_cycling", "the window passed: re-tested")

    async def test_a_held_install_tells_the_request_its_image_is_bad(self) -> None:
        await self.enter("failed_pxe_booting", device=DEV)  # an operator's state change: not counted
        await self.monitor.may_quarantine("x", "failed_self_test")  # the cap's one quarantine
        request_id = await self.claim(DEV2)
        await self.set_images(None, None, "b2g", "{}", device=DEV2)
        await self.enter("b2g_downloading", {"b2g_downloading": 3}, device=DEV2)
        await self.after(180)
        self.assertEqual(await self.state(DEV2), "held")
        self.assertEqual(self.delivered[-1], (request_id, "lifeguard_finished", {"imaging_result": "failed-bad-image"}))

    async def test_the_cap_survives_a_restart(self) -> None:
        await self.enter("pc_power_cycling", {"power_cycling": 200}, device=DEV)
        await self.after(60)
        self.assertEqual(await self.state(DEV), "failed_power_cycling")
        self.lg = self.makeLifeGuard()  # a new process: the journal says the window holds one
        self.assertFalse(await self.lg.health.may_quarantine(DEV2, "failed_self_test"))  # type: ignore[union-attr]


class Service(HealthTest):
    async def test_the_service_ticks_on_the_clock(self) -> None:
        calls: list[str] = []
        self.monitor.tick = lambda: calls.append("tick") or defer.succeed(None)  # type: ignore[method-assign]
        service = HealthService(self.monitor)
        service.startService()
        self.clock.advance(9.9)
        self.assertEqual(calls, [])
        self.clock.advance(0.1)
        self.assertEqual(calls, ["tick"])
        await service.stopService()
        self.clock.advance(100)
        self.assertEqual(calls, ["tick"])


PowerPathSQLite, PowerPathMariaDB = on_both_backends(PowerPath)
NoticesSQLite, NoticesMariaDB = on_both_backends(Notices)
PxePathSQLite, PxePathMariaDB = on_both_backends(PxePath)
QuarantineCapSQLite, QuarantineCapMariaDB = on_both_backends(QuarantineCap)
ServiceSQLite, ServiceMariaDB = on_both_backends(Service)

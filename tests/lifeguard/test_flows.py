"""Whole operations (the live-boot protocol of state-machines.md 5.2), D1-D3, restart
resumption (R-1), ordering under concurrent events (R-2) and time_scale (R-5)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from twisted.internet import defer

from tests.lifeguard.support import DEV, LifeGuardTest
from tests.support.dbtest import on_both_backends

B2G_CONFIG = '{"b2gbase": "http://builds/b2g/"}'


class LiveBoot(LifeGuardTest):
    """Each image's event sequence, checking the device state after each event."""

    async def boot_to_live_image(self, please: str, args: dict | None = None) -> None:
        await self.event(please, args)
        self.assertEqual(await self.state(), "pxe_power_cycling")
        await self.complete("power_cycle")
        self.assertEqual(await self.state(), "pxe_booting")
        await self.event("mobile_init_started")
        self.assertEqual(await self.state(), "mobile_init_started")

    async def install(self, image: str, boot_config: str) -> int:
        await self.set_images("android" if image == "b2g" else "b2g", "{}")
        request_id = await self.claim()
        await self.boot_to_live_image("please_image", {"image": image, "boot_config": boot_config})
        for event, state in (
            (f"{image}_downloading", f"{image}_downloading"),
            (f"{image}_extracting", f"{image}_extracting"),
            (f"{image}_rebooting", "sut_verifying"),
        ):
            await self.event(event)
            self.assertEqual(await self.state(), state, event)
        self.assertEqual(await self.images(), (None, None, image, boot_config))
        await self.complete("sut_verify")
        self.assertEqual(await self.state(), "sut_sdcard_verifying")
        await self.complete("sut_sdcard_check")
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.images(), (image, boot_config, None, None))
        self.assertEqual(await self.imaging_result(), "complete")
        self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "complete"})])
        self.assertEqual(
            [c[0] for c in self.hw.calls],
            ["set_pxe", "power_cycle", "clear_pxe", "clear_pxe", "sut_verify", "sut_sdcard_check"],
        )
        self.assertEqual(await self.counters(), {})
        return request_id

    async def test_android(self) -> None:
        await self.install("android", "{}")
        self.assertIn("android-second-stage", self.hw.calls[0][2])

    async def test_b2g(self) -> None:
        await self.install("b2g", B2G_CONFIG)
        self.assertIn("b2g-second-stage", self.hw.calls[0][2])

    async def test_self_test(self) -> None:
        await self.set_images("b2g", "{}")
        await self.boot_to_live_image("please_self_test")
        self.assertIn("selftest-second-stage", self.hw.calls[0][2])
        await self.event("self_test_running")
        self.assertEqual(await self.state(), "self_test_running")
        await self.event("self_test_ok")
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.images(), (None, None, None, None))

    async def test_maintenance(self) -> None:
        await self.boot_to_live_image("please_start_maintenance")
        self.assertIn("maintenance-second-stage", self.hw.calls[0][2])
        await self.event("maint_mode")
        self.assertEqual(await self.state(), "maintenance_mode")
        await self.event("please_self_test")
        self.assertEqual(await self.state(), "pxe_power_cycling")

    async def test_a_retry_writes_the_same_pxe_config_again(self) -> None:
        await self.event("please_image", {"image": "b2g", "boot_config": B2G_CONFIG})
        await self.complete("power_cycle")
        await self.after(180)  # no mobile_init_started
        self.assertEqual(await self.state(), "pxe_power_cycling")
        pxe = [c[2] for c in self.hw.calls if c[0] == "set_pxe"]
        self.assertEqual(len(pxe), 2)
        self.assertEqual(pxe[0], pxe[1])
        self.assertEqual(await self.counters(), {"pxe_booting": 1})


class Defects(LifeGuardTest):
    async def test_d1_image_without_pxe_config(self) -> None:
        request_id = await self.claim()
        await self.set_images("android", "{}", None, None)
        await self.drop_pxe_config("b2g")
        await self.event("please_image", {"image": "b2g", "boot_config": B2G_CONFIG})
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.images(), ("android", "{}", None, None))
        self.assertEqual(await self.imaging_result(), "failed-bad-image")
        self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "failed-bad-image"})])
        self.assertIn("no PXE config for image 'b2g' on this device's hardware; not imaging", await self.messages())
        self.assertEqual(self.hw.calls, [])

    async def test_d1_unknown_image(self) -> None:
        await self.claim()
        await self.event("please_image", {"image": "no-such-image", "boot_config": "{}"})
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.imaging_result(), "failed-bad-image")

    async def test_d1_keeps_a_pending_next_image(self) -> None:
        await self.put("troubleshooting")
        await self.set_images("android", "{}", "b2g", "{}")
        await self.event("please_image", {"image": "nope"})
        self.assertEqual(await self.images(), ("android", "{}", "b2g", "{}"))
        self.assertEqual(await self.state(), "troubleshooting")

    async def test_d2_nothing_starts_after_a_failure_transition(self) -> None:
        await self.drop_pxe_config("b2g")
        await self.set_images(None, None, "b2g", "{}")
        await self.lg.state_change(DEV, "ready", "pxe_power_cycling")
        await self.settle()
        self.assertEqual(await self.state(), "failed_pxe_booting")
        self.assertEqual(self.hw.calls, [])
        self.assertEqual(self.hw.outstanding("power_cycle"), 0)

    async def test_d3_no_stale_next_image_after_a_failed_install(self) -> None:
        await self.drop_pxe_config("self-test")
        await self.set_images("android", "{}", "b2g", B2G_CONFIG)
        # an install that fails in sut_verifying goes straight to a self-test, which (with no
        # self-test image) is a power cycle and ping
        await self.enter("sut_verifying", {"sut_verifying": 30})
        await self.after(45)
        self.assertEqual(await self.state(), "pc_power_cycling")
        await self.complete("power_cycle")
        await self.after(120)
        await self.complete("ping")
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.images(), ("android", "{}", None, None), "b2g was never installed")

    async def test_d5_the_power_cycle_ping_loop_has_no_final_limit(self) -> None:
        await self.enter("pc_power_cycling")
        for _loop in range(2):
            await self.complete("power_cycle")
            await self.after(120)
            for _ping in range(13):
                await self.after(10)
            self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertEqual(await self.counters(), {})
        warnings = [m for m in await self.messages() if m == "no answer to 12 pings: power-cycling again"]
        self.assertEqual(len(warnings), 2)


class Restart(LifeGuardTest):
    """R-1: a fresh LifeGuard on the same database carries on from the rows."""

    async def test_resume_mid_imaging(self) -> None:
        await self.event("please_image", {"image": "b2g", "boot_config": B2G_CONFIG})
        await self.complete("power_cycle")
        self.assertEqual(await self.state(), "pxe_booting")
        # the process dies; a new one starts later, with new hardware and a new runner
        old = self.hw
        self.hw = type(old)()
        self.lg = self.makeLifeGuard()
        await self.event("mobile_init_started")
        self.assertEqual(await self.state(), "mobile_init_started")
        self.assertEqual(self.hw.ops(), ["clear_pxe"])
        await self.after(10)  # the deadline written by the old process fires in the new one
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(await self.counters(), {"mobile_init_started": 1})
        self.assertEqual(self.hw.ops(), ["clear_pxe", "set_pxe", "power_cycle"])
        self.assertEqual(old.ops(), ["set_pxe", "power_cycle"])

    async def test_a_deadline_that_passed_while_down_fires_at_the_first_poll(self) -> None:
        await self.enter("pc_rebooting")
        self.clock.advance(3600)  # down for an hour
        self.lg = self.makeLifeGuard()
        await self.after(0)
        self.assertEqual(await self.state(), "pc_pinging")
        self.assertEqual(await self.deadline(), "2026-11-26 13:00:10", "deadline from the new time")

    async def test_transient_states_are_resumed(self) -> None:
        await self.set_images(None, None, "android", "{}")
        await self.put("start_pxe_boot", {"pxe_booting": 2})
        await self.put("start_maintenance", device="panda-0002")
        await self.put("start_self_test", device="other-0001")  # another server's device
        self.lg = self.makeLifeGuard()
        self.assertEqual(sorted(await self.lg.resume()), [DEV, "panda-0002"])
        await self.settle()
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(await self.counters(), {})
        self.assertEqual(await self.state("panda-0002"), "pxe_power_cycling")
        self.assertEqual(await self.state("other-0001"), "start_self_test")


class Ordering(LifeGuardTest):
    """R-2 and R-3: one event at a time per device, side-effect results queued behind it."""

    async def test_a_result_that_fires_at_once_waits_for_the_entry_action(self) -> None:
        self.hw.auto["power_cycle"] = True
        await self.event("please_power_cycle")
        self.assertEqual(await self.state(), "pc_rebooting")
        messages = await self.messages()
        self.assertLess(messages.index("entering state pc_power_cycling"), messages.index("entering state pc_rebooting"))

    async def test_concurrent_please_events_first_wins(self) -> None:
        first = self.lg.device_event(DEV, "please_power_cycle", {})
        second = self.lg.device_event(DEV, "please_image", {"image": "b2g", "boot_config": "{}"})
        await defer.gatherResults([first, second])
        await self.settle()
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertIn("ignored event please_image in state pc_power_cycling", await self.messages())
        self.assertEqual(self.hw.ops(), ["clear_pxe", "power_cycle"])

    async def test_a_burst_of_device_events_is_applied_in_order(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_booting")
        burst = [self.lg.device_event(DEV, e, {}) for e in ("mobile_init_started", "b2g_downloading", "b2g_extracting")]
        other = self.lg.device_event("panda-0002", "please_power_cycle", {})
        await defer.gatherResults([*burst, other])
        await self.settle()
        self.assertEqual(await self.state(), "b2g_extracting")
        self.assertEqual(await self.state("panda-0002"), "pc_power_cycling")
        entering = [m for m in await self.messages() if m.startswith("entering state")]
        self.assertEqual(
            entering[-3:],
            ["entering state mobile_init_started", "entering state b2g_downloading", "entering state b2g_extracting"],
        )

    async def test_an_event_beats_a_timeout_that_lost_the_race(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_booting")
        self.clock.advance(180)
        event = self.lg.device_event(DEV, "mobile_init_started", {})
        tick = defer.Deferred.fromCoroutine(self.driver.tick())
        await defer.gatherResults([event, tick])
        await self.settle()
        self.assertEqual(await self.state(), "mobile_init_started")
        self.assertEqual(await self.counters(), {}, "the stale timeout re-checked the deadline under the lock")

    async def test_a_late_result_is_dropped_by_the_ignore_rule(self) -> None:
        await self.enter("pc_pinging")
        await self.lg.state_change(DEV, "pc_pinging", "troubleshooting")
        await self.complete("ping")
        self.assertEqual(await self.state(), "troubleshooting")
        self.assertIn("ignored event ping_ok in state troubleshooting", await self.messages())

    async def test_leaving_a_state_cancels_its_power_cycle(self) -> None:
        """A power cycle still queued when the device moves on must not hit it later."""
        await self.enter("pc_power_cycling")
        self.assertEqual(self.hw.outstanding("power_cycle"), 1)
        await self.lg.state_change(DEV, "pc_power_cycling", "troubleshooting")
        self.assertEqual(self.hw.outstanding("power_cycle"), 0, "cancelled")
        await self.settle()
        self.assertEqual(await self.state(), "troubleshooting")
        self.assertNotIn("ignored event power_cycle_failed in state troubleshooting", await self.messages())

    async def test_reentry_replaces_a_cycle_that_outlived_its_state(self) -> None:
        await self.set_images(None, None, "android", "{}")
        await self.enter("pxe_power_cycling")
        await self.after(60)
        self.assertEqual(self.hw.ops().count("power_cycle"), 2, "re-entry cycles again")
        self.assertEqual(self.hw.outstanding("power_cycle"), 1, "the first cycle was cancelled")
        await self.complete("power_cycle")
        self.assertEqual(await self.state(), "pxe_booting")

    async def test_a_health_check_failure_after_moving_on_is_ignored(self) -> None:
        await self.enter("ready")
        await self.event("please_power_cycle")
        await self.complete("ping", False)
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertIn("ignored event failed in state pc_power_cycling", await self.messages())


class SideEffectsAfterTheRow(LifeGuardTest):
    """R-1: each hardware call sees its transition already stored (read straight from the
    SQLite file, synchronously, at the moment of the call)."""

    def stored_state(self) -> str:
        path = self.db.url[len("sqlite:///"):]
        with closing(sqlite3.connect(path)) as conn:
            return conn.execute("SELECT state FROM devices WHERE name = ?", (DEV,)).fetchone()[0]

    async def test_hardware_calls_follow_the_write(self) -> None:
        seen: list[tuple[str, str]] = []
        for op in ("clear_pxe", "set_pxe", "power_cycle", "sut_verify"):
            original = getattr(self.hw, op)

            def spy(*args: Any, _op: str = op, _original: Any = original) -> Any:
                seen.append((_op, self.stored_state()))
                return _original(*args)

            setattr(self.hw, op, spy)
        await self.set_images(None, None, "b2g", "{}")
        await self.event("please_image", {"image": "b2g", "boot_config": "{}"})
        await self.complete("power_cycle")
        await self.event("mobile_init_started")
        await self.event("b2g_downloading")
        await self.event("b2g_extracting")
        await self.event("b2g_rebooting")
        self.assertEqual(
            seen,
            [
                ("set_pxe", "pxe_power_cycling"),
                ("power_cycle", "pxe_power_cycling"),
                ("clear_pxe", "mobile_init_started"),
                ("clear_pxe", "b2g_downloading"),
                ("sut_verify", "sut_verifying"),
            ],
        )


class Scaled(LifeGuardTest):
    """R-5: every timeout is scaled; counters and limits are not."""

    time_scale = 0.1

    async def test_scaled_deadlines(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_booting", {"pxe_booting": 30})
        self.assertEqual(await self.deadline(), "2026-11-26 12:00:18")
        await self.after(17)
        self.assertEqual(await self.state(), "pxe_booting")
        await self.after(1)
        self.assertEqual(await self.state(), "failed_pxe_booting", "the limit is still 30")
        self.assertEqual(self.driver.interval, 1.0)


LiveBootSQLite, LiveBootMariaDB = on_both_backends(LiveBoot)
DefectsSQLite, DefectsMariaDB = on_both_backends(Defects)
RestartSQLite, RestartMariaDB = on_both_backends(Restart)
OrderingSQLite, OrderingMariaDB = on_both_backends(Ordering)
ScaledSQLite, ScaledMariaDB = on_both_backends(Scaled)
SideEffectsAfterTheRowSQLite = on_both_backends(SideEffectsAfterTheRow)[0]  # reads the SQLite file

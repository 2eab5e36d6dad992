"""Every row of the device state tables (state-machines.md 1.2, 1.3), driven with events and
Clock advances against a real database and a recording fake of the hardware."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mozpool.lifeguard.machine import (
    AUTO_SELF_TEST,
    BASIC_PLEASE,
    EVENTS,
    FAILED_STATES,
    FULL_PLEASE,
    STATES,
    TIMEOUTS,
    DeviceMachine,
)
from tests.lifeguard.support import DEV, LifeGuardTest
from tests.support.dbtest import on_both_backends

PLEASE = ("please_power_cycle", "please_image", "please_self_test", "please_start_maintenance")
IMAGE_ARGS = {"image": "b2g", "boot_config": '{"b2gbase": "http://x/"}'}
#: where each please_* event leads once its transient entry actions have run
PLEASE_LANDS = {
    "please_power_cycle": "pc_power_cycling",
    "please_image": "pxe_power_cycling",
    "please_self_test": "pxe_power_cycling",
    "please_start_maintenance": "pxe_power_cycling",
}


class Table(SynchronousTestCase):
    """The table itself, without the database: states, inputs, acceptance."""

    def test_every_state_is_defined_and_answers_persisted(self) -> None:
        for name, state in STATES.items():
            self.assertEqual(DeviceMachine(object(), state).persisted(), name)  # type: ignore[arg-type]
        self.assertEqual(len(TIMEOUTS), 37 + 2, "the spec's 37 and the two health states")
        self.assertEqual(len(FAILED_STATES), 12)
        self.assertIn("pc_sut_rebooting", TIMEOUTS)  # D6: unreachable states are kept
        self.assertIn("failed_android_pinging", TIMEOUTS)
        self.assertIn("failed_b2g_pinging", TIMEOUTS)

    def test_events_are_the_spec_events(self) -> None:
        self.assertEqual(
            EVENTS,
            {
                *PLEASE, "failed", "power_cycle_ok", "power_cycle_failed", "ping_ok", "sut_verify_ok", "sut_sdcard_ok",
                "sut_sdcard_failed", "mobile_init_started", "android_downloading", "android_extracting",
                "android_rebooting", "b2g_downloading", "b2g_extracting", "b2g_rebooting", "maint_mode",
                "self_test_running", "self_test_ok", "failed_self_test",
            },
        )

    def test_timeouts(self) -> None:
        expected = {
            "new": 0, "ready": 600, "pc_power_cycling": 60, "pc_rebooting": 120, "pc_pinging": 10,
            "pc_sut_rebooting": 10, "pxe_power_cycling": 60, "pxe_booting": 180, "mobile_init_started": 10,
            "android_downloading": 180, "android_extracting": 600, "b2g_downloading": 180, "b2g_extracting": 300,
            "sut_verifying": 45, "sut_verify_power_cycle": 60, "sut_sdcard_verifying": 200, "operation_complete": 60,
            "self_test_running": 3600,
        }
        spec = {k: v for k, v in TIMEOUTS.items() if v is not None and k not in ("board_suspect", "held")}
        self.assertEqual(spec, expected)
        self.assertEqual((TIMEOUTS["board_suspect"], TIMEOUTS["held"]), (3600, 600), "health states (issue 15)")

    def test_auto_self_test_set(self) -> None:
        self.assertEqual(
            set(FAILED_STATES) - AUTO_SELF_TEST,
            {"failed_power_cycling", "failed_pxe_booting", "failed_mobile_init_started", "failed_self_test"},
        )


class PleaseEvents(LifeGuardTest):
    """1.2: acceptance sets and the effect of each please_* event."""

    async def test_full_set(self) -> None:
        for state in FULL_PLEASE:
            for event in PLEASE:
                await self.put(state)
                await self.set_images("android", "{}", "b2g", "{}")
                self.hw.reset()
                await self.event(event, IMAGE_ARGS if event == "please_image" else {})
                self.assertEqual(await self.state(), PLEASE_LANDS[event], (state, event))
                self.assertIn("power_cycle", self.hw.ops(), (state, event))

    async def test_please_power_cycle_clears_next_image(self) -> None:
        await self.set_images("android", "{}", "b2g", '{"b2gbase": "u"}')
        await self.event("please_power_cycle")
        self.assertEqual(await self.images(), ("android", "{}", None, None))
        self.assertEqual(await self.state(), "pc_power_cycling")

    async def test_please_image_sets_next_and_boots(self) -> None:
        await self.put("ready", {"pxe_booting": 4})
        await self.event("please_image", IMAGE_ARGS)
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual((await self.images())[2:], ("b2g", IMAGE_ARGS["boot_config"]))
        self.assertEqual(await self.counters(), {}, "start_pxe_boot clears all counters")
        messages = await self.messages()
        self.assertIn(f"writing image b2g, boot config {IMAGE_ARGS['boot_config']} to db", messages)
        self.assertIn("entering state start_pxe_boot", messages)
        set_pxe = [c for c in self.hw.calls if c[0] == "set_pxe"]
        self.assertEqual(len(set_pxe), 1)
        self.assertIn("b2g-second-stage", set_pxe[0][2])

    async def test_basic_set(self) -> None:
        for state in BASIC_PLEASE:
            for event in ("please_power_cycle", "please_image"):
                await self.put(state)
                await self.event(event, IMAGE_ARGS if event == "please_image" else {})
                self.assertEqual(await self.state(), state, (state, event))
            for event in ("please_self_test", "please_start_maintenance"):
                await self.put(state)
                await self.event(event)
                self.assertEqual(await self.state(), "pxe_power_cycling", (state, event))
        self.assertIn("ignored event please_image in state failed_self_test", await self.messages())

    async def test_none_set(self) -> None:
        busy = [s for s in TIMEOUTS if s not in FULL_PLEASE and s not in BASIC_PLEASE]
        self.assertIn("locked_out", busy)
        for state in busy:
            await self.put(state, {"x": 1}, "2030-01-01 00:00:00")
            for event in PLEASE:
                await self.event(event, IMAGE_ARGS if event == "please_image" else {})
            self.assertEqual(await self.state(), state)
            self.assertEqual(await self.deadline(), "2030-01-01 00:00:00", "no timer change")
            self.assertEqual(await self.counters(), {"x": 1}, "no counter change")
        self.assertEqual(self.hw.calls, [])
        messages = await self.messages()
        self.assertIn("ignored event please_power_cycle in state locked_out", messages)
        self.assertIn("ignored event please_start_maintenance in state pxe_booting", messages)

    async def test_unrecognised_stored_state_reads_as_unknown(self) -> None:
        await self.put("free")
        await self.event("mobile_init_started")
        self.assertIn("ignored event mobile_init_started in state unknown", await self.messages())
        self.assertEqual(await self.state(), "free", "the stored text does not change")
        await self.event("please_power_cycle")
        self.assertEqual(await self.state(), "pc_power_cycling")

    async def test_pseudo_inputs_are_not_events(self) -> None:
        await self.put("new", timeout="2026-11-26 12:00:00")
        await self.event("timeout")
        await self.event("persisted")
        self.assertEqual(await self.state(), "new")
        self.assertIn("ignored event timeout in state new", await self.messages())


class Steady(LifeGuardTest):
    """Steady and initial states."""

    async def test_new_times_out_at_once_into_a_self_test(self) -> None:
        await self.enter("new")
        self.assertEqual(await self.deadline(), "2026-11-26 12:00:00")
        await self.after(0)
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual((await self.images())[2:], ("self-test", ""))
        self.assertIn("selftest-second-stage", [c for c in self.hw.calls if c[0] == "set_pxe"][0][2])

    async def test_unknown_troubleshooting_and_locked_out_have_no_timer(self) -> None:
        for state in ("unknown", "troubleshooting", "locked_out", "maintenance_mode"):
            await self.enter(state)
            self.assertIsNone(await self.deadline(), state)
            await self.after(10**6)
            self.assertEqual(await self.state(), state)

    async def test_locked_out_only_leaves_by_state_change(self) -> None:
        await self.enter("locked_out")
        for event in [*PLEASE, "failed", "power_cycle_ok"]:
            await self.event(event, IMAGE_ARGS if event == "please_image" else {})
        self.assertEqual(await self.state(), "locked_out")
        await self.lg.state_change(DEV, "locked_out", "troubleshooting")
        self.assertEqual(await self.state(), "troubleshooting")

    async def test_ready_health_check_pings_an_image_without_sut(self) -> None:
        await self.set_images("b2g", "{}")
        await self.enter("ready")
        self.assertEqual(await self.deadline(), "2026-11-26 12:10:00")
        self.assertEqual(self.hw.ops(), ["ping"])
        await self.complete("ping", True)
        self.assertEqual(await self.state(), "ready", "success posts nothing")
        # 600 s later the state re-enters and checks again; this time the ping fails.
        await self.after(600)
        self.assertEqual(self.hw.ops(), ["ping", "ping"])
        self.assertEqual(await self.deadline(), "2026-11-26 12:20:00")
        await self.complete("ping", False)
        self.assertEqual(await self.state(), "pxe_power_cycling", "failed -> start_self_test")
        self.assertIn("entering state start_self_test", await self.messages())

    async def test_ready_health_check_uses_sut_when_the_image_has_an_agent(self) -> None:
        await self.set_images("android", "{}")
        await self.enter("ready")
        self.assertEqual(self.hw.ops(), ["sut_verify"])
        await self.complete("sut_verify", False)
        self.assertEqual(await self.state(), "pxe_power_cycling")

    async def test_ready_health_check_failure_by_errback(self) -> None:
        await self.enter("ready")
        self.hw.fail("ping")
        await self.settle()
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.flushLoggedErrors(RuntimeError)

    async def test_a_hardware_call_that_raises_counts_as_a_failure(self) -> None:
        def broken(device: object) -> None:
            raise RuntimeError("driver bug")

        self.hw.ping = broken  # type: ignore[method-assign]
        await self.enter("ready")
        await self.settle()
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_ready_skips_the_health_check_when_claimed(self) -> None:
        await self.claim()
        await self.enter("ready")
        await self.after(600)
        self.assertEqual(self.hw.calls, [])
        self.assertEqual(await self.state(), "ready")

    async def test_failed_is_only_accepted_in_ready(self) -> None:
        await self.enter("troubleshooting")
        await self.event("failed")
        self.assertEqual(await self.state(), "troubleshooting")
        self.assertIn("ignored event failed in state troubleshooting", await self.messages())


class PowerCyclePath(LifeGuardTest):
    """pc_power_cycling -> pc_rebooting -> pc_pinging -> operation_complete -> ready."""

    async def test_happy_path(self) -> None:
        await self.set_images("android", '{"a": 1}')
        request_id = await self.claim()
        await self.event("please_power_cycle")
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertEqual(self.hw.ops(), ["clear_pxe", "power_cycle"])
        self.assertEqual(await self.deadline(), "2026-11-26 12:01:00")
        await self.complete("power_cycle")
        self.assertEqual(await self.state(), "pc_rebooting")
        self.assertEqual(await self.deadline(), "2026-11-26 12:02:00")
        await self.event("ping_ok")  # not accepted while u-boot may answer
        await self.after(119)
        self.assertEqual(await self.state(), "pc_rebooting")
        await self.after(1)
        self.assertEqual(await self.state(), "pc_pinging")
        self.assertEqual(self.hw.ops()[-1], "ping")
        await self.complete("ping")
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.images(), ("android", '{"a": 1}', None, None), "no next_image: image kept")
        self.assertEqual(await self.imaging_result(), "complete")
        self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "complete"})])
        messages = await self.messages()
        self.assertIn("ignored event ping_ok in state pc_rebooting", messages)
        self.assertIn("sending imaging result 'complete' to Mozpool", messages)
        self.assertEqual(await self.counters(), {})

    async def test_no_relay_fails_at_once(self) -> None:
        await self.db.query("UPDATE devices SET relay_info = NULL WHERE name = ?", (DEV,))
        await self.event("please_power_cycle")
        self.assertEqual(await self.state(), "failed_power_cycling")
        self.assertEqual(self.hw.calls, [])
        messages = await self.messages()
        self.assertIn("no relay information: cannot power-cycle", messages)
        self.assertIn("device has failed: failed_power_cycling", messages)

    async def test_timeouts_and_failures_retry_then_fail(self) -> None:
        await self.enter("pc_power_cycling")
        await self.after(60)
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertEqual(await self.counters(), {"power_cycling": 1})
        self.assertEqual(self.hw.ops().count("power_cycle"), 2, "re-entry cycles again")
        await self.complete("power_cycle", False)  # power_cycle_failed: same as a timeout
        self.assertEqual(await self.counters(), {"power_cycling": 2})
        self.assertEqual(self.hw.ops().count("power_cycle"), 3)
        self.assertEqual(await self.state(), "pc_power_cycling")
        # the limit: more than 200
        await self.enter("pc_power_cycling", {"power_cycling": 199})
        await self.after(60)
        self.assertEqual((await self.state(), await self.counters()), ("pc_power_cycling", {"power_cycling": 200}))
        await self.after(60)
        self.assertEqual(await self.state(), "failed_power_cycling")

    async def test_power_cycle_ok_clears_the_counter(self) -> None:
        await self.enter("pc_power_cycling", {"power_cycling": 5, "other": 1})
        await self.complete("power_cycle")
        self.assertEqual(await self.counters(), {"other": 1})

    async def test_pc_pinging_retries_then_power_cycles_again(self) -> None:
        await self.enter("pc_pinging", {"pc_pinging": 11})
        self.assertEqual(await self.deadline(), "2026-11-26 12:00:10")
        await self.complete("ping", False)  # a failed ping posts nothing
        self.assertEqual(await self.state(), "pc_pinging")
        await self.after(10)
        self.assertEqual((await self.state(), await self.counters()), ("pc_pinging", {"pc_pinging": 12}))
        await self.after(10)
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertEqual(await self.counters(), {}, "pc_pinging cleared")
        self.assertIn("no answer to 12 pings: power-cycling again", await self.messages())

    async def test_pc_pinging_ping_ok_clears_counter(self) -> None:
        await self.enter("pc_pinging", {"pc_pinging": 3})
        await self.complete("ping")
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.counters(), {})

    async def test_pc_sut_rebooting(self) -> None:
        await self.enter("pc_sut_rebooting")
        await self.event("ping_ok")
        self.assertEqual(await self.state(), "pc_sut_rebooting")
        await self.after(10)
        self.assertEqual(await self.state(), "sut_verifying")


class PxeEntryPoints(LifeGuardTest):
    async def test_start_pxe_boot_clears_counters(self) -> None:
        await self.set_images(None, None, "android", "{}")
        await self.enter("start_pxe_boot", {"power_cycling": 7, "sut_verify_power_cycle": 2})
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(await self.counters(), {})
        self.assertIn("android-second-stage", [c for c in self.hw.calls if c[0] == "set_pxe"][0][2])

    async def test_start_self_test_with_a_self_test_config(self) -> None:
        await self.enter("start_self_test", {"x": 3})
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual((await self.images())[2:], ("self-test", ""))
        self.assertEqual(await self.counters(), {})

    async def test_start_self_test_without_one_power_cycles_and_clears_next(self) -> None:
        # D3
        await self.drop_pxe_config("self-test")
        await self.set_images("b2g", "{}", "android", "{}")
        await self.enter("start_self_test", {"x": 3})
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertEqual(await self.images(), ("b2g", "{}", None, None))
        self.assertEqual(self.hw.ops(), ["clear_pxe", "power_cycle"])

    async def test_start_maintenance(self) -> None:
        await self.enter("start_maintenance", {"x": 3})
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual((await self.images())[2:], ("maintenance", ""))
        self.assertEqual(await self.counters(), {})
        self.assertIn("maintenance-second-stage", [c for c in self.hw.calls if c[0] == "set_pxe"][0][2])

    async def test_start_maintenance_without_a_config_fails_in_pxe_power_cycling(self) -> None:
        await self.drop_pxe_config("maintenance")
        await self.event("please_start_maintenance")
        self.assertEqual(await self.state(), "failed_pxe_booting")
        self.assertEqual(self.hw.calls, [], "D2: no power cycle after the transition")


class PxeBoot(LifeGuardTest):
    async def test_pxe_power_cycling(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_power_cycling", {"power_cycling": 3})
        self.assertEqual(self.hw.ops(), ["set_pxe", "power_cycle"])
        self.assertEqual(await self.deadline(), "2026-11-26 12:01:00")
        await self.complete("power_cycle")
        self.assertEqual(await self.state(), "pxe_booting")
        self.assertEqual(await self.counters(), {})
        self.assertEqual(await self.deadline(), "2026-11-26 12:03:00")

    async def test_pxe_power_cycling_retries_then_fails(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_power_cycling")
        await self.after(60)
        self.assertEqual(self.hw.ops(), ["set_pxe", "power_cycle"] * 2, "re-entry sets PXE and cycles again")
        self.hw.fail("power_cycle")  # an errback counts as a failure
        await self.settle()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(await self.counters(), {"power_cycling": 2})
        await self.enter("pxe_power_cycling", {"power_cycling": 200})
        await self.complete("power_cycle", False)
        self.assertEqual(await self.state(), "failed_power_cycling")

    async def test_pxe_power_cycling_without_relay(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.db.query("UPDATE devices SET relay_info = '' WHERE name = ?", (DEV,))
        await self.enter("pxe_power_cycling")
        self.assertEqual(await self.state(), "failed_power_cycling")
        self.assertEqual(self.hw.calls, [])

    async def test_pxe_power_cycling_without_pxe_config(self) -> None:
        # D2: the failure transition is the last thing the entry action does.
        await self.set_images(None, None, "b2g", "{}")
        await self.drop_pxe_config("b2g")
        await self.enter("pxe_power_cycling")
        self.assertEqual(await self.state(), "failed_pxe_booting")
        self.assertEqual(self.hw.calls, [])
        self.assertIn("no PXE config for image 'b2g' on this device's hardware", await self.messages())

    async def test_pxe_booting(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_booting", {"pxe_booting": 2})
        await self.event("b2g_downloading")  # not accepted before mobile_init_started
        self.assertEqual(await self.state(), "pxe_booting")
        await self.event("mobile_init_started")
        self.assertEqual(await self.state(), "mobile_init_started")
        self.assertEqual(self.hw.ops(), ["clear_pxe"], "D4: cleared whatever the image")
        self.assertEqual(await self.counters(), {})
        self.assertEqual(await self.deadline(), "2026-11-26 12:00:10")

    async def test_pxe_booting_timeouts(self) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter("pxe_booting", {"pxe_booting": 29})
        await self.after(179)
        self.assertEqual(await self.state(), "pxe_booting")
        await self.after(1)
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(await self.counters(), {"pxe_booting": 30})
        await self.complete("power_cycle")
        await self.after(180)
        self.assertEqual(await self.state(), "failed_pxe_booting")

    async def mobile_init(self, counters: dict[str, int] | None = None) -> None:
        await self.set_images("android", "{}", "b2g", "{}")
        await self.enter("mobile_init_started", counters or {"mobile_init_started": 4})
        self.hw.reset()

    async def test_mobile_init_started_to_android_downloading(self) -> None:
        await self.mobile_init()
        await self.event("android_downloading")
        self.assertEqual(await self.state(), "android_downloading")
        self.assertEqual(self.hw.ops(), ["clear_pxe"])
        self.assertEqual(await self.counters(), {})
        self.assertEqual(await self.deadline(), "2026-11-26 12:03:00")

    async def test_mobile_init_started_to_b2g_downloading(self) -> None:
        await self.mobile_init()
        await self.event("b2g_downloading")
        self.assertEqual(await self.state(), "b2g_downloading")
        self.assertEqual(self.hw.ops(), ["clear_pxe"])
        self.assertEqual(await self.counters(), {})

    async def test_mobile_init_started_to_maintenance_mode(self) -> None:
        await self.mobile_init()
        await self.event("maint_mode")
        self.assertEqual(await self.state(), "maintenance_mode")
        self.assertEqual(self.hw.ops(), [])
        self.assertEqual(await self.images(), (None, None, "b2g", "{}"))
        self.assertEqual(await self.counters(), {})
        self.assertIsNone(await self.deadline())

    async def test_mobile_init_started_to_self_test_running(self) -> None:
        await self.mobile_init()
        await self.event("self_test_running")
        self.assertEqual(await self.state(), "self_test_running")
        self.assertEqual(self.hw.ops(), ["clear_pxe"])
        self.assertEqual(await self.images(), (None, None, None, None))
        self.assertEqual(await self.counters(), {})
        self.assertEqual(await self.deadline(), "2026-11-26 13:00:00")

    async def test_mobile_init_started_timeouts(self) -> None:
        await self.mobile_init({"mobile_init_started": 9})
        await self.after(10)
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(await self.counters(), {"mobile_init_started": 10})
        await self.enter("mobile_init_started", {"mobile_init_started": 10})
        await self.after(10)
        self.assertEqual(await self.state(), "failed_mobile_init_started")


class Installs(LifeGuardTest):
    """Android and B2G download/extract rows."""

    async def check_download(self, os: str, extract_timeout: int) -> None:
        await self.set_images("android", "{}", os, "{}")
        await self.enter(f"{os}_downloading", {f"{os}_downloading": 1})
        await self.event(f"{os}_rebooting")  # out of order: ignored
        self.assertEqual(await self.state(), f"{os}_downloading")
        await self.event(f"{os}_extracting")
        self.assertEqual(await self.state(), f"{os}_extracting")
        self.assertEqual(await self.images(), (None, None, os, "{}"), "the SD card is about to be overwritten")
        self.assertEqual(await self.counters(), {})
        await self.after(extract_timeout - 1)
        self.assertEqual(await self.state(), f"{os}_extracting")
        await self.enter(f"{os}_extracting", {f"{os}_extracting": 7})
        await self.event(f"{os}_rebooting")
        self.assertEqual(await self.state(), "sut_verifying")
        self.assertEqual(await self.counters(), {})

    async def check_timeouts(self, state: str, timeout: int, limit: int) -> None:
        await self.set_images(None, None, "b2g", "{}")
        await self.enter(state, {state: limit - 1})
        await self.after(timeout)
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual(await self.counters(), {state: limit})
        await self.enter(state, {state: limit})
        await self.after(timeout)
        self.assertIn(f"entering state failed_{state}", await self.messages())
        # every install failure is an auto self-test state: the device goes straight on
        self.assertEqual(await self.state(), "pxe_power_cycling")
        self.assertEqual((await self.images())[2], "self-test")

    async def test_android_downloading_and_extracting(self) -> None:
        await self.check_download("android", 600)

    async def test_b2g_downloading_and_extracting(self) -> None:
        await self.check_download("b2g", 300)

    async def test_android_downloading_timeouts(self) -> None:
        await self.check_timeouts("android_downloading", 180, 3)

    async def test_android_extracting_timeouts(self) -> None:
        await self.check_timeouts("android_extracting", 600, 10)

    async def test_b2g_downloading_timeouts(self) -> None:
        await self.check_timeouts("b2g_downloading", 180, 3)

    async def test_b2g_extracting_timeouts(self) -> None:
        await self.check_timeouts("b2g_extracting", 300, 10)


class Verification(LifeGuardTest):
    async def test_sut_verifying_ok(self) -> None:
        await self.enter("sut_verifying", {"sut_verifying": 4})
        self.assertEqual(self.hw.ops(), ["sut_verify"])
        self.assertEqual(await self.deadline(), "2026-11-26 12:00:45")
        await self.complete("sut_verify")
        self.assertEqual(await self.state(), "sut_sdcard_verifying")
        self.assertEqual(await self.counters(), {})
        self.assertEqual(self.hw.ops(), ["sut_verify", "sut_sdcard_check"])

    async def test_sut_verifying_failure_waits_for_the_timeout(self) -> None:
        await self.enter("sut_verifying")
        await self.complete("sut_verify", False)
        self.assertEqual(await self.state(), "sut_verifying")
        self.assertEqual(await self.counters(), {})

    async def test_sut_verifying_every_tenth_timeout_power_cycles(self) -> None:
        await self.enter("sut_verifying")
        for n in range(1, 10):
            await self.after(45)
            self.assertEqual((await self.state(), await self.counters()), ("sut_verifying", {"sut_verifying": n}))
        self.assertEqual(self.hw.ops(), ["sut_verify"] * 10)
        await self.after(45)
        self.assertEqual(await self.state(), "sut_verify_power_cycle")
        self.assertEqual(self.hw.ops()[-1], "power_cycle", "no relay check, no PXE change")
        await self.complete("power_cycle")
        self.assertEqual(await self.state(), "sut_verifying")
        self.assertEqual(await self.counters(), {"sut_verifying": 10})
        await self.enter("sut_verifying", {"sut_verifying": 19})
        await self.after(45)
        self.assertEqual(await self.state(), "sut_verify_power_cycle")

    async def test_sut_verifying_limit(self) -> None:
        await self.drop_pxe_config("self-test")
        await self.enter("sut_verifying", {"sut_verifying": 30})
        await self.after(45)
        # failed_sut_verifying is an auto self-test state: straight on to a self-test
        self.assertEqual(await self.state(), "pc_power_cycling")
        messages = await self.messages()
        self.assertIn("entering state failed_sut_verifying", messages)
        self.assertIn("device has failed: failed_sut_verifying", messages)

    async def test_sut_verify_power_cycle(self) -> None:
        await self.enter("sut_verify_power_cycle", {"sut_verify_power_cycle": 1, "sut_verifying": 10})
        self.assertEqual(self.hw.ops(), ["power_cycle"])
        await self.complete("power_cycle", False)  # failure posts nothing
        self.assertEqual(await self.state(), "sut_verify_power_cycle")
        await self.after(60)
        self.assertEqual(await self.counters(), {"sut_verify_power_cycle": 2, "sut_verifying": 10})
        self.assertEqual(await self.state(), "sut_verify_power_cycle")
        self.assertEqual(self.hw.ops(), ["power_cycle"] * 2, "re-entry cycles again")
        await self.complete("power_cycle", True)
        self.assertEqual(await self.state(), "sut_verifying")
        # D7: the counter is kept until the next start_* clears all counters
        self.assertEqual(await self.counters(), {"sut_verify_power_cycle": 2, "sut_verifying": 10})

    async def test_sut_verify_power_cycle_limit(self) -> None:
        await self.enter("sut_verify_power_cycle", {"sut_verify_power_cycle": 3})
        await self.after(60)
        self.assertIn("entering state failed_sut_verifying", await self.messages())
        self.assertEqual(await self.state(), "pxe_power_cycling", "auto self-test")

    async def test_sut_sdcard_verifying(self) -> None:
        await self.set_images(None, None, "android", "{}")
        await self.enter("sut_sdcard_verifying", {"sut_sdcard_verifying": 1})
        self.assertEqual(await self.deadline(), "2026-11-26 12:03:20")
        await self.complete("sut_sdcard_check", False)  # same as a timeout
        self.assertEqual(await self.counters(), {"sut_sdcard_verifying": 2})
        self.assertEqual(await self.state(), "sut_sdcard_verifying")
        await self.complete("sut_sdcard_check", True)
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.counters(), {})
        self.assertEqual(await self.images(), ("android", "{}", None, None))

    async def test_sut_sdcard_verifying_limit(self) -> None:
        await self.enter("sut_sdcard_verifying", {"sut_sdcard_verifying": 2})
        await self.after(200)
        self.assertIn("entering state failed_sut_sdcard_verifying", await self.messages())

    async def test_operation_complete(self) -> None:
        request_id = await self.claim()
        await self.set_images("android", "{}", "b2g", '{"b2gbase": "u"}')
        await self.enter("operation_complete")
        self.assertEqual(await self.state(), "ready")
        self.assertEqual(await self.images(), ("b2g", '{"b2gbase": "u"}', None, None))
        self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "complete"})])

    async def test_operation_complete_timeout_is_a_safety_net(self) -> None:
        # As a crash part-way would leave it: stored, deadline passed, entry never finished.
        await self.set_images(None, None, "b2g", "{}")
        await self.put("operation_complete", timeout="2026-11-26 11:59:00")
        await self.after(0)
        self.assertEqual(await self.state(), "ready")
        self.assertEqual((await self.images())[0], "b2g")


class SelfTestAndMaintenance(LifeGuardTest):
    async def test_self_test_ok(self) -> None:
        await self.claim()
        await self.enter("self_test_running")
        await self.event("self_test_ok")
        self.assertEqual(await self.state(), "ready")
        self.assertIsNone(await self.imaging_result(), "no imaging result is sent")
        self.assertEqual(self.delivered, [])

    async def test_failed_self_test_event(self) -> None:
        await self.enter("self_test_running")
        await self.event("failed_self_test")
        self.assertEqual(await self.state(), "failed_self_test")

    async def test_self_test_timeout(self) -> None:
        await self.enter("self_test_running")
        await self.after(3599)
        self.assertEqual(await self.state(), "self_test_running")
        await self.after(1)
        self.assertEqual(await self.state(), "failed_self_test", "no auto self-test: stays")

    async def test_maintenance_mode_waits(self) -> None:
        await self.enter("maintenance_mode")
        await self.event("maint_mode")
        await self.after(10**5)
        self.assertEqual(await self.state(), "maintenance_mode")


class FailureStates(LifeGuardTest):
    async def test_every_failed_state(self) -> None:
        request_id = await self.claim()
        for state in FAILED_STATES:
            self.delivered.clear()
            await self.db.query("UPDATE device_requests SET imaging_result = NULL")
            await self.enter(state)
            messages = await self.messages()
            self.assertIn(f"device has failed: {state}", messages)
            self.assertEqual(await self.imaging_result(), "failed-bad-device", state)
            self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "failed-bad-device"})])
            if state in AUTO_SELF_TEST:
                self.assertEqual(await self.state(), "pxe_power_cycling", state)
                self.assertEqual((await self.images())[2], "self-test")
            else:
                self.assertEqual(await self.state(), state)
                self.assertIsNone(await self.deadline())


PleaseEventsSQLite, PleaseEventsMariaDB = on_both_backends(PleaseEvents)
SteadySQLite, SteadyMariaDB = on_both_backends(Steady)
PowerCyclePathSQLite, PowerCyclePathMariaDB = on_both_backends(PowerCyclePath)
PxeEntryPointsSQLite, PxeEntryPointsMariaDB = on_both_backends(PxeEntryPoints)
PxeBootSQLite, PxeBootMariaDB = on_both_backends(PxeBoot)
InstallsSQLite, InstallsMariaDB = on_both_backends(Installs)
VerificationSQLite, VerificationMariaDB = on_both_backends(Verification)
SelfTestAndMaintenanceSQLite, SelfTestAndMaintenanceMariaDB = on_both_backends(SelfTestAndMaintenance)
FailureStatesSQLite, FailureStatesMariaDB = on_both_backends(FailureStates)

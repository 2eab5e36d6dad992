"""The simulated device on a task.Clock: live-boot sequences (state-machines.md 5.2), phase
behaviour and failure injection (6), start-up and power (5.3), events over StubTreq."""

from __future__ import annotations

import random
from typing import Any, Optional

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mozpool.bmm.pxe import pxe_filename
from mozpool.fakes.device import FailureSettings, SimulatedDevice, second_stage

from .support import PXEStore, RecordingAgent, RecordingAPI, pxe_config

MAC = "02000000000a"
PATH = "pxelinux.cfg/" + pxe_filename(MAC)
API = "http://mozpool.test:8010"

ANDROID = ["mobile_init_started", "android_downloading", "android_extracting", "android_rebooting"]
B2G = ["mobile_init_started", "b2g_downloading", "b2g_extracting", "b2g_rebooting"]


class DeviceTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pxe = PXEStore()
        self.api = RecordingAPI(on_event=self.lifeguard)
        self.http: Any = StubTreq(self.api)
        self.agent = RecordingAgent()
        self.failures = FailureSettings()
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def lifeguard(self, device: str, event: str) -> None:
        """What LifeGuard does on the wire at mobile_init_started: clear the PXE config."""
        if event == "mobile_init_started":
            self.pxe.files.pop(PATH, None)

    def make(self, state: Optional[str] = "new", image: Optional[str] = None, powered: bool = True,
             name: str = "panda-0001", **kw: Any) -> SimulatedDevice:
        kw.setdefault("http", self.http)
        device = SimulatedDevice(
            name, clock=self.clock, api_url=API, fetch_pxe=self.pxe.fetch, mac=MAC,
            fqdn=f"{name}.fakes.mozpool.invalid", rng=random.Random(7), failures=self.failures,
            sdcard_image=image, stored_state=state, agent=self.agent, **kw,
        )
        device.start(powered)
        self.addCleanup(device.stop)
        return device

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def until(self, predicate: Any, limit: float, step: float = 0.5) -> float:
        """Advance the clock until ``predicate()``; fail past ``limit`` seconds."""
        elapsed = 0.0
        while not predicate():
            if elapsed >= limit:
                self.fail(f"not reached within {limit} s")
            self.clock.advance(step)
            elapsed += step
        return elapsed

    def power_cycle(self, device: SimulatedDevice) -> None:
        device.set_power(False)
        device.set_power(True)

    def messages(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.logged)


class SecondStageName(SynchronousTestCase):
    def test_name(self) -> None:
        self.assertEqual(second_stage(pxe_config("android-second-stage").decode()), "android-second-stage")
        self.assertEqual(second_stage("append mobile-imaging-url=http://x/a/b/selftest-second-stage.sh quiet"),
                         "selftest-second-stage")
        self.assertIsNone(second_stage("default linux\nappend root=/dev/mmcblk0p2\n"))


class LiveBoot(DeviceTestBase):
    def test_android_install(self) -> None:
        device = self.make()
        self.assertEqual(device.state, "failed")  # start-up in a state other than ready: hung
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.assertEqual(device.state, "booting")
        self.assertTrue(device.ping(), "the boot loader answers pings")
        took = self.until(lambda: self.api.device_events("panda-0001") == ANDROID[:1], 10)
        self.assertGreaterEqual(took, 4, "boot loader: 7 +- 3 s")
        self.assertEqual(device.state, "mobile_init_started")
        self.assertTrue(device.ping(), "the live image answers pings")
        self.assertEqual(self.pxe.reads, [PATH])
        self.assertEqual(self.until(lambda: device.state == "android_downloading", 1), 1)
        took = self.until(lambda: device.state == "android_extracting", 90)
        self.assertGreaterEqual(took, 30)
        self.assertEqual(device.sdcard_image, "corrupt")
        self.until(lambda: device.state == "android_rebooting", 150)
        self.assertEqual(device.sdcard_image, "corrupt")
        self.until(lambda: device.state == "rebooting", 5)
        self.assertEqual(device.sdcard_image, "android")
        self.until(lambda: device.state == "running_android", 12)
        self.assertTrue(self.agent.listening, "android runs a SUT agent")
        self.assertTrue(device.ping())
        self.assertEqual(self.pxe.reads, [PATH, PATH], "rebooted through the boot loader, found no config")
        self.advance(4000)
        self.assertEqual([(m, e) for (m, _, e) in self.api.events], [("POST", e) for e in ANDROID])
        self.assertEqual(device.events, ANDROID)
        self.assertEqual(device.state, "running_android")

    def test_b2g_install_with_b2gbase(self) -> None:
        self.api.bootconfigs["panda-0001"] = '{"b2gbase": "http://builds.example.com/b2g/"}'
        device = self.make()
        self.pxe.files[PATH] = pxe_config("b2g-second-stage")
        self.power_cycle(device)
        self.advance(500)
        self.assertEqual(self.api.device_events("panda-0001"), B2G)
        self.assertEqual(device.state, "running_b2g")
        self.assertEqual(device.sdcard_image, "b2g")
        self.assertTrue(device.ping())
        self.assertEqual(device.injected_failures, 0)

    def test_b2g_without_b2gbase_reboots(self) -> None:
        """S2: a boot config without b2gbase is an injected failure (a reboot), logged."""
        self.api.bootconfigs["panda-0001"] = '{"other": 1}'
        device = self.make(image="android")
        self.pxe.files[PATH] = pxe_config("b2g-second-stage")
        self.lifeguard = lambda device, event: None  # type: ignore[method-assign]
        self.api.on_event = None
        self.power_cycle(device)
        self.until(lambda: device.events == ["mobile_init_started"], 10)
        self.until(lambda: device.injected_failures == 1, 1)
        self.assertEqual(device.state, "rebooting", "rebooting at once, power still on")
        self.assertIn("no b2gbase", self.messages())
        self.assertEqual(device.sdcard_image, "android", "nothing was written")

    def test_self_test_ok(self) -> None:
        device = self.make(image="android")
        self.pxe.files[PATH] = pxe_config("selftest-second-stage")
        self.power_cycle(device)
        self.until(lambda: len(device.events) == 2, 11)
        self.assertEqual(self.api.device_events("panda-0001"), ["mobile_init_started", "self_test_running"])
        self.advance(59.5, step=0.5)
        self.assertEqual(len(self.api.events), 2)
        self.advance(1, step=0.5)
        self.assertEqual(self.api.device_events("panda-0001"),
                         ["mobile_init_started", "self_test_running", "self_test_ok"])
        self.assertEqual(device.state, "self_test_idle")
        self.assertTrue(device.ping())
        self.advance(4000)
        self.assertEqual(len(self.api.events), 3, "then idle for ever")

    def test_self_test_hang_is_silent(self) -> None:
        """S4 kept: a failed self-test sends nothing."""
        self.failures.set("self_test_hang", 1.0)
        device = self.make()
        self.pxe.files[PATH] = pxe_config("selftest-second-stage")
        self.power_cycle(device)
        self.advance(200)
        self.assertEqual(self.api.device_events("panda-0001"), ["mobile_init_started", "self_test_running"])
        self.assertEqual(device.state, "failed")
        self.assertFalse(device.ping())

    def test_self_test_hang_can_send_failed_self_test(self) -> None:
        self.failures.set("self_test_hang", 1.0)
        self.failures.send_failed_self_test = True
        device = self.make()
        self.pxe.files[PATH] = pxe_config("selftest-second-stage")
        self.power_cycle(device)
        self.advance(200)
        self.assertEqual(self.api.device_events("panda-0001"),
                         ["mobile_init_started", "self_test_running", "failed_self_test"])

    def test_maintenance(self) -> None:
        device = self.make(image="android")
        self.pxe.files[PATH] = pxe_config("maintenance-second-stage")
        self.power_cycle(device)
        self.until(lambda: len(device.events) == 2, 11)
        self.assertEqual(self.api.device_events("panda-0001"), ["mobile_init_started", "maint_mode"])
        self.assertEqual(device.state, "maint_mode")
        self.assertTrue(device.ping())
        self.advance(3599)
        self.assertEqual(device.state, "maint_mode")
        self.advance(1)
        self.assertEqual(device.state, "failed", "after an hour the maintenance image hangs")
        self.assertFalse(device.ping())
        self.assertEqual(len(self.api.events), 2)

    def test_unknown_stage_hangs(self) -> None:
        device = self.make(image="android")
        self.pxe.files[PATH] = pxe_config("mystery-second-stage")
        self.power_cycle(device)
        self.advance(20)
        self.assertEqual(self.api.device_events("panda-0001"), ["mobile_init_started"])
        self.assertEqual(device.state, "failed")
        self.assertFalse(device.ping())
        self.power_cycle(device)
        self.assertEqual(device.state, "booting", "a power cycle gets it out")

    def test_config_without_url_boots_sd(self) -> None:
        device = self.make(image="b2g")
        self.pxe.files[PATH] = b"default local\n"
        self.power_cycle(device)
        self.advance(11)
        self.assertEqual(device.state, "running_b2g")
        self.assertEqual(self.api.events, [])
        self.assertIn("no mobile-imaging-url", self.messages())

    def test_tftp_trouble_boots_sd(self) -> None:
        device = self.make(image="android")
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.pxe.broken = True
        self.power_cycle(device)
        self.advance(11)
        self.assertEqual(device.state, "running_android")
        self.assertEqual(self.api.events, [])

    def test_time_scale(self) -> None:
        device = self.make(time_scale=0.01)
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.advance(3, step=0.01)
        self.assertEqual(self.api.device_events("panda-0001"), ANDROID)
        self.assertEqual(device.state, "running_android")


class Power(DeviceTestBase):
    def test_power_off_mid_install_aborts(self) -> None:
        device = self.make()
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.until(lambda: device.state == "android_downloading", 11)
        self.advance(20)
        device.set_power(False)
        self.assertEqual(device.state, "off")
        self.assertFalse(device.ping())
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer survives the power")
        self.advance(1000)
        self.assertEqual(self.api.device_events("panda-0001"), ANDROID[:2])

    def test_power_off_while_extracting_leaves_corrupt_card(self) -> None:
        device = self.make(image="android")
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.until(lambda: device.state == "android_extracting", 110)
        device.set_power(False)
        device.set_power(True)
        self.advance(12)
        self.assertEqual(device.state, "running_corrupt", "PXE config was cleared: boots the SD card")
        self.assertFalse(device.ping(), "a corrupt card never answers")
        self.assertFalse(self.agent.listening)

    def test_power_off_during_http_cancels_it(self) -> None:
        pending: list[Deferred] = []

        class Silent:
            def post(self, url: str, **kw: Any) -> Deferred:
                d: Deferred = Deferred()
                pending.append(d)
                return d

        device = self.make(http=Silent())
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.until(lambda: len(pending) == 1, 10)
        device.set_power(False)
        self.assertTrue(pending[0].called, "the request was cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(device.state, "off")

    def test_power_off_during_a_real_clients_http_is_no_simulator_error(self) -> None:
        """A cancelled HTTP/1.1 request fails with ResponseNeverReceived, not CancelledError:
        the power going is still no simulator error (seen with 200 devices in bench/demo.py)."""
        from twisted.python.failure import Failure
        from twisted.web._newclient import ResponseNeverReceived

        class LikeTreq:
            def post(self, url: str, **kw: Any) -> Deferred:
                return Deferred(lambda d: d.errback(ResponseNeverReceived([Failure(CancelledError())])))

        device = self.make(http=LikeTreq())
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.until(lambda: device.state == "mobile_init_started", 20)
        device.set_power(False)
        self.assertEqual(device.state, "off")
        self.assertNotIn("simulator error", self.messages())
        device.set_power(True)
        self.until(lambda: device.state == "mobile_init_started", 20)

    def test_same_power_twice_is_ignored(self) -> None:
        device = self.make(state="ready", image="android")
        device.set_power(True)
        self.assertEqual(device.state, "running_android")
        self.assertEqual(device.boots, 0)


class Startup(DeviceTestBase):
    def test_ready_boots_sd(self) -> None:
        device = self.make(state="ready", image="android")
        self.assertEqual(device.state, "running_android")
        self.assertTrue(device.ping())
        self.assertTrue(self.agent.listening)
        self.assertEqual(self.pxe.reads, [], "no boot loader at start-up")

    def test_legacy_free_boots_sd(self) -> None:
        device = self.make(state="free", image="b2g")
        self.assertEqual(device.state, "running_b2g")
        self.assertTrue(device.ping())

    def test_other_states_hang(self) -> None:
        for state in ("new", "failed_sut_verifying", "android_extracting", None):
            device = self.make(state=state, image="android")
            self.assertEqual(device.state, "failed", state)
            self.assertFalse(device.ping(), state)
            device.stop()
        self.assertFalse(self.agent.listening)

    def test_unpowered_at_start(self) -> None:
        device = self.make(state="ready", image="android", powered=False)
        self.assertEqual(device.state, "off")
        self.assertFalse(device.ping())
        device.set_power(True)
        self.assertEqual(device.state, "booting")


class Ping(DeviceTestBase):
    def test_ping_follows_power_and_image(self) -> None:
        device = self.make(state="ready", image="android")
        self.assertTrue(device.ping())
        device.set_power(False)
        self.assertFalse(device.ping(), "S3: no power, no answer")
        device.set_power(True)
        self.assertTrue(device.ping(), "boot loader")
        self.advance(11)
        self.assertEqual(device.state, "running_android")
        self.assertTrue(device.ping())

    def test_images_that_never_answer(self) -> None:
        for image in ("corrupt", "self-test", None):
            device = self.make(state="ready", image=image)
            self.assertFalse(device.ping(), image)
            self.assertFalse(self.agent.listening, image)
            device.stop()

    def test_b2g_answers_and_runs_an_agent(self) -> None:
        device = self.make(state="ready", image="b2g")
        self.assertTrue(device.ping())
        self.assertTrue(self.agent.listening)

    def test_lost_pings(self) -> None:
        self.failures.set("ping_lost_android", 1.0)
        device = self.make(state="ready", image="android")
        self.assertFalse(device.ping())
        self.failures.set("ping_lost_android", 0.5)
        answers = {device.ping() for _ in range(50)}
        self.assertEqual(answers, {True, False})


class Failures(DeviceTestBase):
    def test_default_is_no_failure(self) -> None:
        settings = FailureSettings()
        self.assertEqual(settings.probability("panda-0001", "booting"), 0.0)
        original = FailureSettings.original()
        self.assertEqual(original.probability("x", "booting"), 0.05)
        self.assertEqual(original.probability("x", "b2g_extracting"), 0.08)
        self.assertEqual(original.probability("x", "self_test_hang"), 0.2)
        self.assertEqual(original.probability("x", "android_extracting"), 0.0)

    def test_validation(self) -> None:
        settings = FailureSettings()
        self.assertRaises(ValueError, settings.set, "andriod_extracting", 0.5)
        self.assertRaises(ValueError, settings.set, "booting", 1.5)
        self.assertRaises(ValueError, FailureSettings, {}, {"panda-0001": {"booting": -1}})

    def test_per_device_override(self) -> None:
        settings = FailureSettings({"booting": 0.1}, {"panda-0003": {"android_extracting": 1.0, "booting": 0}})
        self.assertEqual(settings.probability("panda-0003", "android_extracting"), 1.0)
        self.assertEqual(settings.probability("panda-0003", "booting"), 0.0)
        self.assertEqual(settings.probability("panda-0001", "booting"), 0.1)
        self.assertEqual(settings.probability("panda-0001", "android_extracting"), 0.0)
        settings.clear("panda-0003")
        self.assertEqual(settings.probability("panda-0003", "android_extracting"), 0.0)

    def test_injected_failure_reboots(self) -> None:
        self.failures.set("android_extracting", 1.0, device="panda-0001")
        device = self.make()
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.until(lambda: device.events == ANDROID[:3], 110)
        self.assertEqual(device.injected_failures, 1)
        self.assertEqual(device.state, "rebooting")
        self.advance(20)
        self.assertEqual(device.state, "running_corrupt")
        self.assertEqual(device.boots, 2)
        self.assertIn("failure injected in android_extracting", self.messages())

    def test_failure_for_another_device_does_not_apply(self) -> None:
        self.failures.set("android_extracting", 1.0, device="panda-0003")
        device = self.make()
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.advance(300)
        self.assertEqual(self.api.device_events("panda-0001"), ANDROID)
        self.assertEqual(device.injected_failures, 0)

    def test_certain_boot_failure_does_not_spin(self) -> None:
        """P = 1 in the boot loader reboots once per REBOOT_SECONDS, not in a tight loop."""
        self.failures.set("booting", 1.0)
        device = self.make(image="android")
        self.power_cycle(device)
        self.assertEqual(device.injected_failures, 1)
        self.advance(10)
        self.assertIn(device.injected_failures, range(9, 12))
        self.failures.clear()
        self.advance(12)
        self.assertEqual(device.state, "running_android")

    def test_http_errors_do_not_stop_the_device(self) -> None:
        self.api.status = 500
        device = self.make()
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.advance(300)
        self.assertEqual(device.events, ANDROID)
        self.assertEqual(device.state, "running_android")
        self.assertIn("answered 500", self.messages())

    def test_event_bound(self) -> None:
        class Silent:
            def post(self, url: str, **kw: Any) -> Deferred:
                return Deferred()

        device = self.make(http=Silent())
        self.pxe.files[PATH] = pxe_config("android-second-stage")
        self.power_cycle(device)
        self.until(lambda: device.events == ["mobile_init_started"], 10)
        self.advance(9.5, step=0.5)
        self.assertEqual(device.events, ["mobile_init_started"], "still inside the 10 s bound")
        self.advance(1.5, step=0.5)
        self.assertEqual(device.events, ANDROID[:2], "gave up on the event after 10 s and went on")
        self.assertIn("posting event mobile_init_started failed", self.messages())

    def test_seeded_runs_repeat(self) -> None:
        def run() -> list[float]:
            clock = Clock()
            api = RecordingAPI()
            pxe = PXEStore()
            pxe.files[PATH] = pxe_config("android-second-stage")
            times: list[float] = []
            def on_event(d: str, e: str) -> None:
                times.append(clock.seconds())
                if e == "mobile_init_started":
                    pxe.files.clear()

            api.on_event = on_event
            device = SimulatedDevice("panda-0001", clock=clock, http=StubTreq(api), api_url=API,
                                     fetch_pxe=pxe.fetch, mac=MAC, rng=random.Random(42))
            device.start(True)
            device.set_power(False)
            device.set_power(True)
            for _ in range(400):
                clock.advance(1)
            device.stop()
            return times

        first = run()
        self.assertEqual(len(first), 4)
        self.assertEqual(first, run())


class AgentReboot(DeviceTestBase):
    def test_rebt_reboots_the_device(self) -> None:
        device = self.make(state="ready", image="android")
        self.assertTrue(self.agent.listening)
        self.agent.onReboot()  # what SimulatedSUTAgent does on rebt
        self.clock.advance(0)
        self.assertEqual(device.state, "booting")
        self.assertFalse(self.agent.listening)
        self.advance(11)
        self.assertEqual(device.state, "running_android")
        self.assertTrue(self.agent.listening)
        self.assertEqual(self.agent.starts, 2)

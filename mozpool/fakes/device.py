"""A simulated panda: follows its relay, boots, reads its PXE config over TFTP, runs the live
image's second stage and reports progress to LifeGuard over HTTP, like a real board would.

Behaviour: ``spec/state-machines.md`` 5.3 and 6 (with the S1-S4 resolutions).  The device's
life while powered is one coroutine; losing power (or rebooting) cancels it wherever it waits,
which is how "power off aborts everything" stays true without flags in every phase.  Every
simulated delay runs on the injected clock, scaled by ``time_scale``; every random draw comes
from the device's own ``random.Random`` so a seeded pool replays exactly.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.bmm.pxe import pxe_filename
from mozpool.fakes.tftpclient import TFTPNotFound

log = Logger()

#: phase -> (nominal seconds, uniform integer splay), spec 6.2
PHASE_DURATIONS: dict[str, tuple[float, int]] = {
    "booting": (7, 3),
    "mobile_init_started": (1, 0),
    "android_downloading": (60, 30),
    "android_extracting": (90, 60),
    "android_rebooting": (3, 2),
    "b2g_downloading": (60, 30),
    "b2g_extracting": (90, 60),
    "b2g_rebooting": (3, 2),
    "self_test_running": (60, 0),
    "maint_mode": (3600, 0),
}

#: The original simulator's failure probabilities (spec 6.1, 6.2) -- a preset; the default is none.
#: ``running_<image>``: spontaneous reboot when the SD image comes up; ``self_test_hang``: the
#: self-test goes silent instead of sending ``self_test_ok``; ``ping_lost_<image>``: one ping
#: unanswered while running that image from the SD card.
ORIGINAL_FAILURES: dict[str, float] = {
    "booting": 0.05,
    "mobile_init_started": 0.01,
    "b2g_downloading": 0.05,
    "b2g_extracting": 0.08,
    "b2g_rebooting": 0.08,
    "running_b2g": 0.05,
    "self_test_hang": 0.2,
    "ping_lost_b2g": 0.03,
    "ping_lost_android": 0.01,
}

#: Second-stage script name (from ``mobile-imaging-url``) -> what the live image does.
STAGES = {
    "android-second-stage": "android",
    "b2g-second-stage": "b2g",
    "selftest-second-stage": "self-test",
    "maintenance-second-stage": "maintenance",
}

#: SD images that boot to something answering pings (spec 6.1: anything else never answers).
BOOTABLE_IMAGES = frozenset({"android", "b2g"})
#: SD images whose boot starts a SUT agent.  Spec 6.1 gives both a SUT verify success rate, and
#: LifeGuard verifies through SUT after either install, so both run one.
DEFAULT_SUT_IMAGES = frozenset({"android", "b2g"})

#: Stored device states in which a device is taken to be running its SD image at start-up.
RUNNING_STATES = frozenset({"ready", "free"})

EVENT_TIMEOUT = 10.0
#: Seconds from a spontaneous reboot to the boot loader.  The original rebooted in no time; a
#: pause keeps a failure probability of 1 (an operator's fault injection) from spinning the reactor.
REBOOT_SECONDS = 1.0

_URL = re.compile(r"mobile-imaging-url=(\S+)")
_BOOT_TOKEN = re.compile(r"mozpool-boot-token=(\S+)")


def second_stage(config: str) -> Optional[str]:
    """The second-stage name of a PXE config: the URL's last path part without ``.sh``."""
    found = _URL.search(config)
    if found is None:
        return None
    last = found.group(1).rstrip("/").rsplit("/", 1)[-1]
    return last[:-3] if last.endswith(".sh") else last


def _known_key(key: str) -> bool:
    return key in PHASE_DURATIONS or key == "self_test_hang" or key.startswith(("running_", "ping_lost_"))


class FailureSettings:
    """Failure probabilities per phase, pool-wide and per device; all zero unless set.

    A per-device entry overrides the pool-wide one for that key only, so an operator can write
    ``{"panda-0003": {"android_extracting": 1.0}}`` to break one device in one place.
    ``send_failed_self_test`` is the S4 test switch: a hung self-test sends ``failed_self_test``.
    """

    def __init__(
        self,
        defaults: Optional[Mapping[str, float]] = None,
        devices: Optional[Mapping[str, Mapping[str, float]]] = None,
        *,
        send_failed_self_test: bool = False,
    ) -> None:
        self.defaults: dict[str, float] = {}
        self.devices: dict[str, dict[str, float]] = {}
        self.send_failed_self_test = send_failed_self_test
        for key, p in (defaults or {}).items():
            self.set(key, p)
        for device, probabilities in (devices or {}).items():
            for key, p in probabilities.items():
                self.set(key, p, device)

    @classmethod
    def original(cls, **kwargs: Any) -> "FailureSettings":
        """The original simulator's probabilities (spec 6.2 table, self-test hang 0.2)."""
        return cls(ORIGINAL_FAILURES, **kwargs)

    def set(self, key: str, probability: float, device: Optional[str] = None) -> None:
        """Validated here so a typo in an operator's fault injection is refused, not ignored."""
        if not _known_key(key):
            raise ValueError(f"unknown failure key {key!r}")
        p = float(probability)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability for {key!r} must be within 0..1, not {probability!r}")
        target = self.defaults if device is None else self.devices.setdefault(device, {})
        target[key] = p

    def clear(self, device: Optional[str] = None) -> None:
        """Forget one device's overrides, or (no device) everything."""
        if device is None:
            self.defaults.clear()
            self.devices.clear()
        else:
            self.devices.pop(device, None)

    def probability(self, device: str, key: str) -> float:
        own = self.devices.get(device)
        if own is not None and key in own:
            return own[key]
        return self.defaults.get(key, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "defaults": dict(self.defaults),
            "devices": {d: dict(p) for d, p in self.devices.items()},
            "send_failed_self_test": self.send_failed_self_test,
        }


class _Reboot(Exception):
    """The device restarts with the power still on: an injected failure or a planned reboot."""

    def __init__(self, reason: str, injected: bool) -> None:
        super().__init__(reason)
        self.injected = injected


# ping answers
_NEVER, _ALWAYS, _SDCARD = "never", "always", "sdcard"

PXEFetcher = Callable[[str], "Deferred[bytes]"]


class SimulatedDevice:
    """One simulated device.

    ``fetch_pxe(path)`` reads a file from the TFTP server (failing with
    :class:`~mozpool.fakes.tftpclient.TFTPNotFound` when there is none); ``http`` is a treq-like
    client used for ``{api_url}/api/device/{name}/event/{event}/`` and ``.../bootconfig/``;
    ``agent`` is this device's :class:`~mozpool.fakes.sutagent.SimulatedSUTAgent` (or None).
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Any,
        http: Any,
        api_url: str,
        fetch_pxe: PXEFetcher,
        mac: str,
        fqdn: Optional[str] = None,
        rng: Optional[random.Random] = None,
        failures: Optional[FailureSettings] = None,
        time_scale: float = 1.0,
        sdcard_image: Optional[str] = None,
        stored_state: Optional[str] = None,
        agent: Any = None,
        sut_images: Iterable[str] = DEFAULT_SUT_IMAGES,
        event_timeout: float = EVENT_TIMEOUT,
    ) -> None:
        self.name = name
        self.fqdn = fqdn or name
        self.mac = mac
        self.pxe_path = "pxelinux.cfg/" + pxe_filename(mac)
        self._clock = clock
        self._http = http
        self.api_url = api_url.rstrip("/")
        #: the current boot's token, read from the PXE config (None: the config carried none)
        self.boot_token: Optional[str] = None
        self._fetch_pxe = fetch_pxe
        self._rng = rng or random.Random()
        self.failures = failures or FailureSettings()
        self.time_scale = time_scale
        self.sdcard_image = sdcard_image
        self.stored_state = stored_state
        self.agent = agent
        self.sut_images = frozenset(sut_images)
        self.event_timeout = event_timeout

        #: simulator state, for logs and tests ('off', 'booting', 'running_android', 'failed', ...)
        self.state = "off"
        self.powered = False
        #: every event the device tried to post, in order
        self.events: list[str] = []
        self.boots = 0
        self.injected_failures = 0
        self._ping = _NEVER
        self._life: Optional[Deferred[None]] = None
        self._cancelling = False
        if agent is not None:
            agent.onReboot = self._agent_rebooted

    # ------------------------------------------------------------------ control

    def start(self, powered: bool) -> None:
        """Start-up (5.3): a device the database calls ready runs its SD image, others hang."""
        self.powered = powered
        if powered:
            self._begin(self._startup())
        else:
            self._set_state("off")

    def stop(self) -> None:
        """Pool shutdown: abort whatever runs, leave the power flag alone."""
        self._cancel_life()
        self._ping = _NEVER
        self._stop_agent()

    def set_power(self, on: bool) -> None:
        """Called by the relay: power off aborts everything, power on boots."""
        if on == self.powered:
            return
        self.powered = on
        if on:
            log.debug("{device}: power on", device=self.name)
            self._begin(self._boot_loop())
        else:
            log.debug("{device}: power off", device=self.name)
            self._cancel_life()
            self._ping = _NEVER
            self._stop_agent()
            self._set_state("off")

    def reboot(self, reason: str = "reboot requested") -> None:
        """A reboot with the power on (the SUT agent's ``rebt``): boot again from the loader."""
        if not self.powered:
            return
        log.info("{device}: {reason}", device=self.name, reason=reason)
        self._cancel_life()
        self._ping = _NEVER
        self._stop_agent()
        self._begin(self._boot_loop())

    def ping(self) -> bool:
        """The answer a ping gets now (6.1, with S3: no power, no answer)."""
        if not self.powered or self._ping == _NEVER:
            return False
        if self._ping == _ALWAYS:
            return True
        image = self.sdcard_image
        if image not in BOOTABLE_IMAGES:
            return False
        p = self.failures.probability(self.name, f"ping_lost_{image}")
        return not (p > 0 and self._rng.random() < p)

    # ------------------------------------------------------------------ the coroutine

    def _begin(self, life: Awaitable[None]) -> None:
        self._cancel_life()
        d: Deferred[None] = Deferred.fromCoroutine(life)  # type: ignore[arg-type]
        self._life = d
        d.addErrback(self._life_ended)

    def _cancel_life(self) -> None:
        life, self._life = self._life, None
        if life is not None and not life.called:
            self._cancelling = True
            try:
                life.cancel()
            finally:
                self._cancelling = False

    def _life_ended(self, failure: Failure) -> None:
        if failure.check(CancelledError) or self._cancelling:
            return  # the power went; what an HTTP call in flight became does not matter
        log.failure("{device}: simulator error; the device hangs", failure, device=self.name)
        self._ping = _NEVER
        self._stop_agent()
        self._set_state("failed")

    def _agent_rebooted(self) -> None:
        # The agent calls this from inside its own rebt handling, before arming its restart
        # timer; rebooting on the next turn lets our agent.stop() cancel that timer.
        self._clock.callLater(0, self.reboot, "SUT agent asked to reboot")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.debug("{device}: {old} -> {new}", device=self.name, old=self.state, new=state)
        self.state = state

    async def _startup(self) -> None:
        if self.stored_state in RUNNING_STATES:
            try:
                await self._run_sdcard()
            except _Reboot as r:
                await self._rebooting(r)
        else:
            await self._hang()
        await self._boot_loop()

    async def _boot_loop(self) -> None:
        while True:
            try:
                await self._boot()
            except _Reboot as r:
                await self._rebooting(r)

    async def _rebooting(self, r: _Reboot) -> None:
        self._ping = _NEVER
        self._stop_agent()
        self._set_state("rebooting")
        if r.injected:
            self.injected_failures += 1
            log.warn("{device}: {reason}; rebooting", device=self.name, reason=str(r))
        else:
            log.info("{device}: {reason}", device=self.name, reason=str(r))
        await deferLater(self._clock, REBOOT_SECONDS * self.time_scale, lambda: None)

    # ------------------------------------------------------------------ waiting

    def _draw(self, phase: str) -> None:
        """Spec 6.2: one draw at the start of each wait; a failure is a reboot at once."""
        p = self.failures.probability(self.name, phase)
        if p > 0 and self._rng.random() < p:
            raise _Reboot(f"failure injected in {phase}", injected=True)

    async def _wait(self, phase: str) -> None:
        self._draw(phase)
        seconds, splay = PHASE_DURATIONS[phase]
        if splay:
            seconds += self._rng.randint(-splay, splay)
        seconds = max(0.0, seconds)
        log.debug("{device}: {phase} for {seconds:g} s", device=self.name, phase=phase, seconds=seconds)
        await deferLater(self._clock, seconds * self.time_scale, lambda: None)

    @staticmethod
    async def _forever() -> None:
        """Until the power goes (the coroutine is cancelled)."""
        await Deferred()

    async def _hang(self) -> None:
        self._ping = _NEVER
        self._stop_agent()
        self._set_state("failed")
        await self._forever()

    # ------------------------------------------------------------------ phases

    async def _boot(self) -> None:
        self.boots += 1
        self._set_state("booting")
        self._ping = _ALWAYS  # the boot loader answers pings for a while
        await self._wait("booting")
        self._ping = _NEVER
        self._set_state("pxe_loading")
        config = await self._read_pxe_config()
        stage = second_stage(config) if config is not None else None
        if stage is None:
            if config is not None:
                log.warn("{device}: PXE config has no mobile-imaging-url; booting the SD card",
                         device=self.name)
            await self._run_sdcard()
            return
        self._ping = _ALWAYS  # the live image
        # The live image authenticates its events with the token of this boot (mozpool.web.auth).
        found = _BOOT_TOKEN.search(config or "")
        self.boot_token = found.group(1) if found else None
        self._set_state("mobile_init_started")
        await self._post_event("mobile_init_started")
        await self._wait("mobile_init_started")
        kind = STAGES.get(stage)
        if kind == "android" or kind == "b2g":
            await self._install(kind)
        elif kind == "self-test":
            await self._self_test()
        elif kind == "maintenance":
            await self._maintenance()
        else:
            log.warn("{device}: unknown second stage {stage!r}; hanging until power cycled",
                     device=self.name, stage=stage)
            await self._hang()

    async def _read_pxe_config(self) -> Optional[str]:
        """U-Boot's ``pxe get``: no file, or any TFTP trouble, means boot from the SD card."""
        try:
            data = await self._fetch_pxe(self.pxe_path)
        except CancelledError:
            raise
        except TFTPNotFound:
            return None
        except Exception as e:
            if self._cancelling:
                raise
            log.warn("{device}: reading {path} over TFTP failed: {error}", device=self.name,
                     path=self.pxe_path, error=e)
            return None
        return data.decode("utf-8", "replace")

    async def _run_sdcard(self) -> None:
        image = self.sdcard_image
        self._set_state(f"running_{image or 'none'}")
        self._draw(f"running_{image}")
        self._ping = _SDCARD
        if self.agent is not None and image in self.sut_images:
            self.agent.start()
        await self._forever()

    async def _install(self, image: str) -> None:
        if image == "b2g":
            bootconfig = await self._get_bootconfig()
            if not isinstance(bootconfig, dict) or "b2gbase" not in bootconfig:
                # S2: the original meant to fail the stage here; a failure is a reboot.
                log.warn("{device}: got an invalid boot config - no b2gbase: {config!r}",
                         device=self.name, config=bootconfig)
                raise _Reboot("b2g second stage failed: no b2gbase", injected=True)
            log.debug("{device}: got b2gbase {base!r}", device=self.name, base=bootconfig["b2gbase"])
        for step in ("downloading", "extracting", "rebooting"):
            phase = f"{image}_{step}"
            self._set_state(phase)
            await self._post_event(phase)
            if step == "extracting":
                self.sdcard_image = "corrupt"
            await self._wait(phase)
        self.sdcard_image = image
        raise _Reboot(f"rebooting into the new {image} image", injected=False)

    async def _self_test(self) -> None:
        self._set_state("self_test_running")
        await self._post_event("self_test_running")
        p = self.failures.probability(self.name, "self_test_hang")
        hang = p > 0 and self._rng.random() < p
        await self._wait("self_test_running")
        if hang:
            # S4: the original goes silent and lets LifeGuard time out.
            if self.failures.send_failed_self_test:
                await self._post_event("failed_self_test")
            await self._hang()
        await self._post_event("self_test_ok")
        self._set_state("self_test_idle")
        await self._forever()

    async def _maintenance(self) -> None:
        self._set_state("maint_mode")
        await self._post_event("maint_mode")
        await self._wait("maint_mode")
        await self._hang()

    # ------------------------------------------------------------------ HTTP

    async def _bounded(self, d: "Deferred[Any]") -> Any:
        d.addTimeout(self.event_timeout, self._clock)
        return await d

    async def _post_event(self, event: str) -> None:
        """Errors are logged and the device carries on, like a script ignoring curl's status."""
        self.events.append(event)
        url = f"{self.api_url}/api/device/{self.name}/event/{event}/"
        try:
            response = await self._bounded(self._http.post(url, headers=self._credential()))
            body = await self._bounded(response.content())
            if response.code != 200:
                log.warn("{device}: event {event} answered {code}: {body!r}", device=self.name,
                         event=event, code=response.code, body=body[:200])
        except CancelledError:
            raise
        except Exception as e:
            if self._cancelling:
                raise
            log.warn("{device}: posting event {event} failed: {error}", device=self.name,
                     event=event, error=e)

    async def _get_bootconfig(self) -> Any:
        url = f"{self.api_url}/api/device/{self.name}/bootconfig/"
        try:
            response = await self._bounded(self._http.get(url, headers=self._credential()))
            body = await self._bounded(response.content())
        except CancelledError:
            raise
        except Exception as e:
            if self._cancelling:
                raise
            log.warn("{device}: fetching the boot config failed: {error}", device=self.name, error=e)
            return None
        if response.code != 200:
            log.warn("{device}: boot config answered {code}", device=self.name, code=response.code)
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    # ------------------------------------------------------------------ helpers

    def _credential(self) -> dict[bytes, list[bytes]]:
        if not self.boot_token:
            return {}
        return {b"Authorization": [b"Bearer " + self.boot_token.encode("ascii")]}

    def _stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop(dropConnections=True)

"""The device machine (LifeGuard): states, events, timeouts, counters and entry actions of
state-machines.md section 1, as an Automat ``TypeMachineBuilder`` table.

How one operation runs (the row is the truth, R-1):

1. :class:`MachineRunner` loads the row under the device's lock and calls :class:`DeviceKind`.
2. The Automat machine is restored in the row's state (``STATES[m.state]``) around an
   :class:`Ops` core and given one input: the event, or ``timeout``.  A (state, input) pair that
   the table lacks raises ``NoTransition``: the event is not accepted (giving the input and
   catching that is :func:`~mozpool.statemachine.core.apply_input`, shared with the request machine).
3. The transition's behaviour runs (counters, device columns) and answers where to go:
   ``FOLLOW`` the table's target, a state decided from data (a counter over its limit), or
   ``STAY``.  Then ``m.goto`` persists the state and deadline and runs the entry action
   (``ENTRY``), which is where hardware work starts; a PXE file change that belongs to the
   transition itself is made after the goto too, unless the entry action moved on.
4. Hardware work is started, never awaited: its outcome comes back later as a fresh event
   (``power_cycle_ok``, ``ping_ok``, ``failed``, ...) queued behind the lock, and is ignored if
   the device has moved on.  An entry action that makes a transition starts nothing more (R-4).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.bmm.interfaces import DeviceInfo, IDeviceHardware
from mozpool.lifeguard import queries
from mozpool.lifeguard.results import ImagingResults
from mozpool.statemachine.core import Machine, apply_input

log = Logger()

Args = dict[str, Any]

# --- states -----------------------------------------------------------------------------------

#: Every device state and its nominal timeout (None: no timer), section 1.3.
TIMEOUTS: dict[str, float | None] = {
    # steady and initial
    "new": 0,
    "unknown": None,
    "locked_out": None,
    "troubleshooting": None,
    "ready": 600,
    # power-cycle-only path
    "pc_power_cycling": 60,
    "pc_rebooting": 120,
    "pc_pinging": 10,
    "pc_sut_rebooting": 10,
    # PXE path: entry points (transient)
    "start_pxe_boot": None,
    "start_self_test": None,
    "start_maintenance": None,
    # PXE path: boot and live image
    "pxe_power_cycling": 60,
    "pxe_booting": 180,
    "mobile_init_started": 10,
    # Android / B2G install
    "android_downloading": 180,
    "android_extracting": 600,
    "b2g_downloading": 180,
    "b2g_extracting": 300,
    # verification and wrap-up
    "sut_verifying": 45,
    "sut_verify_power_cycle": 60,
    "sut_sdcard_verifying": 200,
    "operation_complete": 60,
    # maintenance and self-test
    "maintenance_mode": None,
    "self_test_running": 3600,
    # failure states: no timer
    "failed_power_cycling": None,
    "failed_pxe_booting": None,
    "failed_mobile_init_started": None,
    "failed_sut_verifying": None,
    "failed_sut_sdcard_verifying": None,
    "failed_android_downloading": None,
    "failed_android_extracting": None,
    "failed_android_pinging": None,
    "failed_b2g_downloading": None,
    "failed_b2g_extracting": None,
    "failed_b2g_pinging": None,
    "failed_self_test": None,
}

FAILED_STATES = tuple(s for s in TIMEOUTS if s.startswith("failed_"))

#: Failure states whose entry goes straight on to a self-test (the request still hears
#: ``failed-bad-device``).
AUTO_SELF_TEST = frozenset(
    {
        "failed_sut_verifying",
        "failed_sut_sdcard_verifying",
        "failed_android_downloading",
        "failed_android_extracting",
        "failed_android_pinging",
        "failed_b2g_downloading",
        "failed_b2g_extracting",
        "failed_b2g_pinging",
    }
)

#: States that accept all four please_* events, and those that accept the basic two (1.2).
FULL_PLEASE = ("new", "unknown", "troubleshooting", "ready")
BASIC_PLEASE = ("maintenance_mode", "self_test_running", *FAILED_STATES)

#: States whose entry action always moves on: a row left in one by a crash has no deadline,
#: so the service re-enters them at start-up.
TRANSIENT = ("start_pxe_boot", "start_self_test", "start_maintenance")

#: Imaging result codes (1.4).
COMPLETE = "complete"
FAILED_BAD_DEVICE = "failed-bad-device"
FAILED_BAD_IMAGE = "failed-bad-image"


# --- what a behaviour answers ----------------------------------------------------------------


class _Stay:
    def __repr__(self) -> str:
        return "STAY"


#: Go to the target the table names (for ``.loop()``: re-enter the state).
FOLLOW = None
#: Make no transition at all (no state, timer or entry change).
STAY = _Stay()

#: A behaviour: an awaitable answering FOLLOW, STAY, or a state chosen from data (a counter
#: over its limit).
Step = Awaitable[Any]


# --- the inputs --------------------------------------------------------------------------------


class DeviceInputs(Protocol):
    """Inputs of the device machine: ``persisted``, ``timeout`` and one per device event.

    Each event input takes the event's args and returns the behaviour (an awaitable answering a
    target); the runner calls it only inside the device's lock."""

    def persisted(self) -> str:
        """The state's name: every state answers, since Automat has no state getter."""

    def timeout(self) -> Step:
        """The state's deadline passed (delivered by the timeout driver)."""

    def please_power_cycle(self, args: Args) -> Step:
        """Operator or MozPool: power-cycle and wait for a ping."""

    def please_image(self, args: Args) -> Step:
        """MozPool: install ``args['image']`` with ``args['boot_config']``."""

    def please_self_test(self, args: Args) -> Step:
        """Operator: boot the self-test image (or just power-cycle without one)."""

    def please_start_maintenance(self, args: Args) -> Step:
        """Operator: boot the maintenance image."""

    def failed(self, args: Args) -> Step:
        """The ``ready`` health check (ping or SUT verify) failed."""

    def power_cycle_ok(self, args: Args) -> Step:
        """The relay power cycle completed."""

    def power_cycle_failed(self, args: Args) -> Step:
        """The relay power cycle failed (counts as a timeout)."""

    def ping_ok(self, args: Args) -> Step:
        """The device answered a ping."""

    def sut_verify_ok(self, args: Args) -> Step:
        """The SUT agent answered."""

    def sut_sdcard_ok(self, args: Args) -> Step:
        """A test file written through SUT came back intact."""

    def sut_sdcard_failed(self, args: Args) -> Step:
        """The SD card check failed (counts as a timeout)."""

    def mobile_init_started(self, args: Args) -> Step:
        """Device: the live image's init script runs."""

    def android_downloading(self, args: Args) -> Step:
        """Device: the Android second stage is downloading."""

    def android_extracting(self, args: Args) -> Step:
        """Device: the Android second stage is writing the SD card."""

    def android_rebooting(self, args: Args) -> Step:
        """Device: Android is installed; the device reboots from its SD card."""

    def b2g_downloading(self, args: Args) -> Step:
        """Device: the B2G second stage is downloading."""

    def b2g_extracting(self, args: Args) -> Step:
        """Device: the B2G second stage is writing the SD card."""

    def b2g_rebooting(self, args: Args) -> Step:
        """Device: B2G is installed; the device reboots from its SD card."""

    def maint_mode(self, args: Args) -> Step:
        """Device: the maintenance image is up."""

    def self_test_running(self, args: Args) -> Step:
        """Device: the self-test image is testing."""

    def self_test_ok(self, args: Args) -> Step:
        """Device: the self-test passed."""

    def failed_self_test(self, args: Args) -> Step:
        """Device: the self-test failed."""


#: Event names a caller may deliver (``persisted`` and ``timeout`` are not events).
EVENTS = frozenset(
    name
    for name in DeviceInputs.__dict__
    if not name.startswith("_") and callable(DeviceInputs.__dict__[name]) and name not in ("persisted", "timeout")
)


# --- the core: one operation on one device -----------------------------------------------------


class _Operation:
    """A side effect in flight, and whether a later goto has made it moot."""

    def __init__(self) -> None:
        self.deferred: defer.Deferred[Any] | None = None
        self.superseded = False

    def supersede(self) -> None:
        self.superseded = True
        if self.deferred is not None and not self.deferred.called:
            self.deferred.cancel()


class Ops:
    """The collaborators of one operation: the machine (row, lock held) and LifeGuard's parts."""

    def __init__(self, kind: "DeviceKind", m: Machine) -> None:
        self.kind = kind
        self.m = m
        self.hardware: IDeviceHardware = kind.hardware
        #: PXE file changes of the transition, made once its goto has written the row
        self.after_goto: list[Callable[[], None]] = []

    async def facts(self) -> queries.DeviceFacts:
        found = await self.m.db.runInteraction(queries.device_facts, self.m.id)
        if found is None:
            raise LookupError(f"device {self.m.key} vanished")
        return found

    async def pxe_contents(self, image: str | None) -> str | None:
        return await self.m.db.runInteraction(queries.pxe_contents, self.m.id, image)

    async def set_next(self, image: str | None, boot_config: str | None) -> None:
        await self.m.db.runInteraction(queries.set_next, self.m.id, image, boot_config)

    async def clear_image(self) -> None:
        await self.m.db.runInteraction(queries.clear_image, self.m.id)

    async def clear_pxe_after_goto(self) -> None:
        info = (await self.facts()).info
        self.after_goto.append(lambda: self.clear_pxe(info))

    def clear_pxe(self, info: DeviceInfo) -> None:
        self._pxe("clear", lambda: self.hardware.clear_pxe(info))

    def set_pxe(self, info: DeviceInfo, contents: str) -> None:
        self._pxe("set", lambda: self.hardware.set_pxe(info, contents))

    def _pxe(self, what: str, call: Callable[[], Any]) -> None:
        # The PXE file is local and synchronous; a failure is logged and the state's timeout retries.
        try:
            call()
        except Exception:
            log.failure("{what} PXE config for {device} failed", what=what, device=self.m.key)

    def start(self, what: str, call: Callable[[DeviceInfo], Any], info: DeviceInfo, ok: str | None,
              fail: str | None, exclusive: bool = False) -> None:
        """Start ``call(info)``; its outcome comes back as the event ``ok`` or ``fail`` (or nothing).

        An ``exclusive`` operation (a power cycle) belongs to the state visit that started it: the
        next goto of the device (another state, or the same one re-entered) cancels it if it is
        still queued or running, and its outcome is then dropped.  Otherwise a cycle that outlived
        its state would later power off a device that is busy with something else."""
        m = self.m
        op = _Operation()

        def done(success: Any) -> None:
            event = ok if success else fail
            if event is not None and not op.superseded:
                m.post(event)

        def error(f: Failure) -> None:
            if op.superseded:
                return
            log.failure("{what} on {device} failed", f, what=what, device=m.key)
            if fail is not None:
                m.post(fail)

        op.deferred = d = defer.maybeDeferred(call, info)
        if exclusive:
            key = m.key
            self.kind.in_flight[key] = op

            def finished(result: Any) -> Any:
                if self.kind.in_flight.get(key) is op:
                    del self.kind.in_flight[key]
                return result

            d.addBoth(finished)
        d.addCallbacks(done, error)

    async def send_result(self, result: str) -> None:
        await self.kind.results.send(self.m, result)


# --- behaviours: what a transition does around its goto -------------------------------------


Output = Callable[..., Step]


def _named(fn: Output, name: str) -> Output:
    fn.__name__ = fn.__qualname__ = name
    return fn


async def _clear_pxe(o: Ops) -> None:
    await o.clear_pxe_after_goto()


async def _clear_image(o: Ops) -> None:
    await o.clear_image()


async def _clear_next(o: Ops) -> None:
    await o.set_next(None, None)


def _clear_counter(name: str) -> Callable[[Ops], Awaitable[None]]:
    async def clear(o: Ops) -> None:
        await o.m.clear(name)

    clear.__name__ = f"clear {name}"
    return clear


def then(*steps: Callable[[Ops], Awaitable[None]]) -> Output:
    """Run ``steps`` in order, then go where the table says."""

    def output(inputs: Any, core: Ops, args: Args | None = None) -> Step:
        async def run() -> Any:
            for step in steps:
                await step(core)
            return FOLLOW

        return run()

    return _named(output, ", ".join(s.__name__.lstrip("_") for s in steps) or "goto")


def clear_counter(name: str, *more: Callable[[Ops], Awaitable[None]]) -> Output:
    """Clear counter ``name`` (and run ``more``), then go where the table says."""
    return then(_clear_counter(name), *more)


def counted(counter: str, limit: int, failure: str) -> Output:
    """Increment ``counter``; above ``limit`` go to ``failure``, else where the table says."""

    def output(inputs: Any, core: Ops, args: Args | None = None) -> Step:
        async def run() -> Any:
            if await core.m.incr(counter) > limit:
                return failure
            return FOLLOW

        return run()

    return _named(output, f"incr {counter}; > {limit} -> {failure}")


def _please_image(inputs: Any, core: Ops, args: Args) -> Step:
    async def run() -> Any:
        m = core.m
        image = args.get("image")
        boot_config = args.get("boot_config", "{}")
        if not isinstance(boot_config, str):
            boot_config = "{}"
        contents = await core.pxe_contents(image) if isinstance(image, str) else None
        if contents is None:
            # D1: tell the request at once instead of leaving it waiting in `pending`.
            await m.log(f"no PXE config for image {image!r} on this device's hardware; not imaging", "error")
            await core.send_result(FAILED_BAD_IMAGE)
            return STAY
        await m.log(f"writing image {image}, boot config {boot_config} to db")
        await core.set_next(image, boot_config)
        return FOLLOW

    return run()


def _pc_pinging_timeout(inputs: Any, core: Ops) -> Step:
    async def run() -> Any:
        m = core.m
        if await m.incr("pc_pinging") > 12:
            await m.clear("pc_pinging")
            # D5: this loop has no final limit; make every restart visible.
            await m.log("no answer to 12 pings: power-cycling again", "warn")
            return "pc_power_cycling"
        return FOLLOW

    return run()


def _sut_verifying_timeout(inputs: Any, core: Ops) -> Step:
    async def run() -> Any:
        n = await core.m.incr("sut_verifying")
        if n > 30:
            return "failed_sut_verifying"
        if n % 10 == 0:
            return "sut_verify_power_cycle"
        return FOLLOW

    return run()


_sut_verifying_timeout.__name__ = (
    "incr sut_verifying; > 30 -> failed_sut_verifying; every 10th -> sut_verify_power_cycle"
)
_pc_pinging_timeout.__name__ = "incr pc_pinging; > 12 -> clear it, pc_power_cycling"
_please_image.__name__ = "look up PXE config; NotFound -> failed-bad-image, stay; else set next_image"

go = then()


# --- the table (section 1.3); one upon() per accepted (state, input) -------------------------

builder: TypeMachineBuilder[DeviceInputs, Ops] = TypeMachineBuilder(DeviceInputs, Ops)
STATES = {name: builder.state(name) for name in TIMEOUTS}
S = STATES
I = DeviceInputs  # noqa: E741

for _name, _state in STATES.items():
    _state.upon(I.persisted).loop().returns(_name)

# please_* (1.2): full in new/unknown/troubleshooting/ready, basic in maintenance, self-test, failed_*
for _name in FULL_PLEASE:
    S[_name].upon(I.please_power_cycle).to(S["pc_power_cycling"])(then(_clear_next))
    S[_name].upon(I.please_image).to(S["start_pxe_boot"])(_please_image)
for _name in FULL_PLEASE + BASIC_PLEASE:
    S[_name].upon(I.please_self_test).to(S["start_self_test"])(go)
    S[_name].upon(I.please_start_maintenance).to(S["start_maintenance"])(go)

# steady and initial states
S["new"].upon(I.timeout).to(S["start_self_test"])(go)
S["ready"].upon(I.failed).to(S["start_self_test"])(go)
S["ready"].upon(I.timeout).loop()(go)  # re-enter: the health check runs again

# power-cycle-only path
S["pc_power_cycling"].upon(I.power_cycle_ok).to(S["pc_rebooting"])(clear_counter("power_cycling"))
S["pc_power_cycling"].upon(I.power_cycle_failed).loop()(counted("power_cycling", 200, "failed_power_cycling"))
S["pc_power_cycling"].upon(I.timeout).loop()(counted("power_cycling", 200, "failed_power_cycling"))
S["pc_rebooting"].upon(I.timeout).to(S["pc_pinging"])(go)
S["pc_pinging"].upon(I.ping_ok).to(S["operation_complete"])(clear_counter("pc_pinging"))
S["pc_pinging"].upon(I.timeout).loop()(_pc_pinging_timeout)  # or -> pc_power_cycling
S["pc_sut_rebooting"].upon(I.timeout).to(S["sut_verifying"])(go)

# PXE path: boot and live image (the start_* states are transient: entry actions only)
S["pxe_power_cycling"].upon(I.power_cycle_ok).to(S["pxe_booting"])(clear_counter("power_cycling"))
S["pxe_power_cycling"].upon(I.power_cycle_failed).loop()(counted("power_cycling", 200, "failed_power_cycling"))
S["pxe_power_cycling"].upon(I.timeout).loop()(counted("power_cycling", 200, "failed_power_cycling"))
S["pxe_booting"].upon(I.mobile_init_started).to(S["mobile_init_started"])(clear_counter("pxe_booting", _clear_pxe))
S["pxe_booting"].upon(I.timeout).to(S["pxe_power_cycling"])(counted("pxe_booting", 30, "failed_pxe_booting"))
S["mobile_init_started"].upon(I.android_downloading).to(S["android_downloading"])(
    clear_counter("mobile_init_started", _clear_pxe)
)
S["mobile_init_started"].upon(I.b2g_downloading).to(S["b2g_downloading"])(
    clear_counter("mobile_init_started", _clear_pxe)
)
S["mobile_init_started"].upon(I.maint_mode).to(S["maintenance_mode"])(
    clear_counter("mobile_init_started", _clear_image)
)
S["mobile_init_started"].upon(I.self_test_running).to(S["self_test_running"])(
    clear_counter("mobile_init_started", _clear_pxe, _clear_image, _clear_next)
)
S["mobile_init_started"].upon(I.timeout).to(S["pxe_power_cycling"])(
    counted("mobile_init_started", 10, "failed_mobile_init_started")
)

# Android install
S["android_downloading"].upon(I.android_extracting).to(S["android_extracting"])(
    clear_counter("android_downloading", _clear_image)
)
S["android_downloading"].upon(I.timeout).to(S["pxe_power_cycling"])(
    counted("android_downloading", 3, "failed_android_downloading")
)
S["android_extracting"].upon(I.android_rebooting).to(S["sut_verifying"])(clear_counter("android_extracting"))
S["android_extracting"].upon(I.timeout).to(S["pxe_power_cycling"])(
    counted("android_extracting", 10, "failed_android_extracting")
)

# B2G install
S["b2g_downloading"].upon(I.b2g_extracting).to(S["b2g_extracting"])(clear_counter("b2g_downloading", _clear_image))
S["b2g_downloading"].upon(I.timeout).to(S["pxe_power_cycling"])(counted("b2g_downloading", 3, "failed_b2g_downloading"))
S["b2g_extracting"].upon(I.b2g_rebooting).to(S["sut_verifying"])(clear_counter("b2g_extracting"))
S["b2g_extracting"].upon(I.timeout).to(S["pxe_power_cycling"])(counted("b2g_extracting", 10, "failed_b2g_extracting"))

# verification and wrap-up
S["sut_verifying"].upon(I.sut_verify_ok).to(S["sut_sdcard_verifying"])(clear_counter("sut_verifying"))
S["sut_verifying"].upon(I.timeout).loop()(_sut_verifying_timeout)  # or -> sut_verify_power_cycle / failed
S["sut_verify_power_cycle"].upon(I.power_cycle_ok).to(S["sut_verifying"])(go)  # D7: counter kept
S["sut_verify_power_cycle"].upon(I.timeout).loop()(counted("sut_verify_power_cycle", 3, "failed_sut_verifying"))
S["sut_sdcard_verifying"].upon(I.sut_sdcard_ok).to(S["operation_complete"])(clear_counter("sut_sdcard_verifying"))
S["sut_sdcard_verifying"].upon(I.sut_sdcard_failed).loop()(
    counted("sut_sdcard_verifying", 2, "failed_sut_sdcard_verifying")
)
S["sut_sdcard_verifying"].upon(I.timeout).loop()(counted("sut_sdcard_verifying", 2, "failed_sut_sdcard_verifying"))
S["operation_complete"].upon(I.timeout).loop()(go)  # safety net: the entry action moves on

# self-test
S["self_test_running"].upon(I.self_test_ok).to(S["ready"])(go)
S["self_test_running"].upon(I.failed_self_test).to(S["failed_self_test"])(go)
S["self_test_running"].upon(I.timeout).to(S["failed_self_test"])(go)

DeviceMachine = builder.build()


# --- entry actions (run by goto, after the row is written) -----------------------------------


async def _enter_ready(o: Ops) -> None:
    """Health check of an idle device; only a failure comes back (as ``failed``)."""
    if await o.m.db.runInteraction(queries.is_claimed, o.m.id):
        return
    facts = await o.facts()
    if facts.image_has_sut_agent:
        o.start("SUT verify", o.hardware.sut_verify, facts.info, ok=None, fail="failed")
    else:
        o.start("ping", o.hardware.ping, facts.info, ok=None, fail="failed")


async def _has_relay(o: Ops, facts: queries.DeviceFacts) -> bool:
    """Both power-cycling states need a relay; without one the device has failed."""
    if facts.info.relay_info:
        return True
    await o.m.log("no relay information: cannot power-cycle", "error")
    await o.m.goto("failed_power_cycling")
    return False


def _power_cycle(o: Ops, facts: queries.DeviceFacts, fail: str | None = "power_cycle_failed") -> None:
    o.start("power cycle", o.hardware.power_cycle, facts.info, ok="power_cycle_ok", fail=fail, exclusive=True)


async def _enter_pc_power_cycling(o: Ops) -> None:
    facts = await o.facts()
    if not await _has_relay(o, facts):
        return
    o.clear_pxe(facts.info)
    _power_cycle(o, facts)


async def _enter_pc_pinging(o: Ops) -> None:
    facts = await o.facts()
    o.start("ping", o.hardware.ping, facts.info, ok="ping_ok", fail=None)


async def _enter_start_pxe_boot(o: Ops) -> None:
    await o.m.clear()
    await o.m.goto("pxe_power_cycling")


async def _enter_start_self_test(o: Ops) -> None:
    await o.m.clear()
    if await o.pxe_contents("self-test") is not None:
        await o.set_next("self-test", "")
        await o.m.goto("pxe_power_cycling")
    else:
        await o.set_next(None, None)  # D3: no stale next_image for operation_complete to record
        await o.m.goto("pc_power_cycling")


async def _enter_start_maintenance(o: Ops) -> None:
    await o.m.clear()
    await o.set_next("maintenance", "")
    await o.m.goto("pxe_power_cycling")


async def _enter_pxe_power_cycling(o: Ops) -> None:
    facts = await o.facts()
    if not await _has_relay(o, facts):
        return
    contents = await o.pxe_contents(facts.next_image)
    if contents is None:
        await o.m.log(f"no PXE config for image {facts.next_image!r} on this device's hardware", "warn")
        await o.m.goto("failed_pxe_booting")
        return  # D2: no power cycle after the transition
    o.set_pxe(facts.info, contents)
    _power_cycle(o, facts)


async def _enter_sut_verifying(o: Ops) -> None:
    facts = await o.facts()
    o.start("SUT verify", o.hardware.sut_verify, facts.info, ok="sut_verify_ok", fail=None)


async def _enter_sut_verify_power_cycle(o: Ops) -> None:
    facts = await o.facts()
    _power_cycle(o, facts, fail=None)  # a failed cycle here waits for the timeout (as the original)


async def _enter_sut_sdcard_verifying(o: Ops) -> None:
    facts = await o.facts()
    o.start("SD card check", o.hardware.sut_sdcard_check, facts.info, ok="sut_sdcard_ok", fail="sut_sdcard_failed")


async def _enter_operation_complete(o: Ops) -> None:
    await o.m.db.runInteraction(queries.promote_next, o.m.id)
    await o.send_result(COMPLETE)
    await o.m.goto("ready")


def _enter_failed(state: str) -> Callable[[Ops], Awaitable[None]]:
    async def enter(o: Ops) -> None:
        await o.m.log(f"device has failed: {state}", "error")
        await o.send_result(FAILED_BAD_DEVICE)
        if state in AUTO_SELF_TEST:
            await o.m.goto("start_self_test")

    return enter


ENTRY: dict[str, Callable[[Ops], Awaitable[None]]] = {
    "ready": _enter_ready,
    "pc_power_cycling": _enter_pc_power_cycling,
    "pc_pinging": _enter_pc_pinging,
    "start_pxe_boot": _enter_start_pxe_boot,
    "start_self_test": _enter_start_self_test,
    "start_maintenance": _enter_start_maintenance,
    "pxe_power_cycling": _enter_pxe_power_cycling,
    "sut_verifying": _enter_sut_verifying,
    "sut_verify_power_cycle": _enter_sut_verify_power_cycle,
    "sut_sdcard_verifying": _enter_sut_sdcard_verifying,
    "operation_complete": _enter_operation_complete,
    **{state: _enter_failed(state) for state in FAILED_STATES},
}


# --- the MachineKind ---------------------------------------------------------------------------


class DeviceKind:
    """LifeGuard's machine for :class:`~mozpool.statemachine.core.MachineRunner`."""

    table = "devices"
    log_kind = "device"
    key_column = "name"
    unknown_state = "unknown"
    timeouts = TIMEOUTS

    def __init__(self, hardware: IDeviceHardware, results: ImagingResults) -> None:
        self.hardware = hardware
        self.results = results
        #: device -> the exclusive operation (a power cycle) still running for it
        self.in_flight: dict[str, _Operation] = {}

    def restore(self, m: Machine) -> tuple[DeviceInputs, Ops]:
        """The Automat machine in the row's state (an unknown name reads as ``unknown``)."""
        core = Ops(self, m)
        return DeviceMachine(core, STATES[m.state]), core

    async def event(self, m: Machine, event: str, args: dict[str, Any]) -> bool:
        if event not in EVENTS:
            return False
        machine, core = self.restore(m)
        return await apply_input(machine, lambda i: getattr(i, event)(args), lambda t: self._go(m, machine, core, t))

    async def timeout(self, m: Machine) -> bool:
        machine, core = self.restore(m)
        return await apply_input(machine, lambda i: i.timeout(), lambda t: self._go(m, machine, core, t))

    async def _go(self, m: Machine, machine: DeviceInputs, core: Ops, target: Any) -> None:
        """Where a transition's behaviour said to go: the table's target, one chosen from data, or nowhere."""
        if target is STAY:
            return
        generation = m.generation
        await m.goto(machine.persisted() if target is FOLLOW else target)
        if m.generation == generation + 1:  # not if the entry action moved on
            for action in core.after_goto:
                action()

    async def enter(self, m: Machine, state: str) -> None:
        running = self.in_flight.pop(m.key, None)
        if running is not None:
            running.supersede()
        action = ENTRY.get(state)
        if action is not None:
            await action(Ops(self, m))

"""The device machine (LifeGuard): states, events, timeouts, counters and entry actions of
state-machines.md section 1, and the health rows of issue 15, as an Automat
``TypeMachineBuilder`` table.  Every transition is a row of the table (one ``upon(...)`` each).

How one operation runs (the row is the truth, R-1):

1. :class:`MachineRunner` loads the row under the device's lock and calls :class:`DeviceKind`.
2. The Automat machine is restored in the row's state (``STATES[m.state]``) around an
   :class:`Ops` core and given one input: the event, or ``timeout``.  A (state, input) pair that
   the table lacks raises ``NoTransition``: the event is not accepted (giving the input and
   catching that is :func:`~mozpool.statemachine.core.apply_input`, shared with the request machine).
3. The transition's behaviour runs (counters, device columns) and answers ``FOLLOW`` (go to the
   state the row names; ``loop()`` re-enters), ``STAY`` (no transition at all), or an
   :class:`Outcome`: a *decision* row (always a ``loop()``) makes no transition of its own but
   names the input to give next in the same state, so a choice made from data (a counter over
   its limit, a suspect power controller, the server's quarantine cap) is a row too.
4. ``m.goto`` persists the state and deadline and runs the entry action (``ENTRY``), which is
   where hardware work starts.  An entry action that must move on (a transient state, no relay,
   no PXE config, an automatic self-test) answers an outcome as well, and starts nothing (R-4);
   a PXE file change that belongs to a transition is made after its goto, unless the entry
   action moved on.
5. Hardware work is started, never awaited: its outcome comes back later as a fresh event
   (``power_cycle_ok``, ``ping_ok``, ``failed``, ...) queued behind the lock, and is ignored if
   the device has moved on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.bmm.interfaces import DeviceInfo, IDeviceHardware
from mozpool.lifeguard import queries
from mozpool.lifeguard.results import ImagingResults
from mozpool.lifeguard.states import (  # noqa: F401  (re-exported: the machine's names)
    AUTO_SELF_TEST,
    BASIC_PLEASE,
    FAILED_STATES,
    FULL_PLEASE,
    TIMEOUTS,
    TRANSIENT,
)
from mozpool.statemachine.core import Machine, apply_input

log = Logger()

Args = dict[str, Any]

#: Imaging result codes (1.4).
COMPLETE = "complete"
FAILED_BAD_DEVICE = "failed-bad-device"
FAILED_BAD_IMAGE = "failed-bad-image"

#: Images LifeGuard installs for itself; any other next_image is a request's install.
OWN_IMAGES = ("self-test", "maintenance")


# --- what a behaviour answers ----------------------------------------------------------------


class _Stay:
    def __repr__(self) -> str:
        return "STAY"


#: Go to the target the table names (for ``.loop()``: re-enter the state).
FOLLOW = None
#: Make no transition at all (no state, timer or entry change).
STAY = _Stay()


@dataclass(frozen=True)
class Outcome:
    """What a decision found: the name of the input to give next, in the same state."""

    input: str


#: A behaviour: an awaitable answering FOLLOW, STAY or an Outcome.
Step = Awaitable[Any]


# --- the inputs --------------------------------------------------------------------------------


class DeviceInputs(Protocol):
    """Inputs of the device machine: ``persisted``, ``timeout``, one per device event, the
    health notices LifeGuard posts itself, and the outcomes of decisions.

    Each event input takes the event's args and returns the behaviour (an awaitable answering a
    target); the runner calls it only inside the device's lock."""

    def persisted(self) -> str:
        """The state's name: every state answers, since Automat has no state getter."""

    def timeout(self) -> Step:
        """The state's deadline passed (delivered by the timeout driver)."""

    # -- events (state-machines.md 1.2, 1.3) --

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

    # -- health notices (issue 15), posted by LifeGuard's health monitor --

    def board_suspected(self, args: Args) -> Step:
        """The device's power controller became suspect: an idle device stops being offered."""

    def board_ok(self, args: Args) -> Step:
        """The device's power controller answers again: re-test the device."""

    # -- outcomes of decisions and entry actions (never delivered from outside) --

    def within_limit(self) -> Step:
        """A failure counted against the device; its counter allows another try."""

    def over_limit(self) -> Step:
        """The counter passed its limit (or a fatal lack: no relay, no PXE config): give up."""

    def cap_reached(self) -> Step:
        """The device would give up, but this server quarantined its cap within the window."""

    def board_at_fault(self) -> Step:
        """A power-path failure while the device's power controller is suspect: not counted."""

    def every_tenth(self) -> Step:
        """Every tenth SUT verify timeout: power-cycle the device."""

    def moved_on(self) -> Step:
        """An entry action finished and the state moves on (transient states, auto self-test)."""

    def self_test_config(self) -> Step:
        """start_self_test: the hardware has a self-test PXE config."""

    def no_self_test_config(self) -> Step:
        """start_self_test: no self-test PXE config: power-cycle only (D3)."""

    def image_found(self) -> Step:
        """please_image: the image has a PXE config for this hardware."""

    def image_not_found(self) -> Step:
        """please_image: no PXE config for the image (D1)."""

    def unclaimed(self) -> Step:
        """board_suspected: no request holds the device."""


#: Health notices LifeGuard posts to its own devices (accepted like events).
NOTICES = frozenset({"board_suspected", "board_ok"})
#: Outcome inputs: given only by the machine itself.
OUTCOMES = frozenset(
    {
        "within_limit", "over_limit", "cap_reached", "board_at_fault", "every_tenth", "moved_on",
        "self_test_config", "no_self_test_config", "image_found", "image_not_found", "unclaimed",
    }
)
#: Event names a caller may deliver (``persisted``, ``timeout``, notices and outcomes are not events).
EVENTS = frozenset(
    name
    for name in DeviceInputs.__dict__
    if not name.startswith("_")
    and callable(DeviceInputs.__dict__[name])
    and name not in ("persisted", "timeout")
    and name not in NOTICES
    and name not in OUTCOMES
)

WITHIN_LIMIT = Outcome("within_limit")
OVER_LIMIT = Outcome("over_limit")
CAP_REACHED = Outcome("cap_reached")
BOARD_AT_FAULT = Outcome("board_at_fault")
EVERY_TENTH = Outcome("every_tenth")
MOVED_ON = Outcome("moved_on")
SELF_TEST_CONFIG = Outcome("self_test_config")
NO_SELF_TEST_CONFIG = Outcome("no_self_test_config")
IMAGE_FOUND = Outcome("image_found")
IMAGE_NOT_FOUND = Outcome("image_not_found")
UNCLAIMED = Outcome("unclaimed")


# --- health: what the machine asks about the device's surroundings -----------------------------


class DeviceHealth(Protocol):
    """Fault isolation by blast radius (issue 15): LifeGuard's health monitor, as the machine sees it."""

    async def power_failure(self, device: DeviceInfo, what: str, reason: str | None) -> bool:
        """Record a power-path failure of ``device`` (``reason``: the driver's, None for a state
        timeout); True when its power controller is (now) suspect."""

    async def pxe_failure(self, device: DeviceInfo, what: str) -> bool:
        """Record a PXE-path failure (no live image came up); True when the controller is suspect."""

    async def board_suspect(self, device: DeviceInfo) -> bool:
        """The device's power controller is suspect now (nothing recorded)."""

    async def may_quarantine(self, device: str, state: str) -> bool:
        """Take one of this server's automatic quarantines for the window; False past the cap."""

    async def hold_reason(self) -> str:
        """Why a device is held (the cap, its window and the recent quarantines)."""

    async def board_reason(self, device: DeviceInfo) -> str:
        """Why the device's power controller is suspect."""


class NoHealth:
    """Each device judged alone, as in the original (and in tests of the plain table)."""

    async def power_failure(self, device: DeviceInfo, what: str, reason: str | None) -> bool:
        return False

    async def pxe_failure(self, device: DeviceInfo, what: str) -> bool:
        return False

    async def board_suspect(self, device: DeviceInfo) -> bool:
        return False

    async def may_quarantine(self, device: str, state: str) -> bool:
        return True

    async def hold_reason(self) -> str:
        return ""

    async def board_reason(self, device: DeviceInfo) -> str:
        return ""


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
        self.health: DeviceHealth = kind.health
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
        await self.m.db.runInteraction(queries.clear_image, self.m.id, self.m.runner.now())

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
                # a failure carries the driver's reason (a PowerResult's), for fault isolation
                m.post(event, None if success else {"reason": str(getattr(success, "reason", "") or "")})

        def error(f: Failure) -> None:
            if op.superseded:
                return
            log.failure("{what} on {device} failed", f, what=what, device=m.key)
            if fail is not None:
                m.post(fail, {"reason": f.getErrorMessage()})

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

    async def give_up(self) -> Outcome:
        """OVER_LIMIT, or CAP_REACHED when this server has used its automatic quarantines."""
        if await self.health.may_quarantine(self.m.key, self.m.state):
            return OVER_LIMIT
        self.because(rule="quarantine cap", text=await self.health.hold_reason())
        return CAP_REACHED

    async def board_at_fault(self, info: DeviceInfo) -> Outcome:
        """BOARD_AT_FAULT, with the controller's reason for the state history."""
        self.because(rule="suspect power controller", text=await self.health.board_reason(info))
        return BOARD_AT_FAULT

    def because(self, **reason: Any) -> None:
        """The structured reason of the next transition (the state history's, when it is kept)."""
        record = getattr(self.m, "because", None)
        if record is not None:
            record(**reason)


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


async def _next_self_test(o: Ops) -> None:
    await o.set_next("self-test", "")


def _clear_counter(name: str) -> Callable[[Ops], Awaitable[None]]:
    async def clear(o: Ops) -> None:
        await o.m.clear(name)

    clear.__name__ = f"clear {name}"
    return clear


def _say(message: str, level: str = "info") -> Callable[[Ops], Awaitable[None]]:
    async def say(o: Ops) -> None:
        await o.m.log(message, level)

    say.__name__ = f"log {message!r}"
    return say


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


def _stay(inputs: Any, core: Ops, args: Args | None = None) -> Step:
    return defer.succeed(STAY)


#: counter -> the count above which it fails (1.3): said where each rule is made, read by the
#: state history's reasons and the explain endpoint (``DeviceKind.limits``).
LIMITS: dict[str, int] = {"pc_pinging": 12, "sut_verifying": 30}


def counted(counter: str, limit: int, path: str | None = None) -> Output:
    """Decision: increment ``counter``; above ``limit`` give up (or the cap holds the device),
    else try again.  A failure in the power (``path="power"``) or PXE path (``"pxe"``) is first
    reported to the health monitor: while the device's power controller is suspect it is not
    counted against the device (BOARD_AT_FAULT)."""
    LIMITS[counter] = limit

    def output(inputs: Any, core: Ops, args: Args | None = None) -> Step:
        async def run() -> Any:
            if path is not None:
                info = (await core.facts()).info
                what = f"{core.m.state}: {counter}"
                if path == "power":
                    # a timeout (no args) says only that the cycle did not finish in time
                    reason = None if args is None else str(args.get("reason", ""))
                    suspect = await core.health.power_failure(info, what, reason)
                else:
                    suspect = await core.health.pxe_failure(info, what)
                if suspect:
                    return await core.board_at_fault(info)
            if await core.m.incr(counter) > limit:
                return await core.give_up()
            return WITHIN_LIMIT

        return run()

    where = f"; {path} path: suspect controller -> board_at_fault" if path else ""
    return _named(output, f"incr {counter}; > {limit} -> over_limit (or cap_reached), else within_limit{where}")


def _give_up(inputs: Any, core: Ops, args: Args | None = None) -> Step:
    """Decision: a failure reported by the device itself: give up, unless the cap holds it."""
    return defer.Deferred.fromCoroutine(core.give_up())


_give_up.__name__ = "over_limit (or cap_reached)"


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
            return IMAGE_NOT_FOUND
        await m.log(f"writing image {image}, boot config {boot_config} to db")
        await core.set_next(image, boot_config)
        return IMAGE_FOUND

    return run()


_please_image.__name__ = "look up PXE config; found -> set next_image, image_found; else failed-bad-image, image_not_found"


def _pc_pinging_timeout(inputs: Any, core: Ops) -> Step:
    async def run() -> Any:
        return OVER_LIMIT if await core.m.incr("pc_pinging") > LIMITS["pc_pinging"] else WITHIN_LIMIT

    return run()


_pc_pinging_timeout.__name__ = "incr pc_pinging; > 12 -> over_limit, else within_limit"


def _sut_verifying_timeout(inputs: Any, core: Ops) -> Step:
    async def run() -> Any:
        n = await core.m.incr("sut_verifying")
        if n > LIMITS["sut_verifying"]:
            return await core.give_up()
        if n % 10 == 0:
            return EVERY_TENTH
        return WITHIN_LIMIT

    return run()


_sut_verifying_timeout.__name__ = (
    "incr sut_verifying; > 30 -> over_limit (or cap_reached); every 10th -> every_tenth; else within_limit"
)


def _unless_claimed(inputs: Any, core: Ops, args: Args | None = None) -> Step:
    """Decision: a device a request holds keeps serving it; an idle one stops being offered."""

    async def run() -> Any:
        if await core.m.db.runInteraction(queries.is_claimed, core.m.id):
            return STAY
        return UNCLAIMED

    return run()


_unless_claimed.__name__ = "claimed -> stay; else unclaimed"


async def _self_test_choice(o: Ops) -> Outcome:
    """start_self_test's entry: the self-test image when the hardware has one."""
    await o.m.clear()
    if await o.pxe_contents("self-test") is not None:
        return SELF_TEST_CONFIG
    return NO_SELF_TEST_CONFIG


go = then()


# --- the table (section 1.3 and issue 15); one upon() per transition -------------------------

builder: TypeMachineBuilder[DeviceInputs, Ops] = TypeMachineBuilder(DeviceInputs, Ops)
STATES = {name: builder.state(name) for name in TIMEOUTS}
S = STATES
I = DeviceInputs  # noqa: E741

for _name, _state in STATES.items():
    _state.upon(I.persisted).loop().returns(_name)

# please_* (1.2): full in new/unknown/troubleshooting/ready; basic in maintenance, self-test,
# the health states and failed_*
for _name in FULL_PLEASE:
    S[_name].upon(I.please_power_cycle).to(S["pc_power_cycling"])(then(_clear_next))
    S[_name].upon(I.please_image).loop()(_please_image)  # decision: image_found | image_not_found
    S[_name].upon(I.image_found).to(S["start_pxe_boot"])(go)
    S[_name].upon(I.image_not_found).loop()(_stay)  # D1: failed-bad-image sent; nothing changes
for _name in FULL_PLEASE + BASIC_PLEASE:
    S[_name].upon(I.please_self_test).to(S["start_self_test"])(go)
    S[_name].upon(I.please_start_maintenance).to(S["start_maintenance"])(go)

# steady and initial states
S["new"].upon(I.timeout).to(S["start_self_test"])(go)
S["ready"].upon(I.failed).to(S["start_self_test"])(go)
S["ready"].upon(I.timeout).loop()(go)  # re-enter: the health check runs again
S["ready"].upon(I.board_suspected).loop()(_unless_claimed)  # decision: unclaimed | stay
S["ready"].upon(I.unclaimed).to(S["board_suspect"])(go)

# power-cycle-only path
S["pc_power_cycling"].upon(I.power_cycle_ok).to(S["pc_rebooting"])(clear_counter("power_cycling"))
S["pc_power_cycling"].upon(I.power_cycle_failed).loop()(counted("power_cycling", 200, path="power"))
S["pc_power_cycling"].upon(I.timeout).loop()(counted("power_cycling", 200, path="power"))
S["pc_power_cycling"].upon(I.within_limit).loop()(go)
S["pc_power_cycling"].upon(I.over_limit).to(S["failed_power_cycling"])(go)  # also: no relay
S["pc_power_cycling"].upon(I.cap_reached).to(S["held"])(go)
S["pc_power_cycling"].upon(I.board_at_fault).to(S["board_suspect"])(go)
S["pc_rebooting"].upon(I.timeout).to(S["pc_pinging"])(go)
S["pc_pinging"].upon(I.ping_ok).to(S["operation_complete"])(clear_counter("pc_pinging"))
S["pc_pinging"].upon(I.timeout).loop()(_pc_pinging_timeout)
S["pc_pinging"].upon(I.within_limit).loop()(go)
# D5: this loop has no final limit; every restart is logged at warning level.
S["pc_pinging"].upon(I.over_limit).to(S["pc_power_cycling"])(
    clear_counter("pc_pinging", _say("no answer to 12 pings: power-cycling again", "warn"))
)
S["pc_sut_rebooting"].upon(I.timeout).to(S["sut_verifying"])(go)

# PXE path: entry points (transient: their entry actions answer an outcome at once)
S["start_pxe_boot"].upon(I.moved_on).to(S["pxe_power_cycling"])(go)
S["start_self_test"].upon(I.self_test_config).to(S["pxe_power_cycling"])(then(_next_self_test))
# D3: no stale next_image for operation_complete to record
S["start_self_test"].upon(I.no_self_test_config).to(S["pc_power_cycling"])(then(_clear_next))
S["start_maintenance"].upon(I.moved_on).to(S["pxe_power_cycling"])(go)

# PXE path: boot and live image
S["pxe_power_cycling"].upon(I.power_cycle_ok).to(S["pxe_booting"])(clear_counter("power_cycling"))
S["pxe_power_cycling"].upon(I.power_cycle_failed).loop()(counted("power_cycling", 200, path="power"))
S["pxe_power_cycling"].upon(I.timeout).loop()(counted("power_cycling", 200, path="power"))
S["pxe_power_cycling"].upon(I.within_limit).loop()(go)
S["pxe_power_cycling"].upon(I.over_limit).to(S["failed_power_cycling"])(go)  # also: no relay
S["pxe_power_cycling"].upon(I.image_not_found).to(S["failed_pxe_booting"])(go)  # D2: no PXE config
S["pxe_power_cycling"].upon(I.cap_reached).to(S["held"])(go)
S["pxe_power_cycling"].upon(I.board_at_fault).to(S["board_suspect"])(go)
S["pxe_booting"].upon(I.mobile_init_started).to(S["mobile_init_started"])(clear_counter("pxe_booting", _clear_pxe))
S["pxe_booting"].upon(I.timeout).loop()(counted("pxe_booting", 30, path="pxe"))
S["pxe_booting"].upon(I.within_limit).to(S["pxe_power_cycling"])(go)
S["pxe_booting"].upon(I.over_limit).to(S["failed_pxe_booting"])(go)
S["pxe_booting"].upon(I.cap_reached).to(S["held"])(go)
S["pxe_booting"].upon(I.board_at_fault).to(S["board_suspect"])(go)
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
S["mobile_init_started"].upon(I.timeout).loop()(counted("mobile_init_started", 10))
S["mobile_init_started"].upon(I.within_limit).to(S["pxe_power_cycling"])(go)
S["mobile_init_started"].upon(I.over_limit).to(S["failed_mobile_init_started"])(go)
S["mobile_init_started"].upon(I.cap_reached).to(S["held"])(go)

# Android install
S["android_downloading"].upon(I.android_extracting).to(S["android_extracting"])(
    clear_counter("android_downloading", _clear_image)
)
S["android_downloading"].upon(I.timeout).loop()(counted("android_downloading", 3))
S["android_downloading"].upon(I.within_limit).to(S["pxe_power_cycling"])(go)
S["android_downloading"].upon(I.over_limit).to(S["failed_android_downloading"])(go)
S["android_downloading"].upon(I.cap_reached).to(S["held"])(go)
S["android_extracting"].upon(I.android_rebooting).to(S["sut_verifying"])(clear_counter("android_extracting"))
S["android_extracting"].upon(I.timeout).loop()(counted("android_extracting", 10))
S["android_extracting"].upon(I.within_limit).to(S["pxe_power_cycling"])(go)
S["android_extracting"].upon(I.over_limit).to(S["failed_android_extracting"])(go)
S["android_extracting"].upon(I.cap_reached).to(S["held"])(go)

# B2G install
S["b2g_downloading"].upon(I.b2g_extracting).to(S["b2g_extracting"])(clear_counter("b2g_downloading", _clear_image))
S["b2g_downloading"].upon(I.timeout).loop()(counted("b2g_downloading", 3))
S["b2g_downloading"].upon(I.within_limit).to(S["pxe_power_cycling"])(go)
S["b2g_downloading"].upon(I.over_limit).to(S["failed_b2g_downloading"])(go)
S["b2g_downloading"].upon(I.cap_reached).to(S["held"])(go)
S["b2g_extracting"].upon(I.b2g_rebooting).to(S["sut_verifying"])(clear_counter("b2g_extracting"))
S["b2g_extracting"].upon(I.timeout).loop()(counted("b2g_extracting", 10))
S["b2g_extracting"].upon(I.within_limit).to(S["pxe_power_cycling"])(go)
S["b2g_extracting"].upon(I.over_limit).to(S["failed_b2g_extracting"])(go)
S["b2g_extracting"].upon(I.cap_reached).to(S["held"])(go)

# verification and wrap-up
S["sut_verifying"].upon(I.sut_verify_ok).to(S["sut_sdcard_verifying"])(clear_counter("sut_verifying"))
S["sut_verifying"].upon(I.timeout).loop()(_sut_verifying_timeout)
S["sut_verifying"].upon(I.within_limit).loop()(go)
S["sut_verifying"].upon(I.every_tenth).to(S["sut_verify_power_cycle"])(go)
S["sut_verifying"].upon(I.over_limit).to(S["failed_sut_verifying"])(go)
S["sut_verifying"].upon(I.cap_reached).to(S["held"])(go)
S["sut_verify_power_cycle"].upon(I.power_cycle_ok).to(S["sut_verifying"])(go)  # D7: counter kept
S["sut_verify_power_cycle"].upon(I.timeout).loop()(counted("sut_verify_power_cycle", 3, path="power"))
S["sut_verify_power_cycle"].upon(I.within_limit).loop()(go)
S["sut_verify_power_cycle"].upon(I.over_limit).to(S["failed_sut_verifying"])(go)
S["sut_verify_power_cycle"].upon(I.cap_reached).to(S["held"])(go)
S["sut_verify_power_cycle"].upon(I.board_at_fault).to(S["board_suspect"])(go)
S["sut_sdcard_verifying"].upon(I.sut_sdcard_ok).to(S["operation_complete"])(clear_counter("sut_sdcard_verifying"))
S["sut_sdcard_verifying"].upon(I.sut_sdcard_failed).loop()(counted("sut_sdcard_verifying", 2))
S["sut_sdcard_verifying"].upon(I.timeout).loop()(counted("sut_sdcard_verifying", 2))
S["sut_sdcard_verifying"].upon(I.within_limit).loop()(go)
S["sut_sdcard_verifying"].upon(I.over_limit).to(S["failed_sut_sdcard_verifying"])(go)
S["sut_sdcard_verifying"].upon(I.cap_reached).to(S["held"])(go)
S["operation_complete"].upon(I.moved_on).to(S["ready"])(go)
S["operation_complete"].upon(I.timeout).loop()(go)  # safety net: the entry action moves on

# self-test
S["self_test_running"].upon(I.self_test_ok).to(S["ready"])(go)
S["self_test_running"].upon(I.failed_self_test).loop()(_give_up)
S["self_test_running"].upon(I.timeout).loop()(_give_up)
S["self_test_running"].upon(I.over_limit).to(S["failed_self_test"])(go)
S["self_test_running"].upon(I.cap_reached).to(S["held"])(go)

# failure states: those marked auto self-test go straight on (their entry answers moved_on)
for _name in sorted(AUTO_SELF_TEST):
    S[_name].upon(I.moved_on).to(S["start_self_test"])(go)

# health (issue 15): waiting for a suspect power controller, or held past the server's cap
S["board_suspect"].upon(I.board_ok).to(S["start_self_test"])(go)
S["board_suspect"].upon(I.timeout).to(S["start_self_test"])(go)  # safety net: re-test hourly
S["held"].upon(I.timeout).to(S["start_self_test"])(go)  # the window passed: re-test

DeviceMachine = builder.build()


# --- entry actions (run by goto, after the row is written) -----------------------------------
#
# An entry action answers None (stay and wait for events) or an Outcome, given next to the
# machine in the entered state; one that answers an outcome has started nothing.

Entry = Callable[[Ops], Awaitable["Outcome | None"]]


async def _enter_ready(o: Ops) -> None:
    """Health check of an idle device; only a failure comes back (as ``failed``)."""
    if await o.m.db.runInteraction(queries.is_claimed, o.m.id):
        return
    facts = await o.facts()
    if facts.image_has_sut_agent:
        o.start("SUT verify", o.hardware.sut_verify, facts.info, ok=None, fail="failed")
    else:
        o.start("ping", o.hardware.ping, facts.info, ok=None, fail="failed")


async def _no_relay(o: Ops, facts: queries.DeviceFacts) -> Outcome | None:
    """Both power-cycling states need a relay; without one the device has failed."""
    if facts.info.relay_info:
        return None
    await o.m.log("no relay information: cannot power-cycle", "error")
    return await o.give_up()


def _power_cycle(o: Ops, facts: queries.DeviceFacts, fail: str | None = "power_cycle_failed") -> None:
    o.start("power cycle", o.hardware.power_cycle, facts.info, ok="power_cycle_ok", fail=fail, exclusive=True)


async def _board_at_fault(o: Ops, facts: queries.DeviceFacts) -> Outcome | None:
    """A power cycle through a suspect controller is not tried: the device waits for it."""
    return await o.board_at_fault(facts.info) if await o.health.board_suspect(facts.info) else None


async def _enter_pc_power_cycling(o: Ops) -> Outcome | None:
    facts = await o.facts()
    lacking = await _no_relay(o, facts) or await _board_at_fault(o, facts)
    if lacking is not None:
        return lacking
    o.clear_pxe(facts.info)
    _power_cycle(o, facts)
    return None


async def _enter_pc_pinging(o: Ops) -> None:
    facts = await o.facts()
    o.start("ping", o.hardware.ping, facts.info, ok="ping_ok", fail=None)


async def _enter_start_pxe_boot(o: Ops) -> Outcome:
    await o.m.clear()
    return MOVED_ON


async def _enter_start_maintenance(o: Ops) -> Outcome:
    await o.m.clear()
    await o.set_next("maintenance", "")
    return MOVED_ON


async def _enter_pxe_power_cycling(o: Ops) -> Outcome | None:
    facts = await o.facts()
    lacking = await _no_relay(o, facts) or await _board_at_fault(o, facts)
    if lacking is not None:
        return lacking
    contents = await o.pxe_contents(facts.next_image)
    if contents is None:
        await o.m.log(f"no PXE config for image {facts.next_image!r} on this device's hardware", "warn")
        if await o.health.may_quarantine(o.m.key, "failed_pxe_booting"):
            return IMAGE_NOT_FOUND  # D2: no power cycle after the transition
        return CAP_REACHED
    o.set_pxe(facts.info, contents)
    _power_cycle(o, facts)
    return None


async def _enter_sut_verifying(o: Ops) -> None:
    facts = await o.facts()
    o.start("SUT verify", o.hardware.sut_verify, facts.info, ok="sut_verify_ok", fail=None)


async def _enter_sut_verify_power_cycle(o: Ops) -> Outcome | None:
    facts = await o.facts()
    lacking = await _board_at_fault(o, facts)
    if lacking is not None:
        return lacking
    _power_cycle(o, facts, fail=None)  # a failed cycle here waits for the timeout (as the original)
    return None


async def _enter_sut_sdcard_verifying(o: Ops) -> None:
    facts = await o.facts()
    o.start("SD card check", o.hardware.sut_sdcard_check, facts.info, ok="sut_sdcard_ok", fail="sut_sdcard_failed")


async def _enter_operation_complete(o: Ops) -> Outcome:
    await o.m.db.runInteraction(queries.promote_next, o.m.id, o.m.runner.now())
    await o.send_result(COMPLETE)
    return MOVED_ON


def _enter_failed(state: str) -> Entry:
    async def enter(o: Ops) -> Outcome | None:
        await o.m.log(f"device has failed: {state}", "error")
        await o.send_result(FAILED_BAD_DEVICE)
        return MOVED_ON if state in AUTO_SELF_TEST else None

    return enter


async def _enter_board_suspect(o: Ops) -> None:
    """Not the device's fault: it waits, uncounted, for LifeGuard to find its controller answering."""
    facts = await o.facts()
    reason = await o.health.board_reason(facts.info)
    await o.m.log("waiting for its power controller, which is suspect" + (f": {reason}" if reason else ""), "warn")
    await o.send_result(FAILED_BAD_DEVICE)


async def _enter_held(o: Ops) -> None:
    """Past this server's cap on automatic quarantines the cause is likely not the device: it waits,
    visible, for an operator or for the window to pass.  A request whose image it was installing
    hears ``failed-bad-image``, so one bad image cannot go through the whole lab."""
    facts = await o.facts()
    reason = await o.health.hold_reason()
    await o.m.log("held instead of quarantined" + (f": {reason}" if reason else ""), "warn")
    installing = facts.next_image is not None and facts.next_image not in OWN_IMAGES
    await o.send_result(FAILED_BAD_IMAGE if installing else FAILED_BAD_DEVICE)


ENTRY: dict[str, Entry] = {
    "ready": _enter_ready,
    "pc_power_cycling": _enter_pc_power_cycling,
    "pc_pinging": _enter_pc_pinging,
    "start_pxe_boot": _enter_start_pxe_boot,
    "start_self_test": _self_test_choice,
    "start_maintenance": _enter_start_maintenance,
    "pxe_power_cycling": _enter_pxe_power_cycling,
    "sut_verifying": _enter_sut_verifying,
    "sut_verify_power_cycle": _enter_sut_verify_power_cycle,
    "sut_sdcard_verifying": _enter_sut_sdcard_verifying,
    "operation_complete": _enter_operation_complete,
    "board_suspect": _enter_board_suspect,
    "held": _enter_held,
    **{state: _enter_failed(state) for state in FAILED_STATES},
}


# --- the MachineKind ---------------------------------------------------------------------------


class DeviceKind:
    """LifeGuard's machine for :class:`~mozpool.statemachine.core.MachineRunner`."""

    table = "devices"
    log_kind = "device"
    key_column = "name"
    unknown_state = "unknown"
    limits = LIMITS

    def __init__(self, hardware: IDeviceHardware, results: ImagingResults, health: DeviceHealth | None = None,
                 held_timeout: float | None = None) -> None:
        self.hardware = hardware
        self.results = results
        self.health: DeviceHealth = health if health is not None else NoHealth()
        #: the state timeouts; ``held`` waits for the configured quarantine window
        self.timeouts: dict[str, float | None] = dict(TIMEOUTS)
        if held_timeout is not None:
            self.timeouts["held"] = held_timeout
        #: device -> the exclusive operation (a power cycle) still running for it
        self.in_flight: dict[str, _Operation] = {}

    def restore(self, m: Machine, state: str | None = None) -> tuple[DeviceInputs, Ops]:
        """The Automat machine in the row's state (an unknown name reads as ``unknown``)."""
        core = Ops(self, m)
        return DeviceMachine(core, STATES[state or m.state]), core

    async def event(self, m: Machine, event: str, args: dict[str, Any]) -> bool:
        if event not in EVENTS and event not in NOTICES:
            return False
        machine, core = self.restore(m)
        return await apply_input(machine, lambda i: getattr(i, event)(args), lambda t: self._go(m, machine, core, t))

    async def timeout(self, m: Machine) -> bool:
        machine, core = self.restore(m)
        return await apply_input(machine, lambda i: i.timeout(), lambda t: self._go(m, machine, core, t))

    async def _go(self, m: Machine, machine: DeviceInputs, core: Ops, answer: Any) -> None:
        """Follow a behaviour's answer: outcomes are given next (decision rows are loops, so the
        machine is still in the same state), then the table's target is entered, or nothing."""
        while isinstance(answer, Outcome):
            answer = await getattr(machine, answer.input)()
        if answer is STAY:
            return
        generation = m.generation
        await m.goto(machine.persisted())
        if m.generation == generation + 1:  # not if the entry action moved on
            for action in core.after_goto:
                action()

    async def enter(self, m: Machine, state: str) -> None:
        running = self.in_flight.pop(m.key, None)
        if running is not None:
            running.supersede()
        action = ENTRY.get(state)
        if action is None:
            return
        answer = await action(Ops(self, m))
        if answer is not None:
            machine, core = self.restore(m, state)
            await self._go(m, machine, core, answer)

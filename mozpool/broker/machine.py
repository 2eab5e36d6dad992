"""The request state machine (state-machines.md section 2, with issue 14's queue), on the shared
runner.

The table below is the truth: one ``upon(...).to(...)`` per transition, kept together so it can
be read against the spec on one screen.  The database row is the truth for the state: each
operation restores the Automat machine from the row's state name, feeds one input, persists the
target the table names and runs its entry action.  Behaviours only log and count; they never
choose a state.  Where the spec's rule depends on data (a counter, a stored imaging result, the
queue's deadline, whether a device could be claimed), :class:`RequestKind` reads the data first
and feeds the input that names the outcome -- ``imaging_complete`` or ``bad_image_again``,
``timeout`` or ``queue_timed_out`` -- so the decision is visible as a row, not hidden in code.

Differences from the original (issue 14): a request that finds no device waits in
``finding_device`` until a device frees up or its ``queue_timeout`` passes (then
``failed_device_busy``), instead of giving up after 60 attempts; one that nothing in the pool
could ever serve fails at once; the POST to LifeGuard is bounded by its own time, not by a
fraction of the scaled state timeout, and a re-entry that finds the device busy with our
operation takes it as contacted instead of dropping the device (R2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping, Protocol

from automat import NoTransition, TypeMachineBuilder

from mozpool import liveness
from mozpool.broker import lifeguard, queue, selection
from mozpool.logconfig import Logger
from mozpool.statemachine.core import Machine
from mozpool.timeutil import parse_dbtime

log = Logger()

#: What a behaviour returns: its logging and counting, awaited before the target is persisted.
Step = Coroutine[Any, Any, None]

# --- limits (2.3, 2.5) -----------------------------------------------------------------------

CONTACT_LIMIT = 5
ANY_PENDING_LIMIT = 20
BAD_IMAGE_LIMIT = 2
#: Lost claim races retried at once in one selection before queueing.
CLAIM_TRIES = 5
#: The default of a request's ``priority`` and ``queue_timeout`` (seconds, not scaled: like
#: ``duration``, it is the caller's own time).
DEFAULT_PRIORITY = 50
DEFAULT_QUEUE_TIMEOUT = 600
#: The POST to LifeGuard (seconds, not scaled: it bounds real work on a real network).
CONTACT_BOUND = lifeguard.CONTACT_TIMEOUT

# --- states and their nominal timeouts (2.3) --------------------------------------------------

FAILED_STATES = ("failed_device_not_found", "failed_bad_image", "failed_bad_device", "failed_device_busy")
#: Entry clears the claim: the final states, and the legacy ``expired``.
CLAIM_CLEARING = FAILED_STATES + ("closed", "expired")

TIMEOUTS: Mapping[str, float | None] = {
    "new": None,
    # A safety poll: the queue wakes waiting requests as devices free up, and the request's own
    # queue_timeout re-arms it sooner when that comes first (RequestKind.find).
    "finding_device": 60,
    "contact_lifeguard": 0,
    "contacting_lifeguard": 30,  # and never less than the POST's own bound (RequestKind.delay)
    "pending": 60,
    "ready": None,
    "failed_device_not_found": None,
    "failed_bad_image": None,
    "failed_bad_device": None,
    "failed_device_busy": None,
    "expired": None,
    "closed": None,
}
#: Every request state, in the order the API documents them.
REQUEST_STATES = tuple(TIMEOUTS)

#: Events a client, an operator or LifeGuard may send (2.2).
EVENTS = ("find_device", "close", "expire", "lifeguard_contacted", "lifeguard_finished")
#: Events from inside the daemon, with arguments the API never passes: the queue's offer of a
#: device, and the outcome of a POST to LifeGuard that failed.
INTERNAL_EVENTS = ("device_offered", "lifeguard_refused")


class RequestInputs(Protocol):
    """Inputs of the request machine: the events of 2.2, the driver's timeout, and the outcomes
    :class:`RequestKind` reads from data and feeds back."""

    def state(self) -> str:
        """Every state answers with its own name (Automat has no state getter by design)."""

    # events from outside
    def find_device(self) -> Step:
        """Sent once by request creation after the row is inserted."""

    def close(self) -> Step:
        """The client returned the request."""

    def expire(self) -> Step:
        """The expiry poll found ``expires`` in the past."""

    def lifeguard_contacted(self) -> Step:
        """LifeGuard answered 200 to our please_* event, or is busy with it already."""

    def lifeguard_refused(self, why: str) -> Step:
        """The please_* POST failed or timed out; the state's timeout tries again."""

    def device_offered(self, device: str) -> Step:
        """The queue gives this request a device; :class:`RequestKind` tries the claim."""

    def timeout(self) -> Step:
        """The state's deadline passed (and no outcome below applies)."""

    # outcomes of finding a device (2.4, issue 14)
    def device_claimed(self, device: str) -> Step:
        """A device is claimed for this request."""

    def device_held(self, why: str) -> Step:
        """The named device is held by another open request (2.2a)."""

    def impossible(self, why: str) -> Step:
        """Nothing in the pool could ever serve this request."""

    def device_broken(self, why: str) -> Step:
        """The named device is in a failed state."""

    def server_unreachable(self, why: str) -> Step:
        """The named device's imaging server is not heard from."""

    def queue_timed_out(self) -> Step:
        """No device within the request's ``queue_timeout``."""

    # outcomes of contacting LifeGuard (2.5)
    def device_gone(self, why: str) -> Step:
        """The claimed device is no longer ready for us: look for another."""

    def contact_given_up(self) -> Step:
        """CONTACT_LIMIT timeouts without LifeGuard accepting."""

    def device_prepared(self, why: str) -> Step:
        """The device is ``ready``, pristine, and holds the image and boot_config asked for:
        nothing is left to do (the warm pool's hand-over)."""

    # imaging results (2.5)
    def imaging_complete(self) -> Step:
        """LifeGuard finished: the device is ready for the client."""

    def bad_image(self) -> Step:
        """The image failed; it gets another install on another device."""

    def bad_image_again(self) -> Step:
        """The image failed BAD_IMAGE_LIMIT times."""

    def bad_device(self) -> Step:
        """The device failed ('any': look for another)."""

    def bad_device_named(self) -> Step:
        """The named device failed."""

    def unexpected_result(self, result: str) -> Step:
        """A result this layer does not know."""

    def imaging_overdue(self) -> Step:
        """'any': ANY_PENDING_LIMIT pending timeouts without a result."""


@dataclass
class RequestCore:
    """One operation's collaborators: the persisted machine and the layer's services."""

    m: Machine
    kind: "RequestKind"


async def _log(core: RequestCore, message: str, level: str = "info") -> None:
    await core.m.log(message, level)


async def _nothing() -> None:
    return None


# --- the event table (2.3) ----------------------------------------------------------------------

builder = TypeMachineBuilder(RequestInputs, RequestCore)
new = builder.state("new")
finding_device = builder.state("finding_device")
contact_lifeguard = builder.state("contact_lifeguard")
contacting_lifeguard = builder.state("contacting_lifeguard")
pending = builder.state("pending")
ready = builder.state("ready")
failed_device_not_found = builder.state("failed_device_not_found")
failed_bad_image = builder.state("failed_bad_image")
failed_bad_device = builder.state("failed_bad_device")
failed_device_busy = builder.state("failed_device_busy")
expired = builder.state("expired")
closed = builder.state("closed")

STATES = {
    s.name: s
    for s in (
        new, finding_device, contact_lifeguard, contacting_lifeguard, pending, ready,
        failed_device_not_found, failed_bad_image, failed_bad_device, failed_device_busy, expired, closed,
    )
}
assert tuple(STATES) == REQUEST_STATES
CLOSABLE = (new, finding_device, contact_lifeguard, contacting_lifeguard, pending, ready, expired)
I = RequestInputs

for _s in STATES.values():
    _s.upon(I.state).loop().returns(_s.name)

# closable: close and expire go to closed from each of these states.
for _s in CLOSABLE:
    _s.upon(I.close).to(closed)(lambda i, core: _log(core, "Request closed."))
    _s.upon(I.expire).to(closed)(lambda i, core: _log(core, "Request expired."))

new.upon(I.find_device).to(finding_device)(lambda i, core: _nothing())

# finding_device: the entry looks for a device now and queues the request if there is none.
finding_device.upon(I.device_claimed).to(contact_lifeguard)(
    lambda i, core, device: _log(core, f"Assigning device {device}"))
finding_device.upon(I.device_offered).loop()(lambda i, core, device: _nothing())  # the kind claims
finding_device.upon(I.timeout).to(finding_device)(lambda i, core: _nothing())  # re-enter: look again
finding_device.upon(I.device_held).to(closed)(lambda i, core, why: _log(core, why))
finding_device.upon(I.impossible).to(failed_device_not_found)(lambda i, core, why: _log(core, why, "warn"))
finding_device.upon(I.server_unreachable).to(failed_device_not_found)(lambda i, core, why: _log(core, why, "warn"))
finding_device.upon(I.device_broken).to(failed_bad_device)(lambda i, core, why: _log(core, why, "warn"))
finding_device.upon(I.queue_timed_out).to(failed_device_busy)(
    lambda i, core: _log(core, "no device became free within the request's queue_timeout", "warn"))

contact_lifeguard.upon(I.timeout).to(contacting_lifeguard)(lambda i, core: _nothing())

# contacting_lifeguard: the entry checks the device and starts the POST; its outcome comes back.
contacting_lifeguard.upon(I.lifeguard_contacted).to(pending)(lambda i, core: _nothing())
@contacting_lifeguard.upon(I.lifeguard_refused).loop()
def _refused(inputs: RequestInputs, core: RequestCore, why: str) -> Step:
    """Logged; the next try comes at the state's nominal (scaled) timeout after the entry, as in
    the spec, or at once if that has passed: the floor of :meth:`RequestKind.min_delay` only
    holds while the POST is in flight."""

    async def work() -> None:
        await core.m.log(why, "warn")
        m = core.m
        nominal = m.runner.scaled(TIMEOUTS["contacting_lifeguard"] or 0)
        if m.row.timeout is None or m.row.timeout > m.runner.deadline_in(nominal):
            await m.rearm(nominal)

    return work()


contacting_lifeguard.upon(I.timeout).to(contacting_lifeguard)(lambda i, core: _nothing())  # POST again
contacting_lifeguard.upon(I.contact_given_up).to(failed_device_not_found)(
    lambda i, core: _log(core, "could not contact LifeGuard; giving up", "warn"))
contacting_lifeguard.upon(I.device_gone).to(finding_device)(lambda i, core, why: _log(core, why, "error"))
contacting_lifeguard.upon(I.device_prepared).to(ready)(lambda i, core, why: _log(core, why))

# pending: results from LifeGuard (an event, or the claim row read on a timeout).
@pending.upon(I.imaging_complete).to(ready)
def _imaged(inputs: RequestInputs, core: RequestCore) -> Step:
    """The time from claim to ready counts for the queue's ETA: only here, where an imaging or
    a power cycle really happened (a pristine device's hand-over says nothing about it)."""

    async def work() -> None:
        await core.m.db.runInteraction(queue.record_imaging_time, core.m.id, core.m.runner.now())

    return work()

pending.upon(I.bad_image).to(finding_device)(lambda i, core: _nothing())
pending.upon(I.bad_image_again).to(failed_bad_image)(lambda i, core: _nothing())
pending.upon(I.bad_device).to(finding_device)(lambda i, core: _nothing())
pending.upon(I.bad_device_named).to(failed_bad_device)(lambda i, core: _nothing())
pending.upon(I.unexpected_result).to(finding_device)(
    lambda i, core, result: _log(core, f"unexpected imaging result {result!r}; looking for another device", "warn"))
pending.upon(I.timeout).to(pending)(lambda i, core: _nothing())  # re-enter: poll again
pending.upon(I.imaging_overdue).to(finding_device)(
    lambda i, core: _log(core, "LifeGuard did not finish in time; looking for another device", "warn"))

RequestMachine = builder.build()


class _Recorder:
    """A core's machine that only keeps what a behaviour logs (:func:`planned`)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    async def log(self, message: str, level: str = "info") -> None:
        self.lines.append((message, level))


def planned(state: str, input_name: str, *args: Any) -> tuple[str, list[tuple[str, str]]]:
    """Where the table goes from ``state`` on ``input_name``, and the (message, level) lines its
    behaviour logs, without a machine or a database: for work done in bulk (the intake's
    claims, :mod:`mozpool.broker.intake`), which writes them itself.  Only for rows whose
    behaviour does nothing but log."""
    recorder = _Recorder()
    machine = RequestMachine(RequestCore(recorder, None), STATES[state])  # type: ignore[arg-type]
    step = getattr(machine, input_name)(*args)
    try:
        step.send(None)
    except StopIteration:
        pass
    else:
        step.close()
        raise RuntimeError(f"the behaviour of {state} on {input_name} does more than log")
    return machine.state(), recorder.lines


def lost_line(device: str) -> str:
    """Logged for each device a look lost to another request before it claimed one."""
    return f"device {device} was claimed by another request; trying another"

#: The rows that re-enter their own state (its entry action runs again, its timer restarts);
#: every other same-state row (``.loop()``) stays without re-entering.
REENTERING = {("finding_device", "timeout"), ("contacting_lifeguard", "timeout"), ("pending", "timeout")}


# --- the MachineKind the runner drives ---------------------------------------------------------

#: Starts the please_* POST for a request (the Broker's job): (machine, device, event, body).
ContactStarter = Callable[[Machine, selection.Assignment, str, dict], None]

_RESULT_INPUTS = {"complete": "imaging_complete"}


@dataclass
class RequestKind:
    """The request machine as :class:`mozpool.statemachine.core.MachineRunner` sees it: it
    classifies what happened into the table's inputs and runs the entry actions."""

    contact: ContactStarter
    rng: random.Random
    #: request id -> the request holding its named device, left by find_device for creation
    held: dict[int, int] = field(default_factory=dict)
    #: request id -> the device its first look claimed ("": none), left by find_device for
    #: creation, which answers with it instead of reading the request back
    assigned: dict[int, str] = field(default_factory=dict)
    #: called when devices may be free for waiting requests (the queue's wake-up)
    wake_queue: Callable[[], None] = lambda: None
    #: the bound of a POST to LifeGuard, in seconds
    contact_bound: float = CONTACT_BOUND

    table = "requests"
    log_kind = "request"
    key_column = "id"
    #: an unrecognised stored state: closable, like the legacy ``expired``
    unknown_state = "expired"
    timeouts = TIMEOUTS
    #: finding_device is written with the look for a device (Machine.incr_with in :meth:`find`):
    #: one commit less per request, and a request in it has always looked once, so the queue's
    #: "waiting ahead" never counts a burst's requests that have not looked yet
    entry_writes = ("finding_device",)

    def restore(self, m: Machine) -> RequestInputs:
        return RequestMachine(RequestCore(m, self), STATES[m.state])

    def min_delay(self, state: str) -> float:
        """A state's timer never fires before work it waits for could have ended."""
        return self.contact_bound + 1 if state == "contacting_lifeguard" else 0.0

    async def feed(self, m: Machine, give: Callable[[RequestInputs], Step]) -> bool:
        """Give one input; persist the table's target (and run its entry action).  False when
        the state does not accept the input."""
        machine = self.restore(m)
        before = m.state
        try:
            step = give(machine)
        except NoTransition:
            return False
        name = getattr(give, "input_name", None)
        await step
        target = machine.state()
        if target != before or (before, name) in REENTERING:
            await m.goto(target, cause=name)
        return True

    def _input(self, name: str, *args: Any) -> Callable[[RequestInputs], Step]:
        def give(i: RequestInputs) -> Step:
            return getattr(i, name)(*args)

        give.input_name = name  # type: ignore[attr-defined]
        return give

    async def event(self, m: Machine, event: str, args: dict[str, Any]) -> bool:
        if event == "lifeguard_finished":
            result = args.get("imaging_result")
            if result is None:
                if m.state != "pending":
                    return False
                result = await m.db.runInteraction(selection.imaging_result, m.id)
                if result is None:
                    return True  # accepted; no result yet: nothing happens (2.5)
            return await self.result(m, str(result))
        if event == "device_offered" and isinstance(args.get("device_id"), int):
            accepted = await self.feed(m, self._input("device_offered", str(args.get("device"))))
            if accepted:
                await self.take_offer(m, args["device_id"], str(args.get("device")))
            return True  # an offer to a request that just moved on is routine, not worth a warning
        if event == "lifeguard_refused" and isinstance(args.get("why"), str):
            return await self.feed(m, self._input("lifeguard_refused", args["why"]))
        if event in EVENTS:
            return await self.feed(m, self._input(event))
        return False

    async def timeout(self, m: Machine) -> bool:
        state = m.state
        if state == "finding_device" and await self.queue_deadline_passed(m):
            return await self.feed(m, self._input("queue_timed_out"))
        if state == "contacting_lifeguard":
            if await m.incr("contacting_lifeguard") >= CONTACT_LIMIT:
                await m.clear("contacting_lifeguard")
                return await self.feed(m, self._input("contact_given_up"))
        if state == "pending":
            stored = await m.db.runInteraction(selection.imaging_result, m.id)
            if stored is not None:
                return await self.result(m, stored)
            info = await self.info(m)
            if not info.named and await m.incr("pending") >= ANY_PENDING_LIMIT:
                await m.clear("pending")  # R1: the next visit gets its full budget
                return await self.feed(m, self._input("imaging_overdue"))
        return await self.feed(m, self._input("timeout"))

    async def result(self, m: Machine, result: str) -> bool:
        """2.5's result table, as inputs."""
        if m.state != "pending":
            return False
        await m.log(f"LifeGuard finished with result {result!r}")
        if result == "complete":
            return await self.feed(m, self._input("imaging_complete"))
        if result == "failed-bad-image":
            again = await m.incr("bad-images") >= BAD_IMAGE_LIMIT
            return await self.feed(m, self._input("bad_image_again" if again else "bad_image"))
        if result == "failed-bad-device":
            named = (await self.info(m)).named
            return await self.feed(m, self._input("bad_device_named" if named else "bad_device"))
        return await self.feed(m, self._input("unexpected_result", result))

    async def info(self, m: Machine) -> selection.RequestInfo:
        found = await m.db.runInteraction(selection.request_info, m.id)
        assert found is not None, "the runner loaded this request's row"
        return found

    async def queue_time_left(self, m: Machine) -> float:
        """Seconds until the request's queue_timeout runs out (from its creation)."""
        created, wait = await m.db.runInteraction(queue_terms, m.id)
        if parse_dbtime(created) is None:
            return float(wait)
        return queue.epoch(created) + wait - m.runner.clock.seconds()

    async def queue_deadline_passed(self, m: Machine) -> bool:
        return await self.queue_time_left(m) <= 0

    async def enter(self, m: Machine, state: str) -> None:
        if state == "finding_device":
            await self.find(m)
        elif state == "contacting_lifeguard":
            await self.contacting(m)
        elif state == "ready":
            await m.db.runInteraction(handed_out, m.id, m.runner.now())
        elif state in CLAIM_CLEARING:
            await m.db.runInteraction(selection.clear_claim, m.id, m.runner.now())
            self.wake_queue()
        if state == "contact_lifeguard" and m.counter("contacting_lifeguard"):
            await m.clear("contacting_lifeguard")  # a new device: its contacting starts afresh

    # --- entry actions ------------------------------------------------------------------------

    def draws(self) -> list[float]:
        """The random draws of one look for a device, one per claim it may try."""
        return [self.rng.random() for _ in range(CLAIM_TRIES)]

    async def find(self, m: Machine) -> None:
        """Look for a device now (2.4); with none, the request waits in the queue."""
        draws = self.draws()
        dead_before = liveness.dead_before(m.runner.clock, m.runner.time_scale)
        _, found = await m.incr_with("finding_device", selection.find_now, m.id, draws, m.runner.now(), dead_before)
        info, outcome = found
        if m.cause == "find_device":
            self.assigned[m.id] = "" if outcome.claimed.device is None else outcome.claimed.device.name
        if m.counter("pending"):
            await m.clear("pending")  # R1: a later visit to pending gets its full budget
        if outcome.holder is not None:
            self.held[m.id] = outcome.holder
            await self.feed(m, self._input(
                "device_held", f"device {info.requested_device} is held by request {outcome.holder}; closing"))
            return
        if outcome.unreachable is not None:
            server, last_seen = outcome.unreachable
            await self.feed(m, self._input("server_unreachable", (
                f"device {info.requested_device} belongs to imaging server {server}, which has not been heard"
                f" from since {last_seen}")))
            return
        if outcome.broken is not None:
            await self.feed(m, self._input("device_broken", outcome.broken))
            return
        if outcome.impossible is not None:
            await self.feed(m, self._input("impossible", outcome.impossible))
            return
        for name in outcome.claimed.lost:
            await m.log(lost_line(name))
        if outcome.claimed.device is not None:
            await self.feed(m, self._input("device_claimed", outcome.claimed.device.name))
            return
        left = await self.queue_time_left(m)
        if left <= 0:
            await self.feed(m, self._input("queue_timed_out"))
            return
        delay = m.runner.delay("finding_device")
        if delay is not None and left < delay:
            await m.rearm(left)
        if m.counter("finding_device") == 1:
            await m.log("no suitable device is free; waiting in the queue" if not outcome.queued_behind
                        else f"waiting in the queue behind {outcome.queued_behind} earlier requests")
        if m.cause != "timeout":
            self.wake_queue()  # the safety poll leaves the queue to the driver's tick

    async def take_offer(self, m: Machine, device_id: int, device: str) -> None:
        """The queue offered a device: claim it (the guarded INSERT decides races)."""
        won = await m.db.runInteraction(selection.claim_offered, m.id, device_id, m.runner.now())
        if won:
            await self.feed(m, self._input("device_claimed", device))
        else:
            await m.log(f"device {device} was claimed by another request; waiting")
            self.wake_queue()

    async def contacting(self, m: Machine) -> None:
        """Check the device is still ``ready``, decide please_image or please_power_cycle, and
        start the POST; its answer comes back as ``lifeguard_contacted`` (2.5).  On a re-entry a
        device that left ``ready`` for an operation is busy with ours: the earlier POST arrived
        and only its answer was lost (R2, resolved)."""
        device, info, pristine = await m.db.runInteraction(assignment_for_contact, m.id)
        retry = m.counter("contacting_lifeguard") > 0
        if device is None:
            await self.feed(m, self._input("device_gone", "no device is assigned; looking for another device"))
            return
        if device.state != "ready":
            if retry and not device.state.startswith("failed_") and device.state not in PARKED:
                await m.log(f"device {device.name} is in state {device.state}: LifeGuard took our event")
                await self.feed(m, self._input("lifeguard_contacted"))
                return
            await self.feed(m, self._input("device_gone", (
                f"device {device.name} is in state {device.state}, not ready; looking for another device")))
            return
        same = device.image == info.image and selection.same_boot_config(device.boot_config, info.boot_config)
        if same and pristine:
            # Imaged ahead of demand and verified by that imaging (SUT verify, SD card check),
            # health-checked by LifeGuard while ready, never handed out since: nothing to redo.
            await self.feed(m, self._input("device_prepared", (
                f"device {device.name} is pristine with image {info.image}: handed over without re-imaging")))
            return
        if same and info.reusable:
            event, body = "please_power_cycle", {}
        else:
            event, body = "please_image", {"image": info.image, "boot_config": info.boot_config}
        await m.log(f"sending {event} for device {device.name} to LifeGuard at {device.server}")
        self.contact(m, device, event, body)


#: Device states where a device waits for a person: never busy with a request's operation.
PARKED = ("locked_out", "troubleshooting", "maintenance_mode", "unknown")


def queue_terms(c: Any, request_id: int) -> tuple[str | None, int]:
    row = c.execute("SELECT created, queue_timeout FROM requests WHERE id = ?", (request_id,)).fetchone()
    return (None if row[0] is None else str(row[0]), int(row[1] if row[1] is not None else DEFAULT_QUEUE_TIMEOUT))


def assignment_for_contact(c: Any, request_id: int) -> tuple[selection.Assignment | None, selection.RequestInfo, bool]:
    device, info = selection.assignment_and_request(c, request_id)
    pristine = device is not None and bool(
        c.scalar("SELECT pristine FROM devices WHERE id = ?", (device.device_id,)))
    return device, info, pristine


def handed_out(c: Any, request_id: int, now: str) -> None:
    """The request is ready: its device is no longer pristine."""
    c.execute(
        "UPDATE devices SET pristine = 0 WHERE id = (SELECT device_id FROM device_requests WHERE request_id = ?)",
        (request_id,),
    )

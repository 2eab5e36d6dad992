"""The request state machine (state-machines.md section 2), on the shared runner.

The event table is an Automat ``TypeMachineBuilder``: one ``upon(...)`` per accepted event,
kept together below so it can be read against the spec's table 2.3.  The database row is the
truth: each operation restores the Automat machine from the row's state name, feeds one input,
and throws the Automat object away.  An input's behaviour returns a coroutine that does the work
(``m.goto`` persists and runs the entry action); where the spec's target depends on data
(counters, results, the database), the behaviour decides and calls ``m.goto`` itself, and the
``upon`` names the usual target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping, Protocol

from automat import TypeMachineBuilder
from mozpool.logconfig import Logger

from mozpool import liveness
from mozpool.broker import selection
from mozpool.db.errors import Conflict
from mozpool.statemachine.core import Machine, apply_input

log = Logger()

#: What a behaviour returns: the work, awaited by :meth:`RequestKind.event` after Automat's step.
Step = Coroutine[Any, Any, None]

# --- limits (2.3, 2.4, 2.5) -----------------------------------------------------------------

ANY_FIND_LIMIT = 60
NAMED_FIND_LIMIT = 2
CONTACT_LIMIT = 5
ANY_PENDING_LIMIT = 20
BAD_IMAGE_LIMIT = 2

# --- states and their nominal timeouts (2.3) ------------------------------------------------

FAILED_STATES = ("failed_device_not_found", "failed_bad_image", "failed_bad_device", "failed_device_busy")
#: Lost claim races retried at once in one selection before waiting for the next attempt.
CLAIM_TRIES = 5

#: Entry clears the claim: the final states, and the legacy ``expired``.
CLAIM_CLEARING = FAILED_STATES + ("closed", "expired")

TIMEOUTS: Mapping[str, float | None] = {
    "new": None,
    "finding_device": 10,
    "contact_lifeguard": 0,
    "contacting_lifeguard": 30,
    "pending": 60,
    "ready": None,
    "failed_device_not_found": None,
    "failed_bad_image": None,
    "failed_bad_device": None,
    "failed_device_busy": None,
    "expired": None,
    "closed": None,
}

#: Events a client, an operator or LifeGuard may send (2.2).
EVENTS = ("find_device", "close", "expire", "lifeguard_contacted", "lifeguard_finished")


class RequestInputs(Protocol):
    """Inputs of the request machine: the events of 2.2 plus the driver's timeout."""

    def state(self) -> str:
        """Every state answers with its own name (Automat has no state getter by design)."""

    def find_device(self) -> Step:
        """Sent once by request creation after the row is inserted."""

    def close(self) -> Step:
        """The client returned the request."""

    def expire(self) -> Step:
        """The expiry poll found ``expires`` in the past."""

    def lifeguard_contacted(self) -> Step:
        """LifeGuard answered 200 to our please_* event."""

    def lifeguard_finished(self, imaging_result: str | None) -> Step:
        """LifeGuard finished preparing the device (the result may be only in the claim row)."""

    def timeout(self) -> Step:
        """The state's deadline passed."""


@dataclass
class RequestCore:
    """One operation's collaborators: the persisted machine and the layer's services."""

    m: Machine
    kind: "RequestKind"

    async def info(self) -> selection.RequestInfo:
        found = await self.m.db.runInteraction(selection.request_info, self.m.id)
        assert found is not None, "the runner loaded this request's row"
        return found

    async def to_finding_device(self) -> None:
        """Leave ``pending`` for another device; R1: the pending budget starts afresh."""
        await self.m.clear("pending")
        await self.m.goto("finding_device")

    async def handle_result(self, result: str | None) -> bool:
        """2.5's result table; False when there is no result yet."""
        m = self.m
        if result is None:
            return False
        await m.log(f"LifeGuard finished with result {result!r}")
        if result == "complete":
            await m.goto("ready")
        elif result == "failed-bad-image":
            if await m.incr("bad-images") < BAD_IMAGE_LIMIT:
                await self.to_finding_device()
            else:
                await m.goto("failed_bad_image")
        elif result == "failed-bad-device":
            if (await self.info()).named:
                await m.goto("failed_bad_device")
            else:
                await self.to_finding_device()
        else:
            await m.log(f"unexpected imaging result {result!r}; looking for another device", "warn")
            await self.to_finding_device()
        return True


async def _close(core: RequestCore, why: str) -> None:
    await core.m.log(why)
    await core.m.goto("closed")


# --- the event table (2.3) ------------------------------------------------------------------

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
assert set(STATES) == set(TIMEOUTS)
CLOSABLE = (new, finding_device, contact_lifeguard, contacting_lifeguard, pending, ready, expired)

for _s in STATES.values():
    _s.upon(RequestInputs.state).loop().returns(_s.name)

# closable: close and expire go to closed from each of these states.
for _s in CLOSABLE:

    @_s.upon(RequestInputs.close).to(closed)
    def _closed_by_client(inputs: RequestInputs, core: RequestCore) -> Step:
        return _close(core, "Request closed.")

    @_s.upon(RequestInputs.expire).to(closed)
    def _expired(inputs: RequestInputs, core: RequestCore) -> Step:
        return _close(core, "Request expired.")


@new.upon(RequestInputs.find_device).to(finding_device)
def _find_device(inputs: RequestInputs, core: RequestCore) -> Step:
    """-> finding_device; a named device another open request holds -> closed (2.2a)."""

    async def work() -> None:
        m = core.m
        info = await core.info()
        if info.named:
            other = await m.db.runInteraction(selection.holder, info.requested_device, m.id)
            if other is not None:
                core.kind.held[m.id] = other
                await _close(core, f"device {info.requested_device} is held by request {other}; closing")
                return
        await m.goto("finding_device")

    return work()


@finding_device.upon(RequestInputs.timeout).loop()
def _find_again(inputs: RequestInputs, core: RequestCore) -> Step:
    """Re-enter: the entry action runs another attempt (and checks the limits)."""
    return core.m.goto("finding_device")


@contact_lifeguard.upon(RequestInputs.timeout).to(contacting_lifeguard)
def _start_contacting(inputs: RequestInputs, core: RequestCore) -> Step:
    return core.m.goto("contacting_lifeguard")


@contacting_lifeguard.upon(RequestInputs.lifeguard_contacted).to(pending)
def _contacted(inputs: RequestInputs, core: RequestCore) -> Step:
    return core.m.goto("pending")


@contacting_lifeguard.upon(RequestInputs.timeout).loop()
def _contact_again(inputs: RequestInputs, core: RequestCore) -> Step:
    """Re-enter (re-check, POST again), or give up after CONTACT_LIMIT timeouts."""

    async def work() -> None:
        m = core.m
        if await m.incr("contacting_lifeguard") >= CONTACT_LIMIT:
            await m.clear("contacting_lifeguard")
            await m.log("could not contact LifeGuard; giving up", "warn")
            await m.goto("failed_device_not_found")
        else:
            await m.goto("contacting_lifeguard")

    return work()


@pending.upon(RequestInputs.lifeguard_finished).loop()
def _finished(inputs: RequestInputs, core: RequestCore, imaging_result: str | None) -> Step:
    """Handle the result sent, or else the one stored on the claim (2.5)."""

    async def work() -> None:
        result = imaging_result
        if result is None:
            result = await core.m.db.runInteraction(selection.imaging_result, core.m.id)
        await core.handle_result(result)

    return work()


@pending.upon(RequestInputs.timeout).loop()
def _pending_timeout(inputs: RequestInputs, core: RequestCore) -> Step:
    """Poll the stored result; without one, 'any' gives up after ANY_PENDING_LIMIT timeouts."""

    async def work() -> None:
        m = core.m
        stored = await m.db.runInteraction(selection.imaging_result, m.id)
        if await core.handle_result(stored):
            return
        if (await core.info()).named:
            await m.goto("pending")
        elif await m.incr("pending") < ANY_PENDING_LIMIT:
            await m.goto("pending")
        else:
            await m.log("LifeGuard did not finish in time; looking for another device", "warn")
            await core.to_finding_device()

    return work()


RequestMachine = builder.build()


# --- the MachineKind the runner drives ------------------------------------------------------

#: Starts the please_* POST for a request (the Broker's job): (machine, device, event, body).
ContactStarter = Callable[[Machine, selection.Assignment, str, dict], None]


@dataclass
class RequestKind:
    """The request machine as :class:`mozpool.statemachine.core.MachineRunner` sees it."""

    contact: ContactStarter
    rng: random.Random
    #: request id -> the request holding its named device, left by find_device for creation
    held: dict[int, int] = field(default_factory=dict)

    table = "requests"
    log_kind = "request"
    key_column = "id"
    #: an unrecognised stored state: closable, like the legacy ``expired``
    unknown_state = "expired"
    timeouts = TIMEOUTS

    def restore(self, m: Machine) -> RequestInputs:
        return RequestMachine(RequestCore(m, self), STATES[m.state])

    async def _feed(self, m: Machine, give: Callable[[RequestInputs], Step]) -> bool:
        return await apply_input(self.restore(m), give)

    async def event(self, m: Machine, event: str, args: dict[str, Any]) -> bool:
        if event == "lifeguard_finished":
            result = args.get("imaging_result")
            return await self._feed(m, lambda i: i.lifeguard_finished(None if result is None else str(result)))
        if event in EVENTS:
            return await self._feed(m, lambda i: getattr(i, event)())
        return False

    async def timeout(self, m: Machine) -> bool:
        return await self._feed(m, lambda i: i.timeout())

    async def enter(self, m: Machine, state: str) -> None:
        if state == "finding_device":
            await self.find(m)
        elif state == "contacting_lifeguard":
            await self.contacting(m)
        elif state in CLAIM_CLEARING:
            await m.db.runInteraction(selection.clear_claim, m.id, m.runner.now())

    # --- entry actions ----------------------------------------------------------------------

    async def find(self, m: Machine) -> None:
        """Device selection (2.4)."""
        draws = [self.rng.random() for _ in range(CLAIM_TRIES)]
        dead_before = liveness.dead_before(m.runner.clock, m.runner.time_scale)
        n, (info, claimed) = await m.incr_with(
            "finding_device", selection.find, m.id, draws, m.runner.now(), dead_before
        )
        if claimed.unreachable is not None:
            server, last_seen = claimed.unreachable
            await m.log(f"device {info.requested_device} belongs to imaging server {server}, which has not been"
                        f" heard from since {last_seen}", "warn")
            await m.goto("failed_device_not_found")
            return
        for name in claimed.lost:
            await m.log(f"device {name} was claimed by another request; trying another")
        if claimed.device is not None:
            await m.goto("contact_lifeguard", why=f"Assigning device {claimed.device.name}")
            return
        if claimed.lost:
            return  # lost every race: the next attempt comes with the state's timeout (R3)
        if not info.named:
            if n >= ANY_FIND_LIMIT:
                await m.log(f"no suitable device found after {n} attempts", "warn")
                await m.goto("failed_device_not_found")
            return
        if n >= NAMED_FIND_LIMIT:
            await m.log(f"device {info.requested_device} is not available", "warn")
            await m.goto("failed_device_busy")
            return
        state = await m.db.runInteraction(selection.device_state, info.requested_device)
        if state is not None and state.startswith("failed_"):
            await m.log(f"device {info.requested_device} is in state {state}", "warn")
            await m.goto("failed_bad_device")

    async def contacting(self, m: Machine) -> None:
        """Check the device is still ``ready``, decide please_image or please_power_cycle, and
        start the POST; its 200 comes back as ``lifeguard_contacted`` (2.5)."""
        device, info = await m.db.runInteraction(selection.assignment_and_request, m.id)
        if device is None or device.state != "ready":
            what = "no device is assigned" if device is None else f"device {device.name} is in state {device.state}"
            await m.log(f"{what}, not ready; looking for another device", "error")
            await m.goto("finding_device")
            return
        if info.reusable and device.image == info.image and selection.same_boot_config(
            device.boot_config, info.boot_config
        ):
            event, body = "please_power_cycle", {}
        else:
            event, body = "please_image", {"image": info.image, "boot_config": info.boot_config}
        await m.log(f"sending {event} for device {device.name} to LifeGuard at {device.server}")
        self.contact(m, device, event, body)

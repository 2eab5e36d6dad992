"""The warm pool (issue 14, item 3): idle devices imaged ahead of demand, so that a request that
finds one is handed it after a power cycle instead of an imaging.

A device imaged and never handed out since is *pristine* (``devices.pristine``, set by LifeGuard
when an imaging completes, cleared when a request reaches ``ready``); selection and the queue's
plan give a request a pristine device holding its image and boot_config first, and the request
machine sends it ``please_power_cycle`` even for an image whose ``can_reuse`` is false.

**Targets are pool-wide; each server keeps its share on its own devices.**  ``android = 4``
asks for 4 idle pristine android devices in the whole pool.  Each server computes every
server's share from the same rows -- in proportion to the devices each has in service (not
failed, not parked), by the largest remainder, ties by server name -- and images only its own
devices up to its own share.  So servers never image each other's devices and never fight over
a target; a dead server's devices are not counted, and the live servers take its share.

**A pass** (:meth:`WarmPool.run_pass`) runs on a timer and whenever a device may have freed up
(the queue's wake-ups): it reads the pool (:func:`read_pool`), decides (:func:`decide`, pure),
stops the warm imagings it must, then asks this server's LifeGuard -- in process: the devices
are its own -- for ``please_image`` on the devices it chose.

**Rules.**

- A device that any waiting request, on any server, could use is never warm-imaged.
- At most ``max_concurrent`` warm imagings run at once on a server.
- *Interruptible while the card is untouched.*  The device machine accepts ``please_image`` only
  in ``new``, ``unknown``, ``troubleshooting`` and ``ready`` (state-machines.md 1.2), so a warm
  imaging cannot be turned into a request's imaging.  Instead, a waiting request that no free
  device serves, and that could use a device being warm-imaged with another image, stops it
  while the device is still booting or downloading (:data:`INTERRUPTIBLE`): the device's image
  record is cleared first (the live image may still write the card), then LifeGuard's
  conditional state change returns it to ``ready``, and the queue hands it to the request,
  whose ``please_image`` power-cycles it.  Once the card is being written the imaging finishes:
  it is bounded by ``max_concurrent``, and the queue's estimate counts such a device as soon
  free (:func:`mozpool.broker.queue.snapshot` lists unclaimed devices in progress as busy).
  A waiting request that a warm imaging *of its own image* will serve stops nothing: it takes
  that device when it is ready.
- A request that claims a device in the instant between the pass's check and LifeGuard taking
  the ``please_image`` gets an imaging of its own image: :meth:`WarmPool.observe` sees the
  transition in the transaction that writes it and puts the claimant's image in ``next_image``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool import liveness
from mozpool.broker import queue
from mozpool.broker.selection import same_boot_config
from mozpool.broker.warmsettings import WarmSettings
from mozpool.db import catalog, changes, history, logs
from mozpool.db import health as board_health
from mozpool.db.pool import Cursor, Database
from mozpool.logconfig import Logger
from mozpool.passes import Passes
from mozpool.timeutil import dbnow

log = Logger()

#: The device states an imaging passes through (state-machines.md 1.3, the PXE path): an
#: unclaimed device in one of them with a request's image in ``next_image`` is being warm-imaged.
IMAGING_STATES = (
    "start_pxe_boot", "pxe_power_cycling", "pxe_booting", "mobile_init_started",
    "android_downloading", "android_extracting", "b2g_downloading", "b2g_extracting",
    "sut_verifying", "sut_verify_power_cycle", "sut_sdcard_verifying", "operation_complete",
)
#: Where a warm imaging may still be stopped: the SD card is not being written yet.
INTERRUPTIBLE = ("pxe_power_cycling", "pxe_booting", "mobile_init_started", "android_downloading", "b2g_downloading")
#: States in which a device is out of service (besides ``failed_*``): not counted for shares.
OUT_OF_SERVICE = ("unknown", "locked_out", "troubleshooting", "maintenance_mode", "held", "board_suspect")
#: LifeGuard's own images (self-test, maintenance): never a warm pool's.
OWN_IMAGES = ("self-test", "maintenance")
#: Auto mode counts the requests of the last hour (nominal seconds, scaled by time_scale).
DEMAND_WINDOW = 3600.0
#: The device log's source for the warm pool's lines.
SOURCE = "warm_pool"


class DeviceEvents(Protocol):
    """What the warm pool asks of this server's LifeGuard (:class:`mozpool.lifeguard.interfaces.ILifeGuard`)."""

    def device_event(self, name: str, event: str, body: dict[str, Any]) -> Any:
        """Feed ``event`` to the device's machine (a Deferred)."""

    def state_change(self, name: str, old: str, new: str) -> Any:
        """Enter ``new`` if the device is in ``old`` (a Deferred; fails on a mismatch)."""


# --- what a pass reads ------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    id: int
    name: str
    server: str
    environment: str
    hardware_type_id: int | None
    state: str
    claimed: bool
    image_id: int | None
    boot_config: str | None
    pristine: bool
    next_image_id: int | None
    next_boot_config: str | None

    @property
    def idle(self) -> bool:
        return self.state == "ready" and not self.claimed


@dataclass(frozen=True)
class Image:
    id: int
    name: str
    boot_config_keys: tuple[str, ...]


@dataclass
class PoolView:
    """One pass's reading of the pool, in one transaction."""

    me: str
    #: this server's devices
    own: list[Device]
    #: unclaimed devices of every live server being imaged with a request's image
    warming: list[Device]
    #: (server, environment) -> devices in service
    in_service: dict[tuple[str, str], int]
    #: the queue as :func:`mozpool.broker.queue.snapshot` reads it (free devices of every live server)
    snap: queue.Snapshot
    images: dict[str, Image]
    image_hardware: dict[int, frozenset[int]]
    #: ready devices behind a suspect power controller (issue 15)
    avoided: frozenset[int] = frozenset()
    #: (image id, boot_config, environment) -> 'any' requests created in the demand window
    demand: dict[tuple[int, str, str], int] = field(default_factory=dict)


_DEVICE_COLUMNS = (
    "SELECT d.id, d.name, s.fqdn, d.environment, d.hardware_type_id, d.state, dr.request_id, d.image_id,"
    " d.boot_config, d.pristine, d.next_image_id, d.next_boot_config"
    " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
    " LEFT JOIN device_requests dr ON dr.device_id = d.id"
)


def _device(r: Sequence[Any]) -> Device:
    return Device(
        int(r[0]), r[1], r[2], r[3] or "", None if r[4] is None else int(r[4]), r[5], r[6] is not None,
        None if r[7] is None else int(r[7]), r[8], bool(r[9]), None if r[10] is None else int(r[10]), r[11],
    )


def read_pool(c: Cursor, me: str, dead_before: str | None, demand_since: str | None) -> PoolView:
    """Everything a pass decides on (``demand_since``: None when not in auto mode)."""
    dead = catalog.dead_server_ids(c, dead_before) if dead_before is not None else []
    not_dead = f" AND d.imaging_server_id NOT IN ({', '.join('?' * len(dead))})" if dead else ""
    own = [_device(r) for r in c.execute(_DEVICE_COLUMNS + " WHERE s.fqdn = ? ORDER BY d.id", (me,)).fetchall()]
    states = ", ".join("?" * len(IMAGING_STATES))
    lifeguards = ", ".join("?" * len(OWN_IMAGES))
    warming = [_device(r) for r in c.execute(
        _DEVICE_COLUMNS + " JOIN images n ON n.id = d.next_image_id"
        f" WHERE dr.request_id IS NULL AND d.state IN ({states}) AND n.name NOT IN ({lifeguards})"
        + not_dead + " ORDER BY d.id", (*IMAGING_STATES, *OWN_IMAGES, *dead)).fetchall()]
    out = ", ".join("?" * len(OUT_OF_SERVICE))
    in_service = {
        (r[0], r[1] or ""): int(r[2]) for r in c.execute(
            "SELECT s.fqdn, d.environment, COUNT(*) FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
            f" WHERE SUBSTR(d.state, 1, 7) <> 'failed_' AND d.state NOT IN ({out})" + not_dead
            + " GROUP BY s.fqdn, d.environment", (*OUT_OF_SERVICE, *dead)).fetchall()
    }
    images = {}
    for image_id, name, keys in c.execute("SELECT id, name, boot_config_keys FROM images").fetchall():
        try:
            parsed = json.loads(keys or "[]")
        except ValueError:
            parsed = []
        images[name] = Image(int(image_id), name, tuple(str(k) for k in parsed) if isinstance(parsed, list) else ())
    image_hardware: dict[int, set[int]] = defaultdict(set)
    for image_id, hw in c.execute("SELECT image_id, hardware_type_id FROM image_pxe_configs").fetchall():
        image_hardware[int(image_id)].add(int(hw))
    demand: dict[tuple[int, str, str], int] = defaultdict(int)
    if demand_since is not None:
        for image_id, boot_config, environment, n in c.execute(
            "SELECT image_id, boot_config, environment, COUNT(*) FROM requests"
            " WHERE created >= ? AND requested_device = 'any' GROUP BY image_id, boot_config, environment",
            (demand_since,),
        ).fetchall():
            demand[(int(image_id), canonical(boot_config), environment or "any")] += int(n)
    return PoolView(
        me, own, warming, in_service, queue.snapshot(c, dead_before), images,
        {k: frozenset(v) for k, v in image_hardware.items()},
        frozenset(board_health.avoided_device_ids(c)), dict(demand),
    )


def canonical(boot_config: str | None) -> str:
    """One text for equal boot configs (key order and spacing do not matter)."""
    try:
        return json.dumps(json.loads(boot_config or "{}"), sort_keys=True)
    except ValueError:
        return boot_config or "{}"


# --- the decision (pure) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    """A pool-wide target resolved against the catalogue: ``count`` devices in the whole pool,
    ``share`` of them on this server."""

    image: Image
    boot_config: str
    environment: str
    count: int
    share: int = 0

    def holds(self, image_id: int | None, boot_config: str | None, environment: str) -> bool:
        return (image_id == self.image.id and same_boot_config(boot_config, self.boot_config)
                and self.environment in ("any", environment))


@dataclass(frozen=True)
class Start:
    device: Device
    goal: Goal


@dataclass(frozen=True)
class Stop:
    device: Device
    #: the waiting request that could use the device
    request: int


@dataclass
class Decision:
    starts: list[Start] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    #: goal -> (its share here, idle pristine and warming devices counting for it here)
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: why a goal could not be resolved (unknown image, a boot_config key missing)
    problems: list[str] = field(default_factory=list)


def share(total: int, counts: dict[str, int], me: str) -> int:
    """``me``'s part of ``total`` split in proportion to ``counts`` by the largest remainder
    (ties by name): every server computes the same split, and the parts add up to ``total``
    (at most the sum of ``counts``)."""
    n = sum(counts.values())
    if n <= 0 or counts.get(me, 0) <= 0:
        return 0
    total = min(total, n)
    parts = {s: total * c // n for s, c in counts.items()}
    left = total - sum(parts.values())
    for s in sorted(counts, key=lambda s: (-(total * counts[s] % n), s))[:left]:
        parts[s] += 1
    return parts[me]


def largest_remainder(total: int, weights: dict[Any, int]) -> dict[Any, int]:
    """``total`` split over ``weights`` in proportion (ties by key order)."""
    n = sum(weights.values())
    if n <= 0 or total <= 0:
        return {k: 0 for k in weights}
    parts = {k: total * w // n for k, w in weights.items()}
    left = total - sum(parts.values())
    for k in sorted(weights, key=lambda k: (-(total * weights[k] % n), str(k)))[:left]:
        parts[k] += 1
    return parts


def goals(settings: WarmSettings, view: PoolView) -> tuple[list[Goal], list[str]]:
    """The pool-wide targets with this server's share of each; and what could not be resolved.

    Fixed targets name images; auto mode splits ``spares`` over the (image, boot_config,
    environment) of the requests of the demand window, in proportion."""
    problems: list[str] = []
    raw: list[tuple[Image, str, str, int]] = []
    pool_size = sum(view.in_service.values())
    if settings.auto:
        spares = settings.spares if settings.spares is not None else round(settings.spares_fraction * pool_size)
        by_id = {i.id: i for i in view.images.values()}
        wanted = {k: n for k, n in view.demand.items() if k[0] in by_id and by_id[k[0]].name not in OWN_IMAGES}
        for (image_id, boot_config, environment), n in sorted(largest_remainder(spares, wanted).items()):
            if n:
                raw.append((by_id[image_id], boot_config, environment, n))
    else:
        for t in settings.targets:
            image = view.images.get(t.image)
            if image is None or image.name in OWN_IMAGES:
                problems.append(f"no image {t.image!r} to keep warm")
                continue
            values = settings.boot_config_values(t.image)
            missing = [k for k in image.boot_config_keys if k not in values]
            if missing:
                problems.append(f"image {t.image} needs {', '.join(missing)}: set {t.image}.{missing[0]} = ...")
                continue
            raw.append((image, json.dumps({k: values[k] for k in image.boot_config_keys}), t.environment, t.count))
    out = []
    for image, boot_config, environment, count in raw:
        counts: dict[str, int] = defaultdict(int)
        for (server, env), n in view.in_service.items():
            if environment in ("any", env):
                counts[server] += n
        out.append(Goal(image, boot_config, environment, count, share(count, counts, view.me)))
    # Environment-specific goals take their devices first; 'any' goals count what is left.
    out.sort(key=lambda g: g.environment == "any")
    return out, problems


def usable_by_waiting(d: Device, snap: queue.Snapshot, image_hardware: dict[int, frozenset[int]]) -> bool:
    return any(queue.can_take(r, d.environment, d.name, d.hardware_type_id, image_hardware) for r in snap.waiting)


def decide(settings: WarmSettings, view: PoolView) -> Decision:
    """Which of this server's devices to warm-image with what, and which warm imagings to stop."""
    wanted, problems = goals(settings, view)
    decision = Decision(problems=problems)
    own_warming = [d for d in view.warming if d.server == view.me]
    have = {i: 0 for i in range(len(wanted))}
    counted: set[int] = set()
    # Idle pristine devices and warm imagings in flight count towards the goals they hold.
    for d in [d for d in view.own if d.idle and d.pristine] + own_warming:
        image_id, boot_config = (d.image_id, d.boot_config) if d.idle else (d.next_image_id, d.next_boot_config)
        for i, g in enumerate(wanted):
            if have[i] < g.share and g.holds(image_id, boot_config, d.environment):
                have[i] += 1
                counted.add(d.id)
                break
    for i, g in enumerate(wanted):
        key = f"{g.image.name}@{g.environment}" + ("" if g.boot_config == "{}" else f" {g.boot_config}")
        decision.progress[key] = (g.share, have[i])
    decision.stops = _stops(view)
    stopping = {s.device.id for s in decision.stops}
    slots = settings.max_concurrent - len([d for d in own_warming if d.id not in stopping])
    held_images = {(g.image.id, canonical(g.boot_config)) for g in wanted}
    # Candidates: idle, not kept for a goal, no waiting request could use them; plain devices
    # first, then pristine ones holding an image no goal wants, then surplus warm ones.
    candidates = sorted(
        (d for d in view.own if d.idle and d.id not in counted and d.id not in view.avoided
         and not usable_by_waiting(d, view.snap, view.image_hardware)),
        key=lambda d: (d.pristine, d.pristine and (d.image_id, canonical(d.boot_config)) in held_images, d.id),
    )
    taken: set[int] = set()
    while slots > 0:
        progress = False
        for i, g in enumerate(wanted):
            if slots <= 0 or have[i] >= g.share:
                continue
            allowed = view.image_hardware.get(g.image.id)
            d = next((d for d in candidates if d.id not in taken and g.environment in ("any", d.environment)
                      and (allowed is None or d.hardware_type_id in allowed)), None)
            if d is None:
                continue
            taken.add(d.id)
            have[i] += 1
            slots -= 1
            progress = True
            decision.starts.append(Start(d, g))
        if not progress:
            break
    return decision


def _stops(view: PoolView) -> list[Stop]:
    """Warm imagings (of every live server, decided the same way by each) that a waiting request
    no free device serves could use, and whose image is not the request's; this server's ones.

    In queue order, each such request first counts on a warm imaging of its own image (it takes
    that device when it is ready), else stops the first interruptible warm imaging it could use."""
    snap = view.snap
    if not snap.waiting or not view.warming:
        return []
    served = {r.id for r, _ in queue.plan(snap)} if snap.free else set()
    spoken: set[int] = set()
    out = []
    for r in queue.order(snap.waiting, snap.held):
        if r.id in served:
            continue
        usable = [d for d in view.warming if d.id not in spoken
                  and queue.can_take(r, d.environment, d.name, d.hardware_type_id, view.image_hardware)]
        own_image = next((d for d in usable if d.next_image_id == r.image_id
                          and same_boot_config(d.next_boot_config, r.boot_config)), None)
        if own_image is not None:
            spoken.add(own_image.id)
            continue
        stop = next((d for d in usable if d.state in INTERRUPTIBLE), None)
        if stop is None:
            continue
        spoken.add(stop.id)
        if stop.server == view.me:
            out.append(Stop(stop, r.id))
    return out


# --- acting ------------------------------------------------------------------------------------

def still_idle(c: Cursor, device_id: int, message: str, now: str) -> bool:
    """In ``ready`` and unclaimed, now: then ``message`` goes to its log."""
    if c.scalar(
        "SELECT 1 FROM devices d LEFT JOIN device_requests dr ON dr.device_id = d.id"
        " WHERE d.id = ? AND d.state = 'ready' AND dr.device_id IS NULL", (device_id,)) is None:
        return False
    logs.add_log(c, "device", device_id, SOURCE, message, now)
    return True


def forget_image(c: Cursor, device_id: int, state: str, now: str, why: str) -> bool:
    """Before a warm imaging is stopped: what is on the card is unknown from now on (the live
    image may still write it), so no request is handed the device without an imaging.  Only if
    the device is still in ``state`` and unclaimed; True if it was."""
    if c.scalar(
        "SELECT 1 FROM devices d LEFT JOIN device_requests dr ON dr.device_id = d.id"
        " WHERE d.id = ? AND d.state = ? AND dr.device_id IS NULL", (device_id, state)) is None:
        return False
    c.execute("UPDATE devices SET image_id = NULL, boot_config = NULL, pristine = 0 WHERE id = ?", (device_id,))
    changes.record(c, changes.DEVICE_ROW, now, device_id=device_id)
    logs.add_log(c, "device", device_id, SOURCE, why, now)
    return True


def hand_over(c: Cursor, entry: history.Entry, starting: frozenset[int]) -> None:
    """In the transaction that takes a device out of ``ready`` for a warm imaging: a request
    that claimed it meanwhile gets an imaging of its own image (its own please_* will find the
    device busy with it, and the result goes to the claim)."""
    if entry.kind != "device" or entry.new != "start_pxe_boot" or entry.object_id not in starting:
        return
    row = c.execute(
        "SELECT r.id, r.image_id, r.boot_config FROM device_requests dr JOIN requests r ON r.id = dr.request_id"
        " WHERE dr.device_id = ?", (entry.object_id,)).fetchone()
    if row is None:
        return
    c.execute("UPDATE devices SET next_image_id = ?, next_boot_config = ? WHERE id = ?", (row[1], row[2], entry.object_id))
    logs.add_log(c, "device", entry.object_id, SOURCE,
                 f"request {row[0]} claimed this device as its warm imaging started: installing the request's image",
                 entry.ts[:19])


class WarmPool(Passes):
    """Keeps this server's share of the warm pool, a pass at a time (:class:`Passes`)."""

    what = "warm pool pass"

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        server_fqdn: str,
        settings: WarmSettings,
        lifeguard: DeviceEvents,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.db = db
        self.clock = clock
        self.server_fqdn = server_fqdn
        self.settings = settings
        self.lifeguard = lifeguard
        self.time_scale = time_scale
        #: devices whose please_image is being delivered now (read by :meth:`observe`, in the
        #: database's thread: replaced, never mutated)
        self.starting: frozenset[int] = frozenset()
        #: the latest pass's decision (for the manhole and tests)
        self.last: Decision | None = None
        self._said: set[str] = set()

    @property
    def interval(self) -> float:
        return self.settings.interval * self.time_scale

    def observe(self, c: Cursor, entry: history.Entry) -> None:
        """A LifeGuard runner observer (in the transaction of every device transition)."""
        hand_over(c, entry, self.starting)

    async def step(self) -> bool:
        await self.run_pass()
        return False  # its imaging changes the pool: the events it causes wake the next pass

    async def run_pass(self) -> Decision:
        demand_since = dbnow(self.clock, -DEMAND_WINDOW * self.time_scale) if self.settings.auto else None
        view = await self.db.runInteraction(
            read_pool, self.server_fqdn, liveness.dead_before(self.clock, self.time_scale), demand_since)
        decision = decide(self.settings, view)
        self.last = decision
        for problem in decision.problems:
            if problem not in self._said:
                self._said.add(problem)
                log.warn("warm pool: {problem}", problem=problem)
        for stop in decision.stops:
            if self.stopped:
                break
            await self._stop(stop)
        for start in decision.starts:
            if self.stopped:
                break
            await self._start(start)
        return decision

    async def _stop(self, stop: Stop) -> None:
        d = stop.device
        now = dbnow(self.clock)
        why = (f"warm imaging stopped in {d.state}: request {stop.request} is waiting and could use this device; "
               "the image on its card is unknown now")
        if not await self.db.runInteraction(forget_image, d.id, d.state, now, why):
            return
        try:
            await self.lifeguard.state_change(d.name, d.state, "ready")
        except Exception as e:
            log.info("warm pool: {device} not stopped ({error})", device=d.name, error=e)
            return
        log.info("warm pool: stopped warm imaging of {device} for request {request}", device=d.name, request=stop.request)

    async def _start(self, start: Start) -> None:
        d, g = start.device, start.goal
        where = "any environment" if g.environment == "any" else f"environment {g.environment}"
        message = f"warm pool: imaging with {g.image.name} ahead of demand ({g.share} kept here for {where})"
        if not await self.db.runInteraction(still_idle, d.id, message, dbnow(self.clock)):
            return
        log.info("warm pool: imaging {device} with {image} ahead of demand", device=d.name, image=g.image.name)
        self.starting = self.starting | {d.id}
        try:
            await self.lifeguard.device_event(d.name, "please_image", {"image": g.image.name, "boot_config": g.boot_config})
        except Exception as e:
            log.warn("warm pool: please_image for {device} failed: {error}", device=d.name, error=e)
        finally:
            self.starting = self.starting - {d.id}


class WarmPoolService(TimerService):
    """A pass every ``interval`` (scaled); the tap also wakes the pool when a device may have
    freed up.  Stopping waits for the pass in hand."""

    def __init__(self, pool: WarmPool) -> None:
        super().__init__(pool.interval, pool.wake)
        self.clock = pool.clock
        self.pool = pool
        self.setName("warm_pool")

    def startService(self) -> None:
        self.pool.stopped = False
        super().startService()

    def stopService(self) -> "defer.Deferred[None]":
        stopped = defer.maybeDeferred(super().stopService)

        async def both() -> None:
            await stopped
            await self.pool.stop()

        return defer.Deferred.fromCoroutine(both())

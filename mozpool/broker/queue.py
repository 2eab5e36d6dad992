"""The request queue: which waiting request gets which free device, in what order, and when a
waiting request can expect its device (issue 14).

A request that finds no device stays in ``finding_device``, queued.  Whenever a device may have
freed up (a claim dropped, a device became ``ready``, a new device), each server's
:class:`Matcher` reads one snapshot of the whole shared pool -- every server's waiting requests
and free devices -- and computes the same deterministic :func:`plan` from it: higher priority
first; within a priority the assignee holding the fewest devices, then the oldest request.  Each
server then offers devices only to its own requests, whose machines claim them with the usual
guarded INSERT.  Two servers reading the same snapshot agree on the plan, so they never fight
over the head of the queue; when their snapshots differ, the INSERT decides and the loser plans
again.

Everything here but :class:`Matcher` is plain data and pure functions, so the order and the
estimate are tested without a database.
"""

from __future__ import annotations

import calendar
import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime

from mozpool.broker.selection import same_boot_config
from mozpool.db import catalog
from mozpool.db.pool import Cursor, Database
from mozpool.logconfig import Logger
from mozpool.passes import Passes
from mozpool.statemachine.core import each_bounded
from mozpool.timeutil import apitime, dbnow, dbtime, parse_dbtime

log = Logger()

#: Offers made at once by one pass (each is one machine operation under its lock).
OFFER_CONCURRENCY = 16
#: Free devices read per pass: all pristine ones, and this many others per waiting request
#: (at least FREE_READ_MIN), lowest ids first.
FREE_READ_PER_REQUEST = 8
FREE_READ_MIN = 1000
#: The imaging time assumed for an image and hardware type never seen imaged (seconds, scaled).
DEFAULT_IMAGING_SECONDS = 300.0


@dataclass(frozen=True)
class Waiting:
    """A request in ``finding_device`` without a device."""

    id: int
    server: str
    priority: int
    assignee: str
    #: when it was queued (database time text); orders requests of equal standing
    created: str
    environment: str
    requested_device: str
    image_id: int
    boot_config: str
    reusable: bool

    @property
    def named(self) -> bool:
        return self.requested_device != "any"


@dataclass(frozen=True)
class Free:
    """A device in state ``ready`` that no request holds, on a live server."""

    id: int
    name: str
    environment: str
    image_id: int | None
    boot_config: str | None
    hardware_type_id: int | None
    server: str
    #: imaged and never handed out since: handed out without re-imaging even if not reusable
    pristine: bool


@dataclass(frozen=True)
class Busy:
    """A device that is not free now but may become free for a waiting request: claimed (it is
    free again at its request's expiry at the latest) or part-way through a self-test."""

    id: int
    name: str
    environment: str
    hardware_type_id: int | None
    #: when it is expected back (database time text); None: unknown, soon
    back: str | None
    #: the image and boot_config a warm imaging is installing: the device comes back pristine
    image_id: int | None = None
    boot_config: str | None = None


@dataclass
class Snapshot:
    waiting: list[Waiting]
    free: list[Free]
    #: assignee -> devices its open requests hold
    held: dict[str, int]
    #: image id -> the hardware type ids it has a PXE config for (absent: any hardware)
    image_hardware: dict[int, frozenset[int]]
    busy: list[Busy] = field(default_factory=list)
    #: (image id, hardware type id) -> mean seconds from claim to ready
    imaging: dict[tuple[int, int | None], float] = field(default_factory=dict)


# --- reading the pool -------------------------------------------------------------------------

def snapshot(c: Cursor, dead_before: str | None, with_busy: bool = False) -> Snapshot:
    """The queue and the free devices of every live server, in one transaction."""
    dead = catalog.dead_server_ids(c, dead_before) if dead_before is not None else []
    not_dead = f" AND {{col}} NOT IN ({', '.join('?' * len(dead))})" if dead else ""
    waiting = [
        Waiting(int(r[0]), r[1], int(r[2]), r[3], str(r[4] or ""), r[5] or "any", r[6], int(r[7]), r[8] or "{}", bool(r[9]))
        for r in c.execute(
            "SELECT r.id, s.fqdn, r.priority, r.assignee, r.created, r.environment, r.requested_device,"
            " r.image_id, r.boot_config, i.can_reuse"
            " FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
            " JOIN images i ON i.id = r.image_id"
            " LEFT JOIN device_requests dr ON dr.request_id = r.id"
            " WHERE r.state = 'finding_device' AND dr.request_id IS NULL" + not_dead.format(col="r.imaging_server_id"),
            dead,
        ).fetchall()
    ]
    if not waiting:
        return Snapshot([], [], {}, {})
    # Every pristine device (kept warm for an image), and enough others for the whole queue: a
    # large idle pool is not read whole on every pass.  Every server reads the same ones.
    free = [
        Free(int(r[0]), r[1], r[2], None if r[3] is None else int(r[3]), r[4],
             None if r[5] is None else int(r[5]), r[6], bool(r[7]))
        for pristine, limit in ((1, None), (0, max(FREE_READ_MIN, FREE_READ_PER_REQUEST * len(waiting))))
        for r in c.execute(
            "SELECT d.id, d.name, d.environment, d.image_id, d.boot_config, d.hardware_type_id, s.fqdn, d.pristine"
            " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
            " LEFT JOIN device_requests dr ON dr.device_id = d.id"
            " WHERE d.state = 'ready' AND dr.device_id IS NULL AND d.pristine = ?"
            + not_dead.format(col="d.imaging_server_id") + " ORDER BY d.id" + (" LIMIT ?" if limit else ""),
            [pristine, *dead, *([limit] if limit else [])],
        ).fetchall()
    ]
    held: dict[str, int] = {
        r[0]: int(r[1]) for r in c.execute(
            "SELECT r.assignee, COUNT(*) FROM device_requests dr JOIN requests r ON r.id = dr.request_id"
            " GROUP BY r.assignee"
        ).fetchall()
    }
    image_hardware: dict[int, set[int]] = defaultdict(set)
    for image_id, hw in c.execute("SELECT image_id, hardware_type_id FROM image_pxe_configs").fetchall():
        image_hardware[int(image_id)].add(int(hw))
    snap = Snapshot(waiting, free, held, {k: frozenset(v) for k, v in image_hardware.items()})
    if with_busy:
        snap.busy = [
            Busy(int(r[0]), r[1], r[2], None if r[3] is None else int(r[3]), None if r[4] is None else str(r[4]))
            for r in c.execute(
                "SELECT d.id, d.name, d.environment, d.hardware_type_id, r.expires"
                " FROM devices d JOIN device_requests dr ON dr.device_id = d.id JOIN requests r ON r.id = dr.request_id"
                " WHERE 1 = 1" + not_dead.format(col="d.imaging_server_id"),
                dead,
            ).fetchall()
        ]
        snap.busy += [
            Busy(int(r[0]), r[1], r[2], None if r[3] is None else int(r[3]), None,
                 None if r[4] is None else int(r[4]), r[5])
            for r in c.execute(
                "SELECT d.id, d.name, d.environment, d.hardware_type_id, d.next_image_id, d.next_boot_config"
                " FROM devices d"
                " LEFT JOIN device_requests dr ON dr.device_id = d.id"
                " WHERE dr.device_id IS NULL AND d.state NOT IN ('ready', 'unknown', 'locked_out', 'troubleshooting',"
                " 'maintenance_mode') AND SUBSTR(d.state, 1, 7) <> 'failed_'"
                + not_dead.format(col="d.imaging_server_id"),
                dead,
            ).fetchall()
        ]
        snap.imaging = imaging_means(c)
    return snap


def imaging_means(c: Cursor) -> dict[tuple[int, int | None], float]:
    return {
        (int(r[0]), None if r[1] is None else int(r[1])): float(r[2])
        for r in c.execute("SELECT image_id, hardware_type_id, mean_seconds FROM imaging_stats").fetchall()
    }


def record_imaging_time(c: Cursor, request_id: int, now: str) -> None:
    """Fold this request's time from claim to ``ready`` into its image and hardware type's
    running mean (the latest 20 samples weigh most)."""
    row = c.execute(
        "SELECT r.image_id, d.hardware_type_id, r.assigned_at FROM requests r"
        " JOIN device_requests dr ON dr.request_id = r.id JOIN devices d ON d.id = dr.device_id WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if row is None or row[1] is None or row[2] is None:
        return
    seconds = max(0.0, epoch(now) - epoch(str(row[2])))
    image_id, hw = int(row[0]), int(row[1])
    found = c.execute(
        "SELECT samples, mean_seconds FROM imaging_stats WHERE image_id = ? AND hardware_type_id = ?", (image_id, hw)
    ).fetchone()
    if found is None:
        c.execute(
            "INSERT INTO imaging_stats (image_id, hardware_type_id, samples, mean_seconds) VALUES (?, ?, 1, ?)",
            (image_id, hw, seconds),
        )
        return
    samples = int(found[0]) + 1
    mean = float(found[1]) + (seconds - float(found[1])) / min(samples, 20)
    c.execute(
        "UPDATE imaging_stats SET samples = ?, mean_seconds = ? WHERE image_id = ? AND hardware_type_id = ?",
        (samples, mean, image_id, hw),
    )


# --- the order and the plan -------------------------------------------------------------------

def can_take(r: Waiting, env: str, name: str, hardware_type_id: int | None, image_hardware: dict[int, frozenset[int]]) -> bool:
    """Whether a device of this environment, name and hardware type could serve ``r``."""
    if r.named and name != r.requested_device:
        return False
    if r.environment != "any" and env != r.environment:
        return False
    allowed = image_hardware.get(r.image_id)
    return allowed is None or hardware_type_id in allowed


def order(waiting: Sequence[Waiting], held: dict[str, int]) -> Iterator[Waiting]:
    """The queue's order, as if each request were served in turn: priority first (higher
    sooner); within a priority, the assignee holding the fewest devices, then the oldest."""
    by_priority: dict[int, dict[str, list[Waiting]]] = defaultdict(lambda: defaultdict(list))
    for r in waiting:
        by_priority[r.priority][r.assignee].append(r)
    counts = dict(held)
    for priority in sorted(by_priority, reverse=True):
        queues = {a: sorted(rs, key=lambda r: (r.created, r.id)) for a, rs in by_priority[priority].items()}
        heap = [(counts.get(a, 0), q[0].created, q[0].id, a) for a, q in queues.items()]
        heapq.heapify(heap)
        position = {a: 0 for a in queues}
        while heap:
            _, _, _, a = heapq.heappop(heap)
            q = queues[a]
            r = q[position[a]]
            position[a] += 1
            yield r
            counts[a] = counts.get(a, 0) + 1
            if position[a] < len(q):
                nxt = q[position[a]]
                heapq.heappush(heap, (counts[a], nxt.created, nxt.id, a))


def _mix(device_id: int, seed: int) -> int:
    """A deterministic shuffle key: every server orders the same free devices the same way,
    and successive passes do not always hand out the same device first."""
    return ((device_id * 2654435761) ^ (seed * 40503)) & 0xFFFFFFFF


class _Candidates:
    """A list of devices handed out from the front: taken ones are skipped once, so a queue of
    thousands walks each list about once."""

    def __init__(self, devices: list[Free]) -> None:
        self.devices = devices
        self.start = 0

    def first(self, taken: set[int], fits: Callable[[Free], bool]) -> Free | None:
        while self.start < len(self.devices) and self.devices[self.start].id in taken:
            self.start += 1
        for d in self.devices[self.start:]:
            if d.id not in taken and fits(d):
                return d
        return None


def plan(snap: Snapshot) -> list[tuple[Waiting, Free]]:
    """Which waiting request gets which free device: in queue order, each takes the best free
    device it can use (one already holding its image -- pristine, or for a reusable image any
    -- first; then one not kept warm with another image).  A request nothing free can serve is
    passed over, so it never blocks the requests behind it that could be served."""
    if not snap.waiting or not snap.free:
        return []
    seed = max(r.id for r in snap.waiting)
    free = sorted(snap.free, key=lambda d: _mix(d.id, seed))
    taken: set[int] = set()
    by_name = {d.name: d for d in free}
    pristine: dict[int, _Candidates] = {}
    holding: dict[int, _Candidates] = {}
    for image in {d.image_id for d in free if d.image_id is not None}:
        pristine[image] = _Candidates([d for d in free if d.image_id == image and d.pristine])
        holding[image] = _Candidates([d for d in free if d.image_id == image])
    plain = _Candidates([d for d in free if not d.pristine])
    warm = _Candidates([d for d in free if d.pristine])
    out: list[tuple[Waiting, Free]] = []
    for r in order(snap.waiting, snap.held):
        if len(taken) == len(free):
            break

        def usable(d: Free) -> bool:
            return can_take(r, d.environment, d.name, d.hardware_type_id, snap.image_hardware)

        def holds_image(d: Free) -> bool:
            return usable(d) and same_boot_config(d.boot_config, r.boot_config)

        choice: Free | None = None
        if r.named:
            d = by_name.get(r.requested_device)
            choice = d if d is not None and d.id not in taken and usable(d) else None
        else:
            preferred = holding if r.reusable else pristine
            if r.image_id in preferred:
                choice = preferred[r.image_id].first(taken, holds_image)
            if choice is None:
                choice = plain.first(taken, usable) or warm.first(taken, usable)
        if choice is not None:
            taken.add(choice.id)
            out.append((r, choice))
    return out


# --- the estimate -----------------------------------------------------------------------------

@dataclass(frozen=True)
class QueuePlace:
    """Where a waiting request stands: ``position`` 1 is next; ``ahead`` are the requests
    before it that could take the same devices; ``eta`` when it should be ``ready``."""

    position: int
    ahead: int
    eta: str | None
    why: str

    def public(self) -> dict[str, Any]:
        return {"position": self.position, "ahead": self.ahead, "eta": self.eta and apitime(self.eta), "why": self.why}


def _compatible(a: Waiting, b: Waiting, image_hardware: dict[int, frozenset[int]]) -> bool:
    """Whether two requests could compete for one device."""
    if a.named and b.named and a.requested_device != b.requested_device:
        return False
    if "any" not in (a.environment, b.environment) and a.environment != b.environment:
        return False
    ha, hb = image_hardware.get(a.image_id), image_hardware.get(b.image_id)
    return ha is None or hb is None or bool(ha & hb)


def _class(r: Waiting) -> tuple[str, str, int, str]:
    """Requests of one class can take exactly the same devices, and need the same image."""
    return (r.environment, r.requested_device, r.image_id, r.boot_config)


def _instant(r: Waiting, image_id: int | None, boot_config: str | None) -> bool:
    """Whether a pristine device holding this image is handed to ``r`` without re-imaging."""
    return image_id == r.image_id and same_boot_config(boot_config, r.boot_config)


def places(snap: Snapshot, now: str, time_scale: float = 1.0) -> dict[int, QueuePlace]:
    """Each waiting request's place and estimate.

    The estimate: the k-th suitable device to be ready for it, where k counts the requests
    ahead.  A device is ready for it when it is back (free ones now, claimed ones at their
    request's expiry, ones in a self-test or a warm imaging soon) plus the mean imaging time
    observed for the image and hardware type -- or nothing more for a pristine device holding
    the image, which is handed over as it is (the warm pool).  Requests are grouped into classes
    that can take the same devices, so a queue of thousands costs one pass over it and one pass
    over the devices per class."""
    queue = list(order(snap.waiting, snap.held))
    now_t = epoch(now)
    overall = sum(snap.imaging.values()) / len(snap.imaging) if snap.imaging else DEFAULT_IMAGING_SECONDS * time_scale
    samples = {_class(r): r for r in queue}
    classes = list(samples)
    compatible = {
        (a, b): _compatible(samples[a], samples[b], snap.image_hardware) for a in classes for b in classes
    }
    #: class -> (each suitable device's (ready time, back time, instant) soonest first, busy count, imaging)
    per_class: dict[tuple[str, str, int, str], tuple[list[tuple[float, float, bool]], int, float]] = {}
    for c, r in samples.items():
        suitable_free = [d for d in snap.free if can_take(r, d.environment, d.name, d.hardware_type_id, snap.image_hardware)]
        suitable_busy = [d for d in snap.busy if can_take(r, d.environment, d.name, d.hardware_type_id, snap.image_hardware)]
        hardware = {d.hardware_type_id for d in suitable_free + suitable_busy}
        means = [snap.imaging[(r.image_id, hw)] for hw in hardware if (r.image_id, hw) in snap.imaging]
        imaging = sum(means) / len(means) if means else overall
        slots: list[tuple[float, bool]] = [
            (now_t, d.pristine and _instant(r, d.image_id, d.boot_config)) for d in suitable_free
        ] + [
            (max(now_t, epoch(d.back)), False) if d.back else (now_t + overall, _instant(r, d.image_id, d.boot_config))
            for d in suitable_busy
        ]
        ready = sorted((back + (0.0 if instant else imaging), back, instant) for back, instant in slots)
        per_class[c] = (ready, len(suitable_busy), imaging)
    seen: dict[tuple[str, str, int, str], int] = defaultdict(int)
    out: dict[int, QueuePlace] = {}
    for i, r in enumerate(queue):
        c = _class(r)
        k = sum(n for other, n in seen.items() if compatible[(other, c)])
        seen[c] += 1
        ready, busy, imaging = per_class[c]
        if not ready:
            out[r.id] = QueuePlace(i + 1, k, None, "no device that could serve this request is in the pool now")
            continue
        if k < len(ready):
            eta, back, instant = ready[k]
            if back <= now_t:
                why = f"{k} ahead; a {'pristine device holding the image' if instant else 'suitable device'} is free"
            else:
                why = (f"{k} ahead; {busy} suitable devices busy, "
                       f"the one for this request due back at {apitime(dbnow_text(back))}")
        else:
            # More requests ahead than suitable devices: each device serves again after a round
            # (held about as long as an imaging, then imaged for the next request).
            rounds, rest = divmod(k, len(ready))
            first, _, instant = ready[rest]
            eta = first + rounds * imaging * 2 + (imaging if instant else 0.0)
            why = f"{k} ahead for {len(ready)} suitable devices"
        out[r.id] = QueuePlace(i + 1, k, dbnow_text(eta), why)
    return out


def dbnow_text(t: float) -> str:
    """Database time text for a POSIX time."""
    return dbtime(datetime.fromtimestamp(int(t), timezone.utc).replace(tzinfo=None))


def epoch(text: str) -> float:
    """POSIX time of database time text (UTC), milliseconds included."""
    parsed = parse_dbtime(text)
    if parsed is None:
        return 0.0
    fraction = text[19:20] == "." and text[20:23].isdigit()
    return float(calendar.timegm(parsed.timetuple())) + (int(text[20:23].ljust(3, "0")) / 1000 if fraction else 0.0)


# --- the matcher ------------------------------------------------------------------------------

#: offer(request id, device id, device name): fires True when the request took the device
Offer = Callable[[int, int, str], Awaitable[bool]]


class Matcher(Passes):
    """Runs :func:`plan` whenever something may have freed a device (:class:`Passes`), and
    offers the devices it gives this server's requests."""

    what = "request queue pass"

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        server_fqdn: str,
        offer: Offer,
        dead_before: Callable[[], str | None] = lambda: None,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.db = db
        self.clock = clock
        self.server_fqdn = server_fqdn
        self.offer = offer
        self.dead_before = dead_before
        self.time_scale = time_scale
        #: the latest pass's snapshot, and the places worked out from it (for the status call)
        self._snapshot: Snapshot | None = None
        self._places: dict[int, QueuePlace] | None = None

    async def step(self) -> bool:
        # Offers change the pool: look again until a pass offers nothing.
        return bool(await self.run_pass())

    async def run_pass(self) -> int:
        """One pass; how many devices were offered to this server's requests."""
        snap = await self.db.runInteraction(snapshot, self.dead_before(), True)
        self._snapshot, self._places = snap, None
        mine = [(r, d) for r, d in plan(snap) if r.server == self.server_fqdn]
        if not mine:
            return 0

        async def one(pair: tuple[Waiting, Free]) -> None:
            r, d = pair
            try:
                await self.offer(r.id, d.id, d.name)
            except Exception:
                log.failure("offering device {device} to request {id} failed", device=d.name, id=r.id)

        await each_bounded(mine, OFFER_CONCURRENCY, one)
        return len(mine)

    @property
    def places(self) -> dict[int, QueuePlace]:
        """Every waiting request's place as of the latest pass, worked out when first asked."""
        if self._places is None:
            snap = self._snapshot
            self._places = places(snap, dbnow(self.clock), self.time_scale) if snap and snap.waiting else {}
        return self._places

    async def read_places(self) -> dict[int, QueuePlace]:
        """Every waiting request's place, read now."""
        snap = await self.db.runInteraction(snapshot, self.dead_before(), True)
        return places(snap, dbnow(self.clock), self.time_scale) if snap.waiting else {}


def wakes_queue(event_type: str, data: Mapping[str, Any]) -> bool:
    """Events after which a waiting request may find a device."""
    if event_type == "device_state":
        return _says(data, "state", "ready")
    if event_type == "request_device":
        return data.get("device") is None
    return event_type == "device_environment" or (
        event_type == "request_state" and _says(data, "state", "finding_device"))


def _says(data: Mapping[str, Any], key: str, value: str) -> bool:
    """``data[key] == value``, asked of a journal's change without parsing it when it cannot be
    (:meth:`mozpool.db.changes.ChangeData.says`)."""
    says = getattr(data, "says", None)
    return bool(says(key, value)) if says is not None else data.get(key) == value



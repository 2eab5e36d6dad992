"""Device matching and the claim (spec state-machines.md 2.4), as database interactions.

Every function here takes a cursor and returns plain data, so the request machine can run them
with ``Database.runInteraction``.  The claim is a single INSERT into ``device_requests``; its two
unique indexes decide races between requests, never a read before the write.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from mozpool.db import catalog, changes
from mozpool.db import health as board_health
from mozpool.db.errors import Conflict
from mozpool.db.pool import Cursor
from mozpool.db.requests import claim_of, note_claim

#: Stands for boot_config text that does not parse: equal to nothing, not even itself.
_UNPARSABLE = object()


def parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _UNPARSABLE


def same_boot_config(a: str | None, b: str | None) -> bool:
    """Equal as parsed JSON: key order and spacing do not matter."""
    pa, pb = parsed(a), parsed(b)
    if pa is _UNPARSABLE or pb is _UNPARSABLE:
        return False
    return bool(pa == pb)


@dataclass(frozen=True)
class RequestInfo:
    id: int
    requested_device: str
    environment: str
    image: str
    image_id: int
    boot_config: str
    reusable: bool
    #: hardware types the image has a PXE config for; empty: any hardware
    hardware: tuple[int, ...] = ()
    priority: int = 50

    @property
    def named(self) -> bool:
        return self.requested_device != "any"


@dataclass(frozen=True)
class Candidate:
    id: int
    name: str


@dataclass(frozen=True)
class Assignment:
    """The device a request holds, as contacting LifeGuard needs it."""

    device_id: int
    name: str
    state: str
    image: str | None
    boot_config: str | None
    server: str
    imaging_result: str | None


@dataclass(frozen=True)
class Claimed:
    """What one selection did: the device claimed (None: nothing left to claim) and the
    devices lost to other requests on the way."""

    device: Candidate | None
    lost: tuple[str, ...] = ()
    #: the ids of the devices lost
    lost_ids: tuple[int, ...] = ()


_REQUEST_INFO = (
    "SELECT r.id, r.requested_device, r.environment, i.name, i.id, r.boot_config, i.can_reuse, r.priority,"
    " (SELECT GROUP_CONCAT(p.hardware_type_id) FROM image_pxe_configs p WHERE p.image_id = i.id)"
)
_REQUEST_INFO_FROM = " FROM requests r JOIN images i ON i.id = r.image_id WHERE r.id = ?"


def id_list(text: Any) -> list[int]:
    """The ids a GROUP_CONCAT gave (NULL: none)."""
    return [int(i) for i in str(text).split(",")] if text else []


def _info(row: tuple[Any, ...]) -> RequestInfo:
    hardware = tuple(sorted(id_list(row[8])))
    return RequestInfo(
        int(row[0]), row[1], row[2] or "any", row[3], int(row[4]), row[5] or "{}", bool(row[6]), hardware,
        int(row[7] if row[7] is not None else 50),
    )


def request_info(c: Cursor, request_id: int) -> RequestInfo | None:
    row = c.execute(_REQUEST_INFO + _REQUEST_INFO_FROM, (request_id,)).fetchone()
    return None if row is None else _info(row)


#: Requests waiting ahead of the request ``r`` (:func:`find_context`): those of live servers
#: waiting, unserved, with at least its priority, that could take the same devices -- a new
#: request does not jump them.  ``{live}`` is empty, or drops the dead servers' requests.
_WAITING_AHEAD = (
    "SELECT COUNT(*) FROM requests w LEFT JOIN device_requests wd ON wd.request_id = w.id"
    " WHERE w.state = 'finding_device' AND wd.request_id IS NULL AND w.id <> r.id AND w.priority >= r.priority"
    " AND (w.requested_device = 'any' OR w.requested_device = r.requested_device)"
    " AND (COALESCE(r.environment, 'any') = 'any' OR w.environment = 'any' OR w.environment = r.environment){live}"
)


@dataclass(frozen=True)
class Context:
    """What the look for a device reads first (:func:`find_context`)."""

    info: RequestInfo
    #: requests waiting ahead of this one for the same devices
    ahead: int


def find_context(c: Cursor, request_id: int, dead_before: str | None) -> Context | None:
    """:func:`request_info`, and in the same SELECT what the look for a device asks next, each
    of which was a statement of its own: the requests waiting ahead of it, its claim, the dead
    servers, whether any controller is suspect, the range of device ids to sample and whether
    any device is pristine with its image.  All but the first are noted in the interaction's
    memo (``c.known``), where the helpers that need them look first."""
    live = "" if dead_before is None else f" AND w.imaging_server_id NOT IN ({catalog.DEAD_SERVERS_SQL})"
    columns = [
        f"({_WAITING_AHEAD.format(live=live)})",
        "(SELECT dr.device_id FROM device_requests dr WHERE dr.request_id = r.id)",
        f"({board_health.SUSPECT_COUNT_SQL})",
        "(SELECT MIN(id) FROM devices)",
        "(SELECT MAX(id) FROM devices)",
        "(SELECT COUNT(*) FROM devices p WHERE p.pristine = 1 AND p.image_id = i.id)",
    ]
    params: list[Any] = [] if dead_before is None else [dead_before]
    if dead_before is not None:
        columns.append(f"(SELECT GROUP_CONCAT(id) FROM ({catalog.DEAD_SERVERS_SQL}) dead)")
        params.append(dead_before)
    row = c.execute(
        _REQUEST_INFO + "".join(", " + col for col in columns) + _REQUEST_INFO_FROM, [*params, request_id]
    ).fetchone()
    if row is None:
        return None
    info = _info(row)
    ahead, claimed, suspects, lo, hi, pristine = row[9:15]
    note_claim(c, request_id, None if claimed is None else int(claimed))
    board_health.note_suspects(c, int(suspects or 0))
    c.known[_DEVICE_IDS] = (lo, hi)
    c.known[(_PRISTINE, info.image_id)] = int(pristine or 0)
    if dead_before is not None:
        catalog.note_dead_servers(c, dead_before, id_list(row[15]))
    return Context(info, int(ahead or 0))


_AVAILABLE = (
    " FROM devices d LEFT JOIN device_requests dr ON dr.device_id = d.id"
    " WHERE d.state = 'ready' AND dr.device_id IS NULL"
)


def _available(request: RequestInfo, exclude: Sequence[int], dead_servers: Sequence[int] = ()) -> tuple[str, list[Any]]:
    """FROM/WHERE of the devices in state ``ready`` that no request holds, matching the
    request's name and environment, less ``exclude`` and the devices of dead servers."""
    sql, params = _AVAILABLE, []
    if dead_servers:
        sql += f" AND d.imaging_server_id NOT IN ({', '.join('?' * len(dead_servers))})"
        params.extend(dead_servers)
    if request.named:
        sql += " AND d.name = ?"
        params.append(request.requested_device)
    if request.environment != "any":
        sql += " AND d.environment = ?"
        params.append(request.environment)
    if request.hardware:
        sql += f" AND d.hardware_type_id IN ({', '.join('?' * len(request.hardware))})"
        params.extend(request.hardware)
    if exclude:
        sql += f" AND d.id NOT IN ({', '.join('?' * len(exclude))})"
        params.extend(exclude)
    return sql, params


def _nth(c: Cursor, where: str, params: list[Any], n: int) -> Candidate | None:
    row = c.execute(f"SELECT d.id, d.name{where} ORDER BY d.id LIMIT 1 OFFSET ?", [*params, n]).fetchone()
    return None if row is None else Candidate(int(row[0]), row[1])


#: Random ids tried before counting; with most devices free the first one usually does.
SAMPLE_TRIES = 8
#: The interaction's memo of (MIN(id), MAX(id)) of devices, and of how many devices are
#: pristine with an image (keyed with the image's id): :func:`find_context` reads them.
_DEVICE_IDS = "device_ids"
_PRISTINE = "pristine"


def pick(
    c: Cursor, request: RequestInfo, draw: float, exclude: Sequence[int] = (), dead_servers: Sequence[int] = ()
) -> Candidate | None:
    """One available device, uniformly at random; for a reusable image, among those already
    holding it with an equal boot_config when there is at least one.  Every choice follows
    from ``draw`` (a float in [0, 1) from the request machine's seedable generator).

    Each set is first sampled by rejection -- a random id, looked up by primary key and kept if
    it belongs -- which is uniform over the set and costs one indexed read when most devices
    are free.  After :data:`SAMPLE_TRIES` misses the set is counted and indexed in SQL, still
    uniform, so a small or empty set costs a few scans, never a fetch of every device.
    Boot configs are compared as parsed JSON."""
    rng = random.Random(draw)
    where, params = _available(request, exclude, dead_servers)
    # the id range to sample; one name is one indexed row either way
    ids = _device_ids(c) if not request.named and SAMPLE_TRIES else None
    if request.reusable:
        held = _sample(c, request, where, params, rng, ids, preferred=True)
        if held is None:
            held = _count_held(c, request, where, params, rng.random())
        if held is not None:
            return held
    elif c.known.get((_PRISTINE, request.image_id)) != 0:
        # A pristine device (imaged ahead of demand, never handed out) needs no re-imaging.
        for row in c.execute(
            f"SELECT d.id, d.name, d.boot_config{where} AND d.pristine = 1 AND d.image_id = ? ORDER BY d.id",
            [*params, request.image_id],
        ).fetchall():
            if same_boot_config(row[2], request.boot_config):
                return Candidate(int(row[0]), row[1])
    found = _sample(c, request, where, params, rng, ids, preferred=False)
    if found is not None:
        return found
    total = int(c.scalar(f"SELECT COUNT(*){where}", params) or 0)
    return _nth(c, where, params, int(rng.random() * total)) if total else None


def _device_ids(c: Cursor) -> tuple[Any, Any]:
    """(MIN(id), MAX(id)) of devices, read once per interaction (:func:`find_context` notes it
    with the look's other reads).  SQLite answers MIN or MAX alone from the index, but both in
    one SELECT by a scan of the table; MySQL answers both from the index."""
    if _DEVICE_IDS not in c.known:
        if c.mysql:
            c.known[_DEVICE_IDS] = c.execute("SELECT MIN(id), MAX(id) FROM devices").fetchone() or (None, None)
        else:
            c.known[_DEVICE_IDS] = (c.scalar("SELECT MIN(id) FROM devices"), c.scalar("SELECT MAX(id) FROM devices"))
    return c.known[_DEVICE_IDS]  # type: ignore[no-any-return]


def _holds(request: RequestInfo, image_id: Any, boot_config: str | None) -> bool:
    return image_id is not None and int(image_id) == request.image_id and same_boot_config(
        boot_config, request.boot_config
    )


def _sample(
    c: Cursor, request: RequestInfo, where: str, params: list[Any], rng: random.Random,
    ids: tuple[Any, ...] | None, preferred: bool,
) -> Candidate | None:
    """Up to SAMPLE_TRIES random ids in ``ids`` (MIN, MAX); None: not sampling."""
    lo, hi = ids or (None, None)
    if lo is None:
        return None
    for _ in range(SAMPLE_TRIES):
        row = c.execute(
            f"SELECT d.id, d.name, d.image_id, d.boot_config{where} AND d.id = ?",
            [*params, rng.randint(int(lo), int(hi))],
        ).fetchone()
        if row is not None and (not preferred or _holds(request, row[2], row[3])):
            return Candidate(int(row[0]), row[1])
    return None


def _count_held(c: Cursor, request: RequestInfo, where: str, params: list[Any], draw: float) -> Candidate | None:
    """Uniformly by counting among the devices holding the image with an equal boot_config:
    those with the request's own text are counted in SQL; the other texts (usually few
    devices) are grouped, and each distinct text parsed once."""
    held, held_params = where + " AND d.image_id = ?", [*params, request.image_id]
    same_text, holding = c.execute(
        f"SELECT SUM(CASE WHEN d.boot_config = ? THEN 1 ELSE 0 END), COUNT(*){held}",
        [request.boot_config, *held_params],
    ).fetchone() or (0, 0)
    groups: list[tuple[str | None, int]] = []
    if same_text and same_boot_config(request.boot_config, request.boot_config):
        groups.append((request.boot_config, int(same_text)))
    if int(holding or 0) > int(same_text or 0):
        others = c.execute(
            f"SELECT d.boot_config, COUNT(*){held} AND (d.boot_config IS NULL OR d.boot_config <> ?)"
            " GROUP BY d.boot_config",
            [*held_params, request.boot_config],
        ).fetchall()
        groups += [(text, int(n)) for text, n in others if same_boot_config(text, request.boot_config)]
    groups.sort(key=lambda g: (g[0] is not None, g[0] or ""))
    k = int(draw * sum(n for _, n in groups))
    for text, n in groups:
        if k < n:
            if text is None:
                return _nth(c, held + " AND d.boot_config IS NULL", held_params, k)
            return _nth(c, held + " AND d.boot_config = ?", [*held_params, text], k)
        k -= n
    return None


def claim(c: Cursor, request_id: int, device_id: int, now: str, stamp: bool = True) -> None:
    """Claim the device for the request; :class:`mozpool.db.errors.Conflict` if it is taken.
    ``stamp`` False: the caller writes the request's ``assigned_at`` with its state."""
    c.execute(
        "INSERT INTO device_requests (request_id, device_id, imaging_result) VALUES (?, ?, NULL)",
        (request_id, device_id),
    )
    if stamp:
        c.execute("UPDATE requests SET assigned_at = ? WHERE id = ?", (now, request_id))
    _claimed(c, request_id, device_id, now)


def _claimed(c: Cursor, request_id: int, device_id: int, now: str) -> None:
    """What follows a claim's INSERT: the interaction's memo, and the journal."""
    note_claim(c, request_id, device_id)
    changes.record(c, changes.REQUEST_DEVICE, now, request_id=request_id, device_id=device_id)


def claim_offered(c: Cursor, request_id: int, device_id: int, now: str) -> bool:
    """Claim a device the queue offered, if it is still ``ready``; False if it is not, or if
    another request claimed it first."""
    if c.scalar("SELECT state FROM devices WHERE id = ?", (device_id,)) != "ready":
        return False
    clear_claim(c, request_id, now)
    try:
        claim(c, request_id, device_id, now)
    except Conflict:
        return False
    return True


# --- first looks in bulk (mozpool.broker.intake) --------------------------------------------


@dataclass(frozen=True)
class Fresh:
    """A request just inserted in this transaction, as its first look in bulk sees it."""

    info: RequestInfo
    #: the look's random draws (:data:`CLAIM_TRIES` floats in [0, 1))
    draws: tuple[float, ...]


#: Random ids sampled per request by a look in bulk: as many as :func:`pick` tries.
BULK_SAMPLES = SAMPLE_TRIES


def claim_fresh(c: Cursor, fresh: Sequence[Fresh], now: str, dead_before: str | None) -> dict[int, Claimed]:
    """The first looks of requests just inserted, in a few statements for all of them: what
    they share read once, random ids sampled for all in one SELECT, and the claims made in one
    guarded INSERT (a device another transaction took first fails it: then each is claimed
    alone, and one lost is named as lost).  The requests it claimed a device for; each of the
    others needs its own look (:func:`find_now`): one waiting behind others, one with a
    reusable image whose samples hold another, a pristine device to prefer, or no sample left.
    ``assigned_at`` is the caller's to write (see :func:`claim`)."""
    todo = [f for f in fresh if not f.info.named]
    if not todo:
        return {}
    keys = sorted({(f.info.priority, f.info.environment) for f in todo})
    images = sorted({f.info.image_id for f in todo})
    live = "" if dead_before is None else f" AND w.imaging_server_id NOT IN ({catalog.DEAD_SERVERS_SQL})"
    columns = [f"({board_health.SUSPECT_COUNT_SQL})", "(SELECT MIN(id) FROM devices)", "(SELECT MAX(id) FROM devices)"]
    params: list[Any] = []
    for priority, environment in keys:  # _WAITING_AHEAD for an `any` request of this key
        columns.append(
            "(SELECT COUNT(*) FROM requests w LEFT JOIN device_requests wd ON wd.request_id = w.id"
            " WHERE w.state = 'finding_device' AND wd.request_id IS NULL AND w.priority >= ?"
            " AND w.requested_device = 'any'"
            + ("" if environment == "any" else " AND (w.environment = 'any' OR w.environment = ?)") + live + ")")
        params += [priority] + ([] if environment == "any" else [environment]) + ([] if dead_before is None else [dead_before])
    for image_id in images:
        columns.append("(SELECT COUNT(*) FROM devices p WHERE p.pristine = 1 AND p.image_id = ?)")
        params.append(image_id)
    if dead_before is not None:
        columns.append(f"(SELECT GROUP_CONCAT(id) FROM ({catalog.DEAD_SERVERS_SQL}) dead)")
        params.append(dead_before)
    row = c.execute("SELECT " + ", ".join(columns), params).fetchone()
    assert row is not None
    suspects, lo, hi = int(row[0] or 0), row[1], row[2]
    ahead = dict(zip(keys, (int(n or 0) for n in row[3:3 + len(keys)])))
    pristine = dict(zip(images, (int(n or 0) for n in row[3 + len(keys):3 + len(keys) + len(images)])))
    dead = id_list(row[-1]) if dead_before is not None else []
    if dead_before is not None:
        catalog.note_dead_servers(c, dead_before, dead)
    board_health.note_suspects(c, suspects)
    c.known[_DEVICE_IDS] = (lo, hi)
    todo = [f for f in todo if not ahead[(f.info.priority, f.info.environment)] and not pristine[f.info.image_id]]
    if not todo or lo is None:
        return {}
    # Each request's own random ids, in order -- the first that :func:`pick` would try with the
    # same draw: a sample is uniform over the devices it may take.
    wanted = {f.info.id: _sampled_ids(f.draws[0], int(lo), int(hi)) for f in todo}
    ids = sorted({i for sampled in wanted.values() for i in sampled})
    where = _AVAILABLE + f" AND d.id IN ({', '.join('?' * len(ids))})"
    if dead:
        where += f" AND d.imaging_server_id NOT IN ({', '.join('?' * len(dead))})"
    rows = c.execute(f"SELECT d.id, d.name, d.image_id, d.boot_config, d.environment, d.hardware_type_id{where}",
                     [*ids, *dead]).fetchall()
    free = {int(r[0]): r for r in rows}
    for device_id in board_health.avoided_device_ids(c):
        free.pop(device_id, None)
    chosen: list[tuple[int, Candidate]] = []
    for f in todo:
        for device_id in wanted[f.info.id]:
            r = free.get(device_id)
            if r is None or not _fits(f.info, r):
                continue
            chosen.append((f.info.id, Candidate(device_id, r[1])))
            del free[device_id]
            break
    return claim_many(c, chosen, now)


def _sampled_ids(draw: float, lo: int, hi: int) -> list[int]:
    rng = random.Random(draw)
    return [rng.randint(lo, hi) for _ in range(BULK_SAMPLES)]


def _fits(info: RequestInfo, row: Sequence[Any]) -> bool:
    """Whether a free device (id, name, image, boot_config, environment, hardware type) suits an
    ``any`` request; a reusable image takes only a device holding it with its boot_config."""
    if info.environment != "any" and row[4] != info.environment:
        return False
    if info.hardware and int(row[5]) not in info.hardware:
        return False
    return not info.reusable or _holds(info, row[2], row[3])


def insert_claims(c: Cursor, pairs: Sequence[tuple[int, int]]) -> None:
    """(request, device) claims in one INSERT: Conflict, and none made, if any is taken."""
    c.execute("INSERT INTO device_requests (request_id, device_id, imaging_result) VALUES "
              + ", ".join(["(?, ?, NULL)"] * len(pairs)), [v for pair in pairs for v in pair])


def claim_many(c: Cursor, chosen: Sequence[tuple[int, Candidate]], now: str) -> dict[int, Claimed]:
    """Claim each (request, device) in one guarded INSERT.  A device another transaction took
    meanwhile fails it (Conflict): MySQL names the device, which is lost to its request, and
    the rest are claimed again together; a conflict that names none makes each claim alone.
    ``assigned_at`` is the caller's to write."""
    out: dict[int, Claimed] = {}
    chosen = list(chosen)
    while chosen:
        try:
            insert_claims(c, [(request_id, device.id) for request_id, device in chosen])
        except Conflict as e:
            taken = _taken_device(e)
            if taken is None or taken not in {device.id for _, device in chosen}:
                return {**out, **_claim_each(c, chosen, now)}
            out.update({request_id: Claimed(None, (device.name,), (device.id,))
                        for request_id, device in chosen if device.id == taken})
            chosen = [(request_id, device) for request_id, device in chosen if device.id != taken]
            continue
        for request_id, device in chosen:
            _claimed(c, request_id, device.id, now)
            out[request_id] = Claimed(device)
        break
    return out


#: MySQL's duplicate key error on a claimed device ("Duplicate entry '12' for key
#: 'device_requests_device'"); SQLite names no value (and, one writer at a time, meets none).
_DUPLICATE_DEVICE = re.compile(r"Duplicate entry '(\d+)' for key '(?:[^']*\.)?device_requests_device'")


def _taken_device(conflict: Conflict) -> int | None:
    found = _DUPLICATE_DEVICE.search(str(conflict))
    return None if found is None else int(found[1])


def _claim_each(c: Cursor, chosen: Sequence[tuple[int, Candidate]], now: str) -> dict[int, Claimed]:
    out: dict[int, Claimed] = {}
    for request_id, device in chosen:
        try:
            claim(c, request_id, device.id, now, stamp=False)
        except Conflict:
            out[request_id] = Claimed(None, (device.name,), (device.id,))
        else:
            out[request_id] = Claimed(device)
    return out


@dataclass(frozen=True)
class FindOutcome:
    """What looking for a device found: a claim, a reason to stop, or a place in the queue."""

    claimed: Claimed = Claimed(None)
    #: another open request holds the named device
    holder: int | None = None
    #: (server, last seen) when the named device's imaging server is dead
    unreachable: tuple[str, str] | None = None
    #: why the named device cannot serve (it is in a failed state)
    broken: str | None = None
    #: why nothing in the pool could ever serve the request
    impossible: str | None = None
    #: requests waiting ahead of this one for the same devices
    queued_behind: int = 0


def find_now(
    c: Cursor, request_id: int, draws: Sequence[float], now: str, dead_before: str | None = None, stamp: bool = True,
    lost: Sequence[int] = (),
) -> tuple[RequestInfo, FindOutcome]:
    """The entry of ``finding_device``: drop any old claim, stop for a held, dead, failed or
    impossible request, and else claim a device at once -- unless requests are waiting ahead
    for the same devices, when this one joins the queue behind them.  ``stamp``: as for
    :func:`claim`; ``lost``: devices the request already lost in this transaction."""
    context = find_context(c, request_id, dead_before)
    assert context is not None, "the request machine loaded this row"
    info = context.info
    clear_claim(c, info.id, now)
    if info.named:
        other = holder(c, info.requested_device, info.id)
        if other is not None:
            return info, FindOutcome(holder=other)
    dead = catalog.dead_server_ids(c, dead_before) if dead_before is not None else []
    if info.named:
        row = c.execute(
            "SELECT s.id, s.fqdn, s.last_seen, d.state FROM devices d JOIN imaging_servers s"
            " ON s.id = d.imaging_server_id WHERE d.name = ?", (info.requested_device,)).fetchone()
        if row is not None and int(row[0]) in dead:
            return info, FindOutcome(unreachable=(row[1], str(row[2])[:19]))
        if row is not None and str(row[3]).startswith("failed_"):
            return info, FindOutcome(broken=f"device {info.requested_device} is in state {row[3]}")
    ahead = context.ahead
    queued = bool(ahead) and not free_for_all(c, info, dead, ahead)
    claimed = Claimed(None) if queued else pick_and_claim(c, info, draws, now, dead, stamp, lost)
    if claimed.device is not None:
        return info, FindOutcome(claimed=claimed)
    # Nothing claimed: asked only now, since a claim proves the request possible.
    why = impossible(c, info)
    if why is not None:
        return info, FindOutcome(impossible=why)
    if queued:
        return info, FindOutcome(queued_behind=ahead)
    return info, FindOutcome(claimed=claimed)


def impossible(c: Cursor, info: RequestInfo) -> str | None:
    """Why no device in the pool, in any state, could serve the request; None if one could."""
    where, params = ["1 = 1"], []
    if info.named:
        where.append("d.name = ?")
        params.append(info.requested_device)
    if info.environment != "any":
        where.append("d.environment = ?")
        params.append(info.environment)
        if c.scalar("SELECT 1 FROM devices d WHERE " + " AND ".join(where) + " LIMIT 1", params) is None:
            return f"no device is in environment {info.environment}"
    if info.hardware:
        where.append(f"d.hardware_type_id IN ({', '.join('?' * len(info.hardware))})")
        params.extend(info.hardware)
        if c.scalar("SELECT 1 FROM devices d WHERE " + " AND ".join(where) + " LIMIT 1", params) is None:
            if info.named:
                return f"device {info.requested_device} cannot take image {info.image}: no PXE config for its hardware"
            return f"no device in the pool can take image {info.image}: no PXE config for their hardware"
    return None


def free_for_all(c: Cursor, info: RequestInfo, dead_servers: Sequence[int], ahead: int) -> bool:
    """Whether more devices this request could use are free than requests wait ahead of it:
    then taking one at once wrongs nobody (a burst of requests on a large pool is served
    without going through the queue one pass at a time)."""
    where, params = _available(info, (), dead_servers)
    found = c.scalar(f"SELECT COUNT(*) FROM (SELECT 1{where} LIMIT ?) enough", [*params, ahead + 1])
    return int(found or 0) > ahead


def pick_and_claim(
    c: Cursor, request: RequestInfo, draws: Sequence[float], now: str, dead_servers: Sequence[int] = (),
    stamp: bool = True, lost_before: Sequence[int] = (),
) -> Claimed:
    """Drop the request's old claim, then pick and claim a device, one ``draw`` per try.

    The INSERT of the claim is the only guard: a device another request claimed first makes it
    fail (Conflict), and the next try picks among the rest at once (bmm-protocols 6.4)."""
    clear_claim(c, request.id, now)
    # Fault isolation (issue 15): devices behind a suspect power controller are passed by.
    avoided = board_health.avoided_device_ids(c)
    lost: list[Candidate] = []
    for draw in draws:
        device = pick(c, request, draw, [*avoided, *lost_before, *(d.id for d in lost)], dead_servers)
        if device is None:
            break
        try:
            claim(c, request.id, device.id, now, stamp)
        except Conflict:
            lost.append(device)
            continue
        return Claimed(device, tuple(d.name for d in lost))
    return Claimed(None, tuple(d.name for d in lost))


def clear_claim(c: Cursor, request_id: int, now: str) -> None:
    """Drop the request's claim.  Looked up first (once per interaction, :func:`claim_of`): on
    InnoDB a DELETE that matches nothing locks the index gap, which an INSERT of a claim in the
    same transaction can deadlock on."""
    if claim_of(c, request_id) is not None:
        c.execute("DELETE FROM device_requests WHERE request_id = ?", (request_id,))
        note_claim(c, request_id, None)
        changes.record(c, changes.REQUEST_DEVICE, now, request_id=request_id, device_id=None)


def device_state(c: Cursor, name: str) -> str | None:
    return c.scalar("SELECT state FROM devices WHERE name = ?", (name,))


def holder(c: Cursor, device_name: str, request_id: int) -> int | None:
    """The id of another request that holds the named device, if any."""
    found = c.scalar(
        "SELECT dr.request_id FROM device_requests dr JOIN devices d ON d.id = dr.device_id"
        " WHERE d.name = ? AND dr.request_id <> ?",
        (device_name, request_id),
    )
    return None if found is None else int(found)


def assignment(c: Cursor, request_id: int) -> Assignment | None:
    row = c.execute(
        "SELECT d.id, d.name, d.state, i.name, d.boot_config, s.fqdn, dr.imaging_result"
        " FROM device_requests dr JOIN devices d ON d.id = dr.device_id"
        " JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " LEFT JOIN images i ON i.id = d.image_id"
        " WHERE dr.request_id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    return Assignment(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6])


def assignment_and_request(c: Cursor, request_id: int) -> tuple[Assignment | None, RequestInfo]:
    info = request_info(c, request_id)
    assert info is not None, "the request machine loaded this row"
    return assignment(c, request_id), info


def imaging_result(c: Cursor, request_id: int) -> str | None:
    """The result LifeGuard stored on this request's claim (None: none yet, or no claim)."""
    return c.scalar("SELECT imaging_result FROM device_requests WHERE request_id = ?", (request_id,))

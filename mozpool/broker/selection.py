"""Device matching and the claim (spec state-machines.md 2.4), as database interactions.

Every function here takes a cursor and returns plain data, so the request machine can run them
with ``Database.runInteraction``.  The claim is a single INSERT into ``device_requests``; its two
unique indexes decide races between requests, never a read before the write.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Sequence

from mozpool.db import catalog, changes
from mozpool.db.errors import Conflict
from mozpool.db.pool import Cursor

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
    #: (server, last seen) when the named device's imaging server is dead
    unreachable: tuple[str, str] | None = None


def request_info(c: Cursor, request_id: int) -> RequestInfo | None:
    row = c.execute(
        "SELECT r.id, r.requested_device, r.environment, i.name, i.id, r.boot_config, i.can_reuse"
        " FROM requests r JOIN images i ON i.id = r.image_id WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    return RequestInfo(
        int(row[0]), row[1], row[2] or "any", row[3], int(row[4]), row[5] or "{}", bool(row[6])
    )


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
    if exclude:
        sql += f" AND d.id NOT IN ({', '.join('?' * len(exclude))})"
        params.extend(exclude)
    return sql, params


def _nth(c: Cursor, where: str, params: list[Any], n: int) -> Candidate | None:
    row = c.execute(f"SELECT d.id, d.name{where} ORDER BY d.id LIMIT 1 OFFSET ?", [*params, n]).fetchone()
    return None if row is None else Candidate(int(row[0]), row[1])


#: Random ids tried before counting; with most devices free the first one usually does.
SAMPLE_TRIES = 8


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
    ids = None  # the id range to sample; one name is one indexed row either way
    if not request.named and SAMPLE_TRIES:
        ids = c.execute("SELECT MIN(id), MAX(id) FROM devices").fetchone()
    if request.reusable:
        held = _sample(c, request, where, params, rng, ids, preferred=True)
        if held is None:
            held = _count_held(c, request, where, params, rng.random())
        if held is not None:
            return held
    found = _sample(c, request, where, params, rng, ids, preferred=False)
    if found is not None:
        return found
    total = int(c.scalar(f"SELECT COUNT(*){where}", params) or 0)
    return _nth(c, where, params, int(rng.random() * total)) if total else None


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


def claim(c: Cursor, request_id: int, device_id: int, now: str) -> None:
    """Claim the device for the request; :class:`mozpool.db.errors.Conflict` if it is taken."""
    c.execute(
        "INSERT INTO device_requests (request_id, device_id, imaging_result) VALUES (?, ?, NULL)",
        (request_id, device_id),
    )
    changes.record(c, changes.REQUEST_DEVICE, now, request_id=request_id, device_id=device_id)


def find(
    c: Cursor, request_id: int, draws: Sequence[float], now: str, dead_before: str | None = None
) -> tuple[RequestInfo, Claimed]:
    """The request as selection sees it, and :func:`pick_and_claim` for it; devices of servers
    silent since before ``dead_before`` are never picked (mozpool.liveness)."""
    info = request_info(c, request_id)
    assert info is not None, "the request machine loaded this row"
    dead = catalog.dead_server_ids(c, dead_before) if dead_before is not None else []
    if dead and info.named:
        row = c.execute(
            "SELECT s.id, s.fqdn, s.last_seen FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
            " WHERE d.name = ?", (info.requested_device,)).fetchone()
        if row is not None and int(row[0]) in dead:
            clear_claim(c, info.id, now)
            return info, Claimed(None, unreachable=(row[1], str(row[2])[:19]))
    return info, pick_and_claim(c, info, draws, now, dead)


def pick_and_claim(
    c: Cursor, request: RequestInfo, draws: Sequence[float], now: str, dead_servers: Sequence[int] = ()
) -> Claimed:
    """Drop the request's old claim, then pick and claim a device, one ``draw`` per try.

    The INSERT of the claim is the only guard: a device another request claimed first makes it
    fail (Conflict), and the next try picks among the rest at once (bmm-protocols 6.4)."""
    clear_claim(c, request.id, now)
    lost: list[Candidate] = []
    for draw in draws:
        device = pick(c, request, draw, [d.id for d in lost], dead_servers)
        if device is None:
            break
        try:
            claim(c, request.id, device.id, now)
        except Conflict:
            lost.append(device)
            continue
        return Claimed(device, tuple(d.name for d in lost))
    return Claimed(None, tuple(d.name for d in lost))


def clear_claim(c: Cursor, request_id: int, now: str) -> None:
    """Drop the request's claim.  Looked up first: on InnoDB a DELETE that matches nothing
    locks the index gap, which an INSERT of a claim in the same transaction can deadlock on."""
    if c.scalar("SELECT 1 FROM device_requests WHERE request_id = ?", (request_id,)) is not None:
        c.execute("DELETE FROM device_requests WHERE request_id = ?", (request_id,))
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

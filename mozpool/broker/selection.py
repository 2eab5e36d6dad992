"""Device matching and the claim (spec state-machines.md 2.4), as database interactions.

Every function here takes a cursor and returns plain data, so the request machine can run them
with ``Database.runInteraction``.  The claim is a single INSERT into ``device_requests``; its two
unique indexes decide races between requests, never a read before the write.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

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
    boot_config: str
    reusable: bool

    @property
    def named(self) -> bool:
        return self.requested_device != "any"


@dataclass(frozen=True)
class Candidate:
    id: int
    name: str
    image: str | None
    boot_config: str | None


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


def request_info(c: Cursor, request_id: int) -> RequestInfo | None:
    row = c.execute(
        "SELECT r.id, r.requested_device, r.environment, i.name, r.boot_config, i.can_reuse"
        " FROM requests r JOIN images i ON i.id = r.image_id WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    return RequestInfo(int(row[0]), row[1], row[2] or "any", row[3], row[4] or "{}", bool(row[5]))


def available_devices(c: Cursor, request: RequestInfo) -> list[Candidate]:
    """Devices in state ``ready`` that no request holds, matching name and environment."""
    sql = (
        "SELECT d.id, d.name, i.name, d.boot_config FROM devices d"
        " LEFT JOIN images i ON i.id = d.image_id"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id"
        " WHERE d.state = 'ready' AND dr.device_id IS NULL"
    )
    params: list[Any] = []
    if request.named:
        sql += " AND d.name = ?"
        params.append(request.requested_device)
    if request.environment != "any":
        sql += " AND d.environment = ?"
        params.append(request.environment)
    rows = c.execute(sql + " ORDER BY d.name", params).fetchall()
    return [Candidate(int(r[0]), r[1], r[2], r[3]) for r in rows]


def choose(candidates: list[Candidate], request: RequestInfo, rng: random.Random) -> Candidate:
    """Uniformly among the candidates; for a reusable image, among those already holding it with
    an equal boot_config when there is at least one."""
    pool = candidates
    if request.reusable:
        holding = [
            d for d in candidates
            if d.image == request.image and same_boot_config(d.boot_config, request.boot_config)
        ]
        if holding:
            pool = holding
    return pool[rng.randrange(len(pool))]


def claim(c: Cursor, request_id: int, device_id: int) -> None:
    """Claim the device for the request; :class:`mozpool.db.errors.Conflict` if it is taken."""
    c.execute(
        "INSERT INTO device_requests (request_id, device_id, imaging_result) VALUES (?, ?, NULL)",
        (request_id, device_id),
    )


def clear_claim(c: Cursor, request_id: int) -> None:
    c.execute("DELETE FROM device_requests WHERE request_id = ?", (request_id,))


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


def imaging_result(c: Cursor, request_id: int) -> str | None:
    """The result LifeGuard stored on this request's claim (None: none yet, or no claim)."""
    return c.scalar("SELECT imaging_result FROM device_requests WHERE request_id = ?", (request_id,))

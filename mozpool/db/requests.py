"""Request rows: lists, details and owners (the read side; the machine writes them)."""

from __future__ import annotations

from typing import Any, Sequence

from mozpool.serverurl import base_url
from mozpool.db.pool import Cursor, Database
from mozpool.timeutil import apitime

#: Request ids are BIGINT: anything larger names no request.
MAX_REQUEST_ID = 2**63 - 1


def list_requests(db: Database, include_closed: bool = False) -> Any:
    def q(c: Cursor) -> list[dict[str, Any]]:
        where = "" if include_closed else " WHERE r.state <> 'closed'"
        rows = c.execute(
            "SELECT r.id, s.fqdn, r.assignee, r.boot_config, r.state, r.expires, r.requested_device,"
            " r.environment, d.name, d.state, r.priority"
            " FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
            " LEFT JOIN device_requests dr ON dr.request_id = r.id"
            " LEFT JOIN devices d ON d.id = dr.device_id" + where + " ORDER BY r.id"
        ).fetchall()
        return [
            {
                "id": int(r[0]),
                "imaging_server": r[1],
                "assignee": r[2],
                "boot_config": r[3] or "{}",
                "state": r[4],
                "expires": apitime(r[5]),
                "requested_device": r[6],
                "environment": r[7],
                "assigned_device": r[8] or "",
                "device_state": r[9] or "",
                "device_status": r[9] or "",
                "priority": int(r[10]),
            }
            for r in rows
        ]

    return db.runInteraction(q)


def claim_of(c: Cursor, request_id: int) -> int | None:
    """The id of the device the request holds (None: none), read once per interaction: what
    the claim's writers in it (:func:`note_claim`) did is known without asking again."""
    key = ("claim", request_id)
    if key not in c.known:
        found = c.scalar("SELECT device_id FROM device_requests WHERE request_id = ?", (request_id,))
        c.known[key] = None if found is None else int(found)
    return c.known[key]  # type: ignore[no-any-return]


def note_claim(c: Cursor, request_id: int, device_id: int | None) -> None:
    """The interaction has just written the request's claim (``device_id``, None: dropped)."""
    c.known[("claim", request_id)] = device_id


def get_request(c: Cursor, request_id: int) -> dict[str, Any] | None:
    """The request object of the API (with ``url``) plus ``state`` and ``imaging_server``."""
    if request_id > MAX_REQUEST_ID:
        return None
    row = c.execute(
        "SELECT r.id, r.requested_device, r.assignee, r.expires, r.environment, i.name, r.boot_config,"
        " d.name, s.fqdn, r.state, r.priority, r.queue_timeout"
        " FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
        " JOIN images i ON i.id = r.image_id"
        " LEFT JOIN device_requests dr ON dr.request_id = r.id"
        " LEFT JOIN devices d ON d.id = dr.device_id"
        " WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    return None if row is None else _request_object(row)


def _request_object(row: Sequence[Any]) -> dict[str, Any]:
    """:func:`get_request`'s object from (id, requested_device, assignee, expires, environment,
    image, boot_config, assigned device, server, state, priority, queue_timeout)."""
    return {
        "id": int(row[0]),
        "requested_device": row[1],
        "assignee": row[2],
        "expires": apitime(row[3]),
        "environment": row[4],
        "image": row[5],
        "boot_config": row[6] or "{}",
        "assigned_device": row[7] or "",
        "url": f"{base_url(row[8])}/api/request/{int(row[0])}/",
        "imaging_server": row[8],
        "state": row[9],
        "priority": int(row[10]),
        "queue_timeout": int(row[11]),
    }


def new_request(
    request_id: int, server_fqdn: str, device: str, spec: Any, expires: str, assigned: str
) -> dict[str, Any]:
    """What :func:`get_request` reads (all but ``state``) of a request just created from ``spec`` (a
    :class:`mozpool.broker.interfaces.RequestSpec`) and holding ``assigned`` ("": nothing),
    as the creation knows it, without reading it back."""
    found = _request_object((request_id, device, spec.assignee, expires, spec.environment or "any", spec.image,
                             spec.boot_config, assigned, server_fqdn, None, spec.priority, spec.queue_timeout))
    del found["state"]
    return found


def public_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request object exactly as the API shows it (3.4)."""
    keys = ("id", "requested_device", "assignee", "expires", "environment", "image", "boot_config",
            "assigned_device", "url", "priority", "queue_timeout")
    return {k: request[k] for k in keys}

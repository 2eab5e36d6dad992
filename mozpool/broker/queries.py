"""The MozPool layer's SQL on the ``requests`` table: creating a request, renewing it, and finding
this server's expired ones (spec state-machines.md 2.6). Device matching and claiming are in
:mod:`mozpool.broker.selection`; the machine's row itself is read and written by
:mod:`mozpool.statemachine`.
"""

from __future__ import annotations

from mozpool.broker.interfaces import RequestSpec
from mozpool.db import changes, history, logs
from mozpool.db.catalog import server_id
from mozpool.db.pool import Cursor


def insert_request(
    c: Cursor, server_fqdn: str, device: str, spec: RequestSpec, expires: str, now: str, message: str,
    created: str | None = None,
) -> int:
    """A new request in state ``new`` owned by ``server_fqdn``, journalled and logged with
    ``message``; its id. ValueError for an unknown image."""
    image_id = c.scalar("SELECT id FROM images WHERE name = ?", (spec.image,))
    if image_id is None:
        raise ValueError(f"unknown image {spec.image}")
    c.execute(
        "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id,"
        " boot_config, state, state_counters, state_timeout, environment, created_by, priority, queue_timeout,"
        " created)"
        " VALUES (?, ?, ?, ?, ?, ?, 'new', '{}', NULL, ?, ?, ?, ?, ?)",
        (server_id(c, server_fqdn), device, spec.assignee, expires, image_id, spec.boot_config,
         spec.environment or "any", spec.created_by, spec.priority, spec.queue_timeout, created or now),
    )
    request_id = c.lastrowid
    changes.record(c, changes.REQUEST_STATE, now, request_id=request_id, state="new", old_state=None)
    logs.add_log(c, "request", request_id, "statemachine", message, now)
    history.record(c, history.Entry(  # the first entry of the request's history (issue 15)
        history.REQUEST, request_id, now, None, "new", "created", server_fqdn,
        {"requested_device": device, "image": spec.image, "environment": spec.environment or "any"},
    ))
    return request_id


def set_expires(c: Cursor, request_id: int, expires: str) -> None:
    c.execute("UPDATE requests SET expires = ? WHERE id = ?", (expires, request_id))


def expired_request_ids(c: Cursor, server_fqdn: str, now: str) -> list[int]:
    """This server's requests past ``expires`` that are neither closed nor failed, oldest first."""
    rows = c.execute(
        "SELECT r.id FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
        " WHERE s.fqdn = ? AND r.expires < ? AND r.state <> 'closed'"
        " AND SUBSTR(r.state, 1, 7) <> 'failed_' ORDER BY r.id",
        (server_fqdn, now),
    ).fetchall()
    return [int(row[0]) for row in rows]

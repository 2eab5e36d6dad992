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
from mozpool.db.requests import note_claim


def insert_request(
    c: Cursor, server_fqdn: str, device: str, spec: RequestSpec, expires: str, now: str, message: str,
    created: str | None = None,
) -> int:
    """A new request in state ``new`` owned by ``server_fqdn``, journalled and logged with
    ``message``; its id. ValueError for an unknown image."""
    # One statement: the server's and the image's ids are read by the INSERT itself.
    insert = (
        "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id,"
        " boot_config, state, state_counters, state_timeout, environment, created_by, priority, queue_timeout,"
        " created)"
        " SELECT s.id, ?, ?, ?, i.id, ?, 'new', '{}', NULL, ?, ?, ?, ?, ? FROM imaging_servers s, images i"
        " WHERE s.fqdn = ? AND i.name = ?"
    )
    params = (device, spec.assignee, expires, spec.boot_config, spec.environment or "any", spec.created_by,
              spec.priority, spec.queue_timeout, created or now, server_fqdn, spec.image)
    if c.execute(insert, params).rowcount == 0:
        if c.scalar("SELECT id FROM images WHERE name = ?", (spec.image,)) is None:
            raise ValueError(f"unknown image {spec.image}")
        server_id(c, server_fqdn)  # the server's first request, before its first heartbeat
        c.execute(insert, params)
    request_id = c.lastrowid
    note_claim(c, request_id, None)  # a new request holds nothing
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

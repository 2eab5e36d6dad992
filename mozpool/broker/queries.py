"""The MozPool layer's SQL on the ``requests`` table: creating a request, renewing it, and finding
this server's expired ones (spec state-machines.md 2.6). Device matching and claiming are in
:mod:`mozpool.broker.selection`; the machine's row itself is read and written by
:mod:`mozpool.statemachine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mozpool.broker.interfaces import RequestSpec
from mozpool.db import changes, history, logs
from mozpool.db.catalog import server_id
from mozpool.db.pool import Cursor
from mozpool.db.requests import note_claim


_COLUMNS = (
    "(imaging_server_id, requested_device, assignee, expires, image_id, boot_config, state, state_counters,"
    " state_timeout, environment, created_by, priority, queue_timeout, created)"
)


def insert_request(
    c: Cursor, server_fqdn: str, device: str, spec: RequestSpec, expires: str, now: str, message: str,
    created: str | None = None,
) -> int:
    """A new request in state ``new`` owned by ``server_fqdn``, journalled and logged with
    ``message``; its id. ValueError for an unknown image."""
    # One statement: the server's and the image's ids are read by the INSERT itself.
    insert = (
        f"INSERT INTO requests {_COLUMNS}"
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
    _record_creation(c, request_id, server_fqdn, device, spec, now, message)
    return request_id


@dataclass(frozen=True)
class NewRequest:
    """A request to insert with :func:`insert_requests`, its image's id already known."""

    device: str
    spec: RequestSpec
    image_id: int
    expires: str
    message: str
    created: str


def insert_requests(c: Cursor, server_fqdn: str, server: int, new: Sequence[NewRequest], now: str) -> list[int]:
    """:func:`insert_request` of many at once, for the server whose id is ``server``: one
    multi-row INSERT; their ids, in order."""
    ids = c.insert_rows(
        f"INSERT INTO requests {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, 'new', '{{}}', NULL, ?, ?, ?, ?, ?)",
        [(server, r.device, r.spec.assignee, r.expires, r.image_id, r.spec.boot_config, r.spec.environment or "any",
          r.spec.created_by, r.spec.priority, r.spec.queue_timeout, r.created) for r in new],
    )
    for request_id, r in zip(ids, new):
        _record_creation(c, request_id, server_fqdn, r.device, r.spec, now, r.message)
    return ids


def _record_creation(
    c: Cursor, request_id: int, server_fqdn: str, device: str, spec: RequestSpec, now: str, message: str
) -> None:
    note_claim(c, request_id, None)  # a new request holds nothing
    changes.record(c, changes.REQUEST_STATE, now, request_id=request_id, state="new", old_state=None)
    logs.add_log(c, "request", request_id, "statemachine", message, now)
    history.record(c, history.Entry(  # the first entry of the request's history (issue 15)
        history.REQUEST, request_id, now, None, "new", "created", server_fqdn,
        {"requested_device": device, "image": spec.image, "environment": spec.environment or "any"},
    ))


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

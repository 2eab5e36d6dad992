"""Queries the API needs beyond mozpool.db's: exact-name lookups, owners, logs and metrics.

Names are compared again in Python after the SQL match, because MariaDB's PAD SPACE collations
treat ``"panda-0001 "`` as equal to ``"panda-0001"`` and an API name must match exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

from mozpool.db import catalog, changes, logs
from mozpool.db import health
from mozpool.db.pool import Cursor
from mozpool.db.requests import MAX_REQUEST_ID, get_request
from mozpool.db.summary import CATEGORIES, category


def device_id(c: Cursor, name: str) -> int | None:
    for row_id, row_name in c.execute("SELECT id, name FROM devices WHERE name = ?", (name,)).fetchall():
        if row_name == name:
            return int(row_id)
    return None


def _known_servers(c: Cursor) -> set[str]:
    return {r[0] for r in c.execute("SELECT fqdn FROM imaging_servers").fetchall()}


def owner(c: Cursor, kind: str, key: Any, with_servers: bool) -> tuple[Any, str, set[str]] | None:
    """(object id, owning server's fqdn, known server fqdns if asked) or None when unknown.

    ``kind`` is ``device`` (key: name), ``request`` (key: int id) or ``relay`` (key: name)."""
    if kind == "device":
        rows = c.execute(
            "SELECT d.id, d.name, s.fqdn FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
            " WHERE d.name = ?",
            (key,),
        ).fetchall()
        found = [(int(r[0]), r[2]) for r in rows if r[1] == key]
    elif kind == "relay":
        rows = c.execute(
            "SELECT b.id, b.name, s.fqdn FROM relay_boards b JOIN imaging_servers s ON s.id = b.imaging_server_id"
            " WHERE b.name = ?",
            (key,),
        ).fetchall()
        found = [(int(r[0]), r[2]) for r in rows if r[1] == key]
    elif kind == "request":
        if key > MAX_REQUEST_ID:
            return None
        rows = c.execute(
            "SELECT r.id, s.fqdn FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
            " WHERE r.id = ?",
            (key,),
        ).fetchall()
        found = [(int(r[0]), r[1]) for r in rows]
    else:
        raise ValueError(kind)
    if not found:
        return None
    servers = _known_servers(c) if with_servers else set()
    return found[0][0], found[0][1], servers


def known_servers(c: Cursor) -> set[str]:
    return _known_servers(c)


def device_state(c: Cursor, name: str) -> str | None:
    for row_name, state in c.execute("SELECT name, state FROM devices WHERE name = ?", (name,)).fetchall():
        if row_name == name:
            return str(state)
    return None


def device_status(c: Cursor, name: str, now: str) -> dict[str, Any] | None:
    """State and the 100 most recent log entries (spec 4.3)."""
    found = device_id(c, name)
    if found is None:
        return None
    state = c.scalar("SELECT state FROM devices WHERE id = ?", (found,))
    return {"state": state, "log": logs.get_log(c, "device", found, now, 0, 100)}


def device_log(c: Cursor, name: str, now: str, timeperiod: int, limit: int) -> list[dict[str, Any]] | None:
    found = device_id(c, name)
    if found is None:
        return None
    return logs.get_log(c, "device", found, now, timeperiod, limit)


def next_boot_config(c: Cursor, name: str) -> tuple[bool, str | None]:
    found = device_id(c, name)
    if found is None:
        return False, None
    return True, c.scalar("SELECT next_boot_config FROM devices WHERE id = ?", (found,))


def request_details(c: Cursor, request_id: int) -> dict[str, Any] | None:
    return get_request(c, request_id)


def request_status(c: Cursor, request_id: int, now: str) -> dict[str, Any] | None:
    found = get_request(c, request_id)
    if found is None:
        return None
    return {"state": found["state"], "log": logs.get_log(c, "request", request_id, now, 0, 100)}


def request_log(
    c: Cursor, request_id: int, now: str, timeperiod: int, limit: int
) -> list[dict[str, Any]] | None:
    if request_id > MAX_REQUEST_ID or c.scalar("SELECT id FROM requests WHERE id = ?", (request_id,)) is None:
        return None
    return logs.get_log(c, "request", request_id, now, timeperiod, limit)


def set_comments(c: Cursor, device: int, comments: str | None, now: str) -> None:
    c.execute("UPDATE devices SET comments = ? WHERE id = ?", (comments, device))
    changes.record(c, changes.DEVICE_COMMENTS, now, device_id=device, comments=comments)


def set_environment(c: Cursor, device: int, environment: str, now: str) -> None:
    c.execute("UPDATE devices SET environment = ? WHERE id = ?", (environment, device))
    changes.record(c, changes.DEVICE_ENVIRONMENT, now, device_id=device, environment=environment)


def image(c: Cursor, name: str) -> dict[str, Any] | None:
    found = catalog.get_image(c, name)
    return found if found is not None and found["name"] == name else None


def images_named(c: Cursor, names: Sequence[str]) -> list[dict[str, Any] | None]:
    """:func:`image` of each of ``names`` (repeats welcome), in one SELECT."""
    found = catalog.get_images(c, sorted(set(names)))
    return [found.get(name) for name in names]


def pxe_config(c: Cursor, name: str) -> dict[str, Any] | None:
    found = catalog.get_pxe_config(c, name)
    return found if found is not None and found["name"] == name else None


def metrics(c: Cursor) -> dict[str, Any]:
    """The database-derived metric families (spec 7.3) in three aggregate queries."""
    states = {r[0]: int(r[1]) for r in c.execute("SELECT state, COUNT(*) FROM devices GROUP BY state").fetchall()}
    rows = c.execute(
        "SELECT h.type, d.state, CASE WHEN dr.request_id IS NULL THEN 0 ELSE 1 END, COUNT(*)"
        " FROM devices d LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id"
        " GROUP BY h.type, d.state, CASE WHEN dr.request_id IS NULL THEN 0 ELSE 1 END"
    ).fetchall()
    by_type: dict[str, dict[str, int]] = {}
    for hwtype, state, held, count in rows:
        t = by_type.setdefault(hwtype or "unknown", {k: 0 for k in CATEGORIES})
        t[category(state, bool(held))] += int(count)
    requests = {
        r[0]: int(r[1])
        for r in c.execute(
            "SELECT state, COUNT(*) FROM requests WHERE state <> 'closed' GROUP BY state"
        ).fetchall()
    }
    # fault isolation (issue 15): power controllers by health, and held devices
    return {"devices": states, "by_category": by_type, "requests": requests, "health": health.summary(c)}



# --- the pool view's reads (mozpool.web.poolview) ---------------------------------------------

_VIEW_REQUEST_SQL = (
    "SELECT r.id, r.state, r.imaging_server_id, dr.device_id FROM requests r"
    " LEFT JOIN device_requests dr ON dr.request_id = r.id"
)


def view_requests(c: Cursor, ids: list[int] | None = None) -> list[tuple[int, str, int, int | None]]:
    """(id, state, server id, held device id) of the requests that are open or hold a device
    (``ids``: of those ids, closed ones included, so the view can drop them)."""
    if ids is None:
        rows = c.execute(_VIEW_REQUEST_SQL + " WHERE r.state <> 'closed' OR dr.device_id IS NOT NULL").fetchall()
    else:
        rows = []
        for start in range(0, len(ids), 500):
            chunk = [i for i in ids[start:start + 500] if i <= MAX_REQUEST_ID]
            if chunk:
                rows += c.execute(_VIEW_REQUEST_SQL + f" WHERE r.id IN ({', '.join('?' * len(chunk))})",
                                  chunk).fetchall()
    return [(int(r[0]), str(r[1]), int(r[2]), None if r[3] is None else int(r[3])) for r in rows]


def view_servers(c: Cursor) -> dict[int, tuple[str, str | None]]:
    """{server id: (fqdn, last heartbeat)} of every imaging server."""
    return {
        int(r[0]): (r[1], None if r[2] is None else str(r[2]))
        for r in c.execute("SELECT id, fqdn, last_seen FROM imaging_servers").fetchall()
    }

"""The health layer's reads: everything one explanation needs, in one transaction each, so the
answer is a consistent snapshot.  Names are compared again in Python (MariaDB's PAD SPACE
collations treat ``"panda-0001 "`` as ``"panda-0001"``)."""

from __future__ import annotations

from typing import Any, Sequence

from mozpool.db import boots, history
from mozpool.db.jsontext import loads_object
from mozpool.db.pool import Cursor
from mozpool.db.requests import MAX_REQUEST_ID

_LOG_TABLES = {"device": ("device_logs", "device_id"), "request": ("request_logs", "request_id")}


def log_lines(c: Cursor, kind: str, owner_id: int, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The lines of one device's or request's log with these ids, oldest first (purged ones are gone)."""
    if not ids:
        return []
    table, column = _LOG_TABLES[kind]
    marks = ", ".join("?" * len(ids))
    rows = c.execute(
        f"SELECT id, ts, source, message FROM {table} WHERE {column} = ? AND id IN ({marks}) ORDER BY id",
        (owner_id, *ids),
    ).fetchall()
    return [{"id": int(r[0]), "timestamp": history.api_time(r[1]), "source": r[2], "message": r[3]} for r in rows]


def newest_lines(c: Cursor, kind: str, owner_id: int, limit: int, sources: Sequence[str] = ()) -> list[int]:
    """Ids of the newest ``limit`` lines (of ``sources`` only, when given)."""
    table, column = _LOG_TABLES[kind]
    where, params = f"{column} = ?", [owner_id]
    if sources:
        where += f" AND source IN ({', '.join('?' * len(sources))})"
        params += list(sources)
    rows = c.execute(f"SELECT id FROM {table} WHERE {where} ORDER BY id DESC LIMIT {int(limit)}", params).fetchall()
    return [int(r[0]) for r in rows]


def device_facts(c: Cursor, name: str) -> dict[str, Any] | None:
    """A device's row, claim, failure, power controller, newest transitions and newest boot."""
    rows = c.execute(
        "SELECT d.id, d.name, d.state, d.state_counters, d.state_timeout, s.fqdn, dr.request_id, r.state,"
        " d.failure, h.type, i.name, ni.name, d.relay_info"
        " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id LEFT JOIN requests r ON r.id = dr.request_id"
        " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id LEFT JOIN images i ON i.id = d.image_id"
        " LEFT JOIN images ni ON ni.id = d.next_image_id WHERE d.name = ?",
        (name,),
    ).fetchall()
    found = [r for r in rows if r[1] == name]
    if not found:
        return None
    keys = ("id", "name", "state", "counters", "timeout", "imaging_server", "request_id", "request_state",
            "failure", "hardware_type", "image", "next_image", "relay_info")
    facts = dict(zip(keys, found[0]))
    facts["id"] = device_id = int(facts["id"])
    facts["counters"] = {k: v for k, v in loads_object(facts["counters"]).items() if isinstance(v, int)}
    facts["failure"] = history.parse_failure(facts["failure"], facts["state"])
    if facts["request_id"] is not None:
        facts["request_id"] = int(facts["request_id"])
    facts["latest"] = history.latest(c, history.DEVICE, device_id)
    facts["changed"] = history.latest_change(c, history.DEVICE, device_id)
    evidence = facts["failure"]["evidence"] if facts["failure"] else newest_lines(
        c, "device", device_id, history.EVIDENCE_LINES, history.EVIDENCE_SOURCES)
    facts["evidence"] = log_lines(c, "device", device_id, evidence)
    facts["boot"] = boots.latest(c, device_id)
    facts["boards"] = [
        {"name": r[0], "fqdn": r[1], "state": r[2], "imaging_server": r[3]}
        for r in c.execute(
            "SELECT b.name, b.fqdn, b.state, s.fqdn FROM relay_boards b JOIN imaging_servers s ON s.id = b.imaging_server_id"
        ).fetchall()
    ] if facts["relay_info"] else []
    return facts


def request_facts(c: Cursor, request_id: int) -> dict[str, Any] | None:
    """A request's row, its device, its newest transitions and its newest log lines."""
    if request_id > MAX_REQUEST_ID:
        return None
    row = c.execute(
        "SELECT r.id, r.state, r.state_counters, r.state_timeout, s.fqdn, r.requested_device, r.expires,"
        " i.name, r.environment, d.name, d.state, dr.imaging_result"
        " FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id JOIN images i ON i.id = r.image_id"
        " LEFT JOIN device_requests dr ON dr.request_id = r.id LEFT JOIN devices d ON d.id = dr.device_id"
        " WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    keys = ("id", "state", "counters", "timeout", "imaging_server", "requested_device", "expires", "image",
            "environment", "device", "device_state", "imaging_result")
    facts = dict(zip(keys, row))
    facts["id"] = int(facts["id"])
    facts["counters"] = {k: v for k, v in loads_object(facts["counters"]).items() if isinstance(v, int)}
    facts["queue"] = _queue_terms(c, request_id)
    facts["latest"] = history.latest(c, history.REQUEST, request_id)
    facts["changed"] = history.latest_change(c, history.REQUEST, request_id)
    facts["evidence"] = log_lines(c, "request", request_id, newest_lines(c, "request", request_id, 5))
    return facts


def _queue_terms(c: Cursor, request_id: int) -> tuple[str | None, int | None]:
    """(created, queue_timeout): when a request waiting for a device gives up (issue 14's queue)."""
    row = c.execute("SELECT created, queue_timeout FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        return None, None
    return (None if row[0] is None else str(row[0])), (None if row[1] is None else int(row[1]))

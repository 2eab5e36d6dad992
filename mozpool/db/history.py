"""State history (issue 15): one row per transition of a device or a request machine, written in
the transaction that makes the transition (:func:`mozpool.statemachine.queries.write_state`), and
the failure summary a device carries while it waits for a person (``devices.failure``).

A row says when (milliseconds), from and to, the *cause* (the event name, ``timeout``,
``state_change``, ``entry`` when an entry action moved on, ``created``), the server that made the
transition, the device and the request involved at that moment, and a structured *reason* (a JSON
object: ``counter``/``count``/``limit`` when a counter decided, ``text`` when the machine logged
why, whatever else the caller passed).  Rows are purged with the logs (mozpool.db.purge).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mozpool.db.jsontext import loads_object
from mozpool.db.pool import Cursor
from mozpool.db.requests import MAX_REQUEST_ID, claim_of

DEVICE = "device"
REQUEST = "request"

#: States besides every ``failed_*`` in which a device waits for a person or for its power
#: controller, and so carries a failure (lifeguard/states.py's PARKED_STATES and HEALTH_STATES;
#: this layer imports nothing above it).
PARKED = ("locked_out", "troubleshooting", "unknown", "held", "board_suspect")
#: Log sources whose lines are the hardware's own outcomes: the evidence a failure cites.
EVIDENCE_SOURCES = ("bmm", "sut")
#: Hardware lines a failure cites at most (the newest), besides the operation's own warnings.
EVIDENCE_LINES = 5
#: A page of history holds at most this many entries; the default page is smaller.
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def needs_failure(state: str | None) -> bool:
    """Whether a device in ``state`` carries a failure summary."""
    return state is not None and (state.startswith("failed_") or state in PARKED)


def api_time(ts: str | None) -> str | None:
    """A stored time with its milliseconds (when it has any) in the API's ISO form."""
    return None if ts is None else str(ts).replace(" ", "T")


@dataclass
class Entry:
    """One transition as the machine runner knows it; the claim (which request holds the device,
    which device the request holds) is read by :func:`record` in the same transaction."""

    kind: str
    object_id: int
    ts: str
    old: str | None
    new: str
    cause: str
    server: str
    reason: dict[str, Any] = field(default_factory=dict)
    #: ids of log lines the operation wrote as warnings or errors: cited as a failure's evidence
    evidence: list[int] = field(default_factory=list)


def describe(cause: str, old: str | None, reason: dict[str, Any]) -> str:
    """One sentence for a person: why the transition happened."""
    where = f"{cause} in {old}" if old else cause
    if cause == "state_change":
        return f"forced from {old} by a state change (an operator or a script)"
    parts = []
    if isinstance(reason.get("text"), str):
        parts.append(reason["text"])
    if isinstance(reason.get("counter"), str):
        counted = f"{reason['counter']} reached {reason.get('count')}"
        if reason.get("limit") is not None:
            counted += f" (limit {reason['limit']})"
        parts.append(counted)
    return f"{'; '.join(parts)} ({where})" if parts else where


def _hardware_lines(c: Cursor, device_id: int) -> list[int]:
    c.flush_later()  # lines held back in this transaction (an earlier member's BMM line) count too
    marks = ", ".join("?" * len(EVIDENCE_SOURCES))
    rows = c.execute(
        f"SELECT id FROM device_logs WHERE device_id = ? AND source IN ({marks})"
        f" ORDER BY id DESC LIMIT {EVIDENCE_LINES}",
        (device_id, *EVIDENCE_SOURCES),
    ).fetchall()
    return [int(r[0]) for r in rows]


def failure_of(c: Cursor, entry: Entry) -> dict[str, Any]:
    """The failure summary of a device entering ``entry.new`` (a state that needs a person)."""
    count = entry.reason.get("count")
    evidence = sorted(set(entry.evidence) | set(_hardware_lines(c, entry.object_id)))
    return {
        "state": entry.new,
        "since": api_time(entry.ts),
        "reason": describe(entry.cause, entry.old, entry.reason),
        "phase": entry.old or entry.new,
        "attempts": count if isinstance(count, int) else None,
        "evidence": evidence,
    }


def record(c: Cursor, entry: Entry) -> dict[str, Any] | None:
    """Store one transition; for a device, write (or clear) its failure summary too.  The failure
    written, if any (the change journal carries it to followers)."""
    if entry.kind == DEVICE:
        device_id: Any = entry.object_id
        request_id = c.scalar("SELECT request_id FROM device_requests WHERE device_id = ?", (device_id,))
    else:
        request_id = entry.object_id
        device_id = claim_of(c, request_id)
    c.insert_later(
        "INSERT INTO state_history (ts, kind, device_id, request_id, from_state, to_state, cause, server, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry.ts, entry.kind, device_id, request_id, entry.old, entry.new, entry.cause[:64], entry.server,
         json.dumps(entry.reason, separators=(",", ":"), default=str)),
    )
    if entry.kind != DEVICE:
        return None
    if needs_failure(entry.new):
        failure = failure_of(c, entry)
        c.execute("UPDATE devices SET failure = ? WHERE id = ?", (json.dumps(failure), entry.object_id))
        return failure
    if needs_failure(entry.old):
        c.execute("UPDATE devices SET failure = NULL WHERE id = ?", (entry.object_id,))
    return None


def parse_failure(text: str | None, state: str) -> dict[str, Any] | None:
    """A stored failure summary, if it is about ``state`` (a row changed behind the machines'
    back keeps a stale one, which is not shown)."""
    if not text or not needs_failure(state):
        return None
    found = loads_object(text)
    return found if found.get("state") == state else None


# --- reading ----------------------------------------------------------------------------------

_COLUMNS = (
    "SELECT h.id, h.ts, h.kind, d.name, h.request_id, h.from_state, h.to_state, h.cause, h.server, h.reason"
    " FROM state_history h LEFT JOIN devices d ON d.id = h.device_id"
)


def _entry(row: tuple) -> dict[str, Any]:
    entry_id, ts, kind, device, request_id, old, new, cause, server, reason = row
    return {
        "id": int(entry_id),
        "timestamp": api_time(ts),
        "machine": kind,
        "device": device,
        "request": None if request_id is None else int(request_id),
        "from": old,
        "to": new,
        "cause": cause,
        "server": server,
        "reason": loads_object(reason),
    }


def _page(c: Cursor, where: str, params: tuple, limit: int, before: int | None) -> dict[str, Any]:
    """Newest first: up to ``limit`` entries older than ``before`` (an entry id), and the id to
    ask for the next page with (None: there is none)."""
    limit = max(1, min(limit or DEFAULT_PAGE, MAX_PAGE))
    if before is not None:
        where += " AND h.id < ?"
        params = (*params, before)
    rows = c.execute(_COLUMNS + " WHERE " + where + f" ORDER BY h.id DESC LIMIT {limit + 1}", params).fetchall()
    entries = [_entry(r) for r in rows[:limit]]
    return {"history": entries, "next_before": entries[-1]["id"] if len(rows) > limit else None}


def device_history(c: Cursor, device_id: int, limit: int = 0, before: int | None = None) -> dict[str, Any]:
    """A device's own transitions (each naming the request that held it then)."""
    return _page(c, "h.kind = 'device' AND h.device_id = ?", (device_id,), limit, before)


def request_history(c: Cursor, request_id: int, limit: int = 0, before: int | None = None) -> dict[str, Any]:
    """A request's transitions and those of the device while the request held it: its life."""
    return _page(c, "h.request_id = ?", (request_id,), limit, before)


def device_history_by_name(c: Cursor, name: str, limit: int = 0, before: int | None = None) -> dict[str, Any] | None:
    """:func:`device_history` of the device named exactly ``name``; None for an unknown device."""
    for device_id, found in c.execute("SELECT id, name FROM devices WHERE name = ?", (name,)).fetchall():
        if found == name:
            return device_history(c, int(device_id), limit, before)
    return None


def request_history_if_known(c: Cursor, request_id: int, limit: int = 0, before: int | None = None) -> dict[str, Any] | None:
    """:func:`request_history`; None for an unknown request."""
    if request_id > MAX_REQUEST_ID or c.scalar("SELECT id FROM requests WHERE id = ?", (request_id,)) is None:
        return None
    return request_history(c, request_id, limit, before)


def failures_by_name(c: Cursor, names: list[str]) -> dict[str, dict[str, Any]]:
    """The failure summaries of these devices (those that have one), by name."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), 500):
        chunk = names[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for name, state, text in c.execute(
            f"SELECT name, state, failure FROM devices WHERE failure IS NOT NULL AND name IN ({marks})", chunk
        ).fetchall():
            failure = parse_failure(text, state)
            if failure is not None:
                found[name] = failure
    return found


def latest(c: Cursor, kind: str, object_id: int) -> dict[str, Any] | None:
    """The newest transition of one machine: the rule that put it where it is."""
    column = "device_id" if kind == DEVICE else "request_id"
    row = c.execute(
        _COLUMNS + f" WHERE h.kind = ? AND h.{column} = ? ORDER BY h.id DESC LIMIT 1", (kind, object_id)
    ).fetchone()
    return None if row is None else _entry(row)


def latest_change(c: Cursor, kind: str, object_id: int) -> dict[str, Any] | None:
    """The newest transition that changed the state (not a re-entry): since when it is there."""
    column = "device_id" if kind == DEVICE else "request_id"
    row = c.execute(
        _COLUMNS + f" WHERE h.kind = ? AND h.{column} = ? AND (h.from_state IS NULL OR h.from_state <> h.to_state)"
        " ORDER BY h.id DESC LIMIT 1",
        (kind, object_id),
    ).fetchone()
    return None if row is None else _entry(row)


def purge_before(c: Cursor, cutoff: str, batch: int) -> int:
    """Delete up to ``batch`` entries older than ``cutoff``; how many went."""
    ids = [r[0] for r in c.execute(f"SELECT id FROM state_history WHERE ts < ? LIMIT {int(batch)}", (cutoff,)).fetchall()]
    if ids:
        c.execute(f"DELETE FROM state_history WHERE id IN ({', '.join('?' * len(ids))})", ids)
    return len(ids)

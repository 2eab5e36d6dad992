"""Device and request logs: insertion, queries with ``timeperiod``/``limit``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Sequence

from mozpool.db import changes
from mozpool.db.pool import Cursor
from mozpool.timeutil import DB_FORMAT, apitime, parse_dbtime

_TABLES = {"device": ("device_logs", "device_id"), "request": ("request_logs", "request_id")}
_LOG_CHANGE = {"device": changes.DEVICE_LOG, "request": changes.REQUEST_LOG}
_OWNER_ARG = {"device": "device_id", "request": "request_id"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters (newlines included) written as escapes, so nothing a
    caller supplies (an event name in a URL, say) can forge or split a log line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def add_log(c: Cursor, kind: str, owner_id: int, source: str, message: str, ts: str) -> None:
    """Append one line to the device or request log (and the change journal); leading
    whitespace is trimmed.  Held back to the transaction's end with the other lines
    (:meth:`Cursor.insert_later`): a burst's lines cost one multi-row INSERT, not one each;
    the journal entry keeps its place and gets the line's id then."""
    sql, params, journal = _line(kind, owner_id, source, message, ts)
    line: list[int] = []
    c.insert_later(sql, params, then=lambda c, line_id: line.append(line_id))
    changes.record_pending(c, _LOG_CHANGE[kind], ts, lambda: journal(line[0]), **{_OWNER_ARG[kind]: owner_id})


def add_log_now(c: Cursor, kind: str, owner_id: int, source: str, message: str, ts: str) -> int:
    """:func:`add_log` at once, after the lines held back before it: its id, which failure
    reasons cite as evidence."""
    c.flush_later()
    sql, params, journal = _line(kind, owner_id, source, message, ts)
    line_id = c.execute(sql, params).lastrowid
    changes.record(c, _LOG_CHANGE[kind], ts, **{_OWNER_ARG[kind]: owner_id}, **journal(line_id))
    return line_id


def _line(kind: str, owner_id: int, source: str, message: str, ts: str) -> tuple[str, tuple[Any, ...], Any]:
    """A log line's INSERT, and its journal entry's data given the line's id."""
    table, column = _TABLES[kind]
    source, message = printable(source[:32]), printable(message.lstrip())
    sql = f"INSERT INTO {table} ({column}, ts, source, message) VALUES (?, ?, ?, ?)"
    return sql, (owner_id, ts, source, message), lambda line_id: {
        "id": line_id, "timestamp": apitime(ts), "source": source, "message": message}


#: A line logged earlier, written later: (source, message, ts).
Line = tuple[str, str, str]


def add_lines(c: Cursor, kind: str, owner_id: int, lines: Sequence[Line]) -> None:
    """Lines logged earlier in an operation, with their own timestamps, in their order."""
    for source, message, ts in lines:
        add_log(c, kind, owner_id, source, message, ts)


def add_device_log_by_name(c: Cursor, name: str, source: str, message: str, ts: str) -> bool:
    """Log against a device by name; lines for unknown names are dropped (False)."""
    device_id = c.scalar("SELECT id FROM devices WHERE name = ?", (name,))
    if device_id is None:
        return False
    add_log(c, "device", int(device_id), source, message, ts)
    return True


def get_log(
    c: Cursor, kind: str, owner_id: int, now: str, timeperiod: int = 0, limit: int = 0
) -> list[dict[str, Any]]:
    """Entries oldest first; ``timeperiod`` seconds back from ``now`` and the ``limit`` most
    recent, 0 meaning no restriction for either."""
    table, column = _TABLES[kind]
    sql = f"SELECT id, ts, source, message FROM {table} WHERE {column} = ?"
    params: list[Any] = [owner_id]
    if timeperiod:
        start = parse_dbtime(now)
        assert start is not None
        sql += " AND ts >= ?"
        params.append((start - timedelta(seconds=timeperiod)).strftime(DB_FORMAT))
    sql += " ORDER BY ts DESC, id DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = c.execute(sql, params).fetchall()
    rows.reverse()
    return [
        {"id": int(r[0]), "timestamp": r[1][:19].replace(" ", "T"), "source": r[2], "message": r[3]}
        for r in rows
    ]

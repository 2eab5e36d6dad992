"""Health of power controllers and the quarantine cap (issue 15, fault isolation by blast radius):
the ``relay_boards`` row of a controller (a ProXR board, a PDU behind pdudaemon) is its health
machine's row -- ``state`` (``ready`` or ``suspect``), ``state_counters`` (``probes``: the
backoff step), ``state_timeout`` (the next probe), and since schema v4 ``health_since`` and
``health_reason`` -- and every change of health is journalled as a ``board_health`` event.

Devices name their controller only inside ``relay_info``; :func:`prefixes` matches them in SQL
(loosely: callers that must be exact parse the relay_info).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from mozpool.db import changes
from mozpool.db.jsontext import loads_object
from mozpool.db.pool import Cursor

#: A healthy controller's ``relay_boards.state`` (what the inventory sync and fixtures write).
OK = "ready"
SUSPECT = "suspect"

_BOARD_SQL = (
    "SELECT b.id, b.name, b.fqdn, s.fqdn, b.state, b.state_counters, b.state_timeout, b.health_since,"
    " b.health_reason FROM relay_boards b JOIN imaging_servers s ON s.id = b.imaging_server_id"
)


@dataclass(frozen=True)
class Board:
    """A power controller's health, as stored."""

    id: int
    name: str
    fqdn: str
    server: str
    state: str
    counters: dict[str, int] = field(default_factory=dict)
    next_probe: str | None = None
    since: str | None = None
    reason: str | None = None

    @property
    def suspect(self) -> bool:
        return self.state == SUSPECT

    def public(self) -> dict[str, Any]:
        """The API's view: ``health`` is ``ok`` or ``suspect``; times in API form."""
        return {
            "name": self.name, "fqdn": self.fqdn, "imaging_server": self.server,
            "health": "suspect" if self.suspect else "ok", "since": _api(self.since),
            "reason": self.reason, "next_probe": _api(self.next_probe) if self.suspect else None,
            "failed_probes": int(self.counters.get("probes", 0)) if self.suspect else 0,
        }


def _api(text: str | None) -> str | None:
    return None if text is None else str(text)[:19].replace(" ", "T")


def _board(row: tuple) -> Board:
    counters = {k: v for k, v in loads_object(row[5] or "{}").items() if isinstance(v, int)}
    return Board(int(row[0]), row[1], row[2], row[3], row[4], counters, row[6], row[7], row[8])


def board(c: Cursor, fqdn: str) -> Board | None:
    """The controller whose ``relay_boards.fqdn`` is ``fqdn``."""
    row = c.execute(_BOARD_SQL + " WHERE b.fqdn = ?", (fqdn,)).fetchone()
    return None if row is None else _board(row)


def board_named(c: Cursor, name: str) -> Board | None:
    """The controller whose ``relay_boards.name`` is ``name`` (the API's ``{relay}``)."""
    row = c.execute(_BOARD_SQL + " WHERE b.name = ?", (name,)).fetchone()
    return None if row is None else _board(row)


def boards(c: Cursor, server: str | None = None, suspect_only: bool = False) -> list[Board]:
    """Every controller (of ``server``; only the suspect ones), by name."""
    where, params = [], []
    if server is not None:
        where.append("s.fqdn = ?")
        params.append(server)
    if suspect_only:
        where.append("b.state = ?")
        params.append(SUSPECT)
    sql = _BOARD_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY b.name"
    return [_board(r) for r in c.execute(sql, params).fetchall()]


def due_probes(c: Cursor, server: str, now: str) -> list[Board]:
    """``server``'s suspect controllers whose next probe is due."""
    rows = c.execute(
        _BOARD_SQL + " WHERE s.fqdn = ? AND b.state = ? AND (b.state_timeout IS NULL OR b.state_timeout <= ?)"
        " ORDER BY b.name",
        (server, SUSPECT, now),
    ).fetchall()
    return [_board(r) for r in rows]


def set_health(
    c: Cursor, fqdn: str, state: str, now: str, reason: str | None, next_probe: str | None,
    counters: dict[str, int],
) -> bool:
    """Store a controller's health; a change of ``state`` is journalled (``board_health``).
    True when the state changed (False also for an unknown controller)."""
    found = board(c, fqdn)
    if found is None:
        return False
    changed = found.state != state
    since = now if changed else found.since
    c.execute(
        "UPDATE relay_boards SET state = ?, state_counters = ?, state_timeout = ?, health_since = ?,"
        " health_reason = ? WHERE id = ?",
        (state, json.dumps(counters), next_probe, since, reason, found.id),
    )
    if changed:
        changes.record(
            c, changes.BOARD_HEALTH, now, board=found.name, fqdn=found.fqdn, board_server=found.server,
            health="suspect" if state == SUSPECT else "ok", old_health="suspect" if found.suspect else "ok",
            reason=reason,
        )
    return changed


def prefixes(fqdn: str) -> list[str]:
    """How the relay_info of a device behind controller ``fqdn`` starts: a ProXR board's devices
    as ``host[:port]:bankB:relayN`` or ``proxr://host[:port]/B/N``, another controller's as
    ``<controller>/PORT``."""
    return [fqdn + "/"] if "://" in fqdn else [fqdn + ":", "proxr://" + fqdn + "/"]


def _like(prefix: str) -> str:
    return prefix.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _behind(fqdn: str) -> tuple[str, list[str]]:
    marks = prefixes(fqdn)
    return "(" + " OR ".join(["LOWER(d.relay_info) LIKE ? ESCAPE '!'"] * len(marks)) + ")", [_like(p) for p in marks]


def devices_behind(
    c: Cursor, fqdn: str, server: str | None = None, states: Sequence[str] = ()
) -> list[tuple[str, str, str | None, int | None]]:
    """(name, state, relay_info, claiming request) of the devices whose relay_info names
    controller ``fqdn`` (of ``server``; in one of ``states``), by name."""
    clause, params = _behind(fqdn)
    sql = (
        "SELECT d.name, d.state, d.relay_info, dr.request_id FROM devices d"
        " JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id WHERE " + clause
    )
    if server is not None:
        sql += " AND s.fqdn = ?"
        params.append(server)
    if states:
        sql += f" AND d.state IN ({', '.join('?' * len(states))})"
        params.extend(states)
    rows = c.execute(sql + " ORDER BY d.name", params).fetchall()
    return [(r[0], r[1], r[2], None if r[3] is None else int(r[3])) for r in rows]


#: How many controllers are suspect, as a subquery (for a wider read: :func:`note_suspects`).
SUSPECT_COUNT_SQL = f"SELECT COUNT(*) FROM relay_boards WHERE state = '{SUSPECT}'"


def note_suspects(c: Cursor, count: int) -> None:
    """A wider read of the interaction counted the suspect controllers: with none,
    :func:`avoided_device_ids` has nothing to ask."""
    c.known["suspect_boards"] = count


def avoided_device_ids(c: Cursor) -> list[int]:
    """Ids of ``ready`` devices behind a suspect controller: request selection passes them by."""
    found: list[int] = []
    if c.known.get("suspect_boards") == 0:
        return found
    for b in boards(c, suspect_only=True):
        clause, params = _behind(b.fqdn)
        found += [int(r[0]) for r in c.execute(
            "SELECT d.id FROM devices d WHERE d.state = 'ready' AND " + clause, params).fetchall()]
    return found


def quarantines_since(c: Cursor, server: str, since: str) -> int:
    """How many times ``server``'s devices entered a ``failed_`` state since ``since`` (from the
    change journal)."""
    return int(c.scalar(
        "SELECT COUNT(*) FROM changes ch JOIN devices d ON d.id = ch.device_id"
        " JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " WHERE ch.kind = ? AND ch.ts >= ? AND s.fqdn = ? AND ch.data LIKE ? ESCAPE '!'",
        (changes.DEVICE_STATE, since, server, '%"state":"failed!_%'),
    ) or 0)


def held_devices(c: Cursor, server: str | None = None) -> list[str]:
    """Names of the devices in ``held`` (of ``server``)."""
    sql = "SELECT d.name FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id WHERE d.state = 'held'"
    params: list[Any] = []
    if server is not None:
        sql += " AND s.fqdn = ?"
        params.append(server)
    return [r[0] for r in c.execute(sql + " ORDER BY d.name", params).fetchall()]


def devices_in_state(c: Cursor, server: str, state: str) -> list[tuple[str, str | None]]:
    """(name, relay_info) of ``server``'s devices in ``state``."""
    rows = c.execute(
        "SELECT d.name, d.relay_info FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " WHERE s.fqdn = ? AND d.state = ? ORDER BY d.name",
        (server, state),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def summary(c: Cursor) -> dict[str, Any]:
    """For /metrics: controllers by health, the suspect ones by name, held devices by server."""
    by_health = {"ok": 0, "suspect": 0}
    suspect = []
    for b in boards(c):
        by_health["suspect" if b.suspect else "ok"] += 1
        if b.suspect:
            suspect.append((b.name, b.server))
    held = dict(c.execute(
        "SELECT s.fqdn, COUNT(*) FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " WHERE d.state = 'held' GROUP BY s.fqdn").fetchall())
    return {"boards": by_health, "suspect": suspect, "held": {k: int(v) for k, v in held.items()}}


def report(c: Cursor, since: str, status: dict[str, Any] | None) -> dict[str, Any]:
    """``GET /api/health/``: every controller, and every server's quarantines since ``since``
    and held devices; ``status`` is this server's cap and window (None: unknown)."""
    servers = [r[0] for r in c.execute("SELECT fqdn FROM imaging_servers ORDER BY fqdn").fetchall()]
    return {
        "boards": [b.public() for b in boards(c)],
        "servers": [{"imaging_server": s, "quarantines": quarantines_since(c, s, since), "held": held_devices(c, s)}
                    for s in servers],
        "quarantine_cap": None if status is None else int(status["cap"]),
        "quarantine_window": None if status is None else float(status["window"]),
    }


def relay_report(c: Cursor, name: str) -> dict[str, Any] | None:
    """``GET /api/relay/{relay}/health/``: the controller named ``name`` and its devices."""
    found = board_named(c, name)
    if found is None:
        return None
    devices = [{"name": n, "state": state, "request_id": request_id}
               for n, state, _, request_id in devices_behind(c, found.fqdn)]
    return {"board": found.public(), "devices": devices}

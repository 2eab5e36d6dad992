"""The database reads of the operator UI that mozpool.db and mozpool.web.queries do not offer.

Each function runs inside ``Database.runInteraction`` and returns plain data.  The devices table
pages in SQL (``LIMIT``/``OFFSET`` after filtering and sorting), so a pool of 10,000 devices
sends one page of rows to the browser, never the whole pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from mozpool.db import catalog, logs
from mozpool.db import health as board_health
from mozpool.db.pool import Cursor
from mozpool.db.requests import MAX_REQUEST_ID, get_request
from mozpool.lifeguard import states
from mozpool.timeutil import apitime, dbtime, parse_dbtime

#: mozpool.db.summary.category() as SQL over ``d`` (devices) and ``dr`` (device_requests);
#: tests/web/ui/test_queries.py checks the two agree for every state.
CATEGORY_SQL = (
    "CASE WHEN SUBSTR(d.state, 1, 7) = 'failed_' THEN 'failed'"
    " WHEN dr.request_id IS NOT NULL THEN 'in_use'"
    " WHEN d.state = 'ready' THEN 'idle' ELSE 'processing' END"
)

#: States that wait for a person besides the ``failed_`` ones (spec http-api 6.2, and ``held``).
PARKED_STATES = states.PARKED_STATES

_DEVICE_FROM = (
    " FROM devices d"
    " JOIN imaging_servers s ON s.id = d.imaging_server_id"
    " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
    " LEFT JOIN images i ON i.id = d.image_id"
    " LEFT JOIN device_requests dr ON dr.device_id = d.id"
    " LEFT JOIN requests r ON r.id = dr.request_id"
)
_DEVICE_COLUMNS = (
    "SELECT d.name, d.state, " + CATEGORY_SQL + ", h.type, d.environment, i.name, s.fqdn,"
    " dr.request_id, r.state, d.comments, d.relay_info"
)
_DEVICE_KEYS = (
    "name", "state", "category", "hardware_type", "environment", "image", "imaging_server",
    "request_id", "request_state", "comments", "relay_info",
)

#: Sort keys of the devices table -> SQL expression; the device name always breaks ties.
DEVICE_SORTS = {
    "name": "d.name",
    "state": "d.state",
    "category": CATEGORY_SQL,
    "hardware_type": "h.type",
    "environment": "d.environment",
    "image": "i.name",
    "imaging_server": "s.fqdn",
    "request": "dr.request_id",
    "comments": "d.comments",
}

#: Exact-match filters of the devices table -> SQL expression (the sortable columns' own).
DEVICE_FILTERS = {
    key: DEVICE_SORTS[key]
    for key in ("state", "category", "hardware_type", "environment", "image", "imaging_server")
}


def _device(row: tuple) -> dict[str, Any]:
    d = dict(zip(_DEVICE_KEYS, row))
    d["hardware_type"] = d["hardware_type"] or "unknown"
    if d["request_id"] is not None:
        d["request_id"] = int(d["request_id"])
    return d


def _like(text: str, anywhere: bool = True) -> str:
    """A LIKE pattern (``!`` escapes) matching lower-cased ``text`` anywhere, or at the start."""
    escaped = text.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%" if anywhere else f"{escaped}%"


@dataclass(frozen=True)
class DeviceQuery:
    """One view of the devices table: filters, sort and page (validated by the caller)."""

    name: str = ""
    #: filter key of DEVICE_FILTERS -> required value
    filters: dict[str, str] = field(default_factory=dict)
    #: "yes" (held by a request), "no" (free) or "" (either)
    held: str = ""
    sort: str = "name"
    descending: bool = False
    page: int = 1
    per_page: int = 100


def _device_where(query: DeviceQuery) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if query.name:
        clauses.append("LOWER(d.name) LIKE ? ESCAPE '!'")
        params.append(_like(query.name))
    for key, value in sorted(query.filters.items()):
        if key == "hardware_type" and value == "unknown":
            clauses.append("h.type IS NULL")
            continue
        clauses.append(f"{DEVICE_FILTERS[key]} = ?")
        params.append(value)
    if query.held == "yes":
        clauses.append("dr.request_id IS NOT NULL")
    elif query.held == "no":
        clauses.append("dr.request_id IS NULL")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def device_page(c: Cursor, query: DeviceQuery) -> tuple[list[dict[str, Any]], int]:
    """The rows of one page of the devices table, and how many devices match in all."""
    where, params = _device_where(query)
    total = int(c.scalar("SELECT COUNT(*)" + _DEVICE_FROM + where, params))
    direction = " DESC" if query.descending else ""
    order = f" ORDER BY {DEVICE_SORTS[query.sort]}{direction}, d.name{direction}"
    limit = f" LIMIT {int(query.per_page)} OFFSET {int((query.page - 1) * query.per_page)}"
    rows = c.execute(_DEVICE_COLUMNS + _DEVICE_FROM + where + order + limit, params).fetchall()
    return [_device(r) for r in rows], total


def _column(c: Cursor, sql: str) -> list[str]:
    return [r[0] for r in c.execute(sql).fetchall() if r[0] is not None]


def device_filter_choices(c: Cursor) -> dict[str, list[str]]:
    """The values each filter of the devices table can take, for its drop-downs."""
    types = _column(c, "SELECT DISTINCT type FROM hardware_types ORDER BY type")
    if c.scalar("SELECT COUNT(*) FROM devices WHERE hardware_type_id IS NULL"):
        types.append("unknown")
    return {
        "state": _column(c, "SELECT DISTINCT state FROM devices ORDER BY state"),
        "category": ["in_use", "idle", "processing", "failed"],
        "hardware_type": types,
        "environment": _column(c, "SELECT DISTINCT environment FROM devices ORDER BY environment"),
        "image": _column(c, "SELECT name FROM images ORDER BY name"),
        "imaging_server": _column(c, "SELECT fqdn FROM imaging_servers ORDER BY fqdn"),
    }


def needs_a_human(c: Cursor, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Devices in a ``failed_`` state first, then the parked ones (:data:`PARKED_STATES`: locked
    out, troubleshooting, unknown, held); at most ``limit`` of them, and how many there are in all."""
    marks = ", ".join("?" * len(PARKED_STATES))
    where = f" WHERE SUBSTR(d.state, 1, 7) = 'failed_' OR d.state IN ({marks})"
    total = int(c.scalar("SELECT COUNT(*) FROM devices d" + where, PARKED_STATES))
    order = " ORDER BY CASE WHEN SUBSTR(d.state, 1, 7) = 'failed_' THEN 0 ELSE 1 END, d.name"
    rows = c.execute(
        _DEVICE_COLUMNS + _DEVICE_FROM + where + order + f" LIMIT {int(limit)}", PARKED_STATES
    ).fetchall()
    return [_device(r) for r in rows], total


def category_counts(c: Cursor) -> dict[str, dict[str, int]]:
    """{hardware type: {category: count}} over every server's devices."""
    rows = c.execute(
        "SELECT h.type, " + CATEGORY_SQL + ", COUNT(*) FROM devices d"
        " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id"
        " GROUP BY h.type, " + CATEGORY_SQL
    ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for hwtype, cat, count in rows:
        per_type = counts.setdefault(hwtype or "unknown", {})
        per_type[cat] = per_type.get(cat, 0) + int(count)
    return counts


def _down_since(last_seen: Any, dead_before: str | None) -> str | None:
    if last_seen is None or dead_before is None or str(last_seen) >= dead_before:
        return None
    return str(last_seen)[:19]


def down_servers(c: Cursor, dead_before: str | None) -> dict[str, str]:
    """Imaging server -> its last heartbeat, for each server silent since before ``dead_before``
    (mozpool.liveness): the devices table marks their devices unreachable."""
    found = {}
    for fqdn, last_seen in c.execute("SELECT fqdn, last_seen FROM imaging_servers").fetchall():
        since = _down_since(last_seen, dead_before)
        if since is not None:
            found[fqdn] = since
    return found


def device_by_name(c: Cursor, name: str, dead_before: str | None = None) -> dict[str, Any] | None:
    """Everything the device page shows but its log, or None for an unknown name (compared
    exactly: MariaDB's PAD SPACE collations ignore trailing spaces)."""
    rows = c.execute(
        _DEVICE_COLUMNS + ", d.id, d.fqdn, d.inventory_id, d.mac_address, d.boot_config, ni.name,"
        " d.next_boot_config, h.model, s.last_seen" + _DEVICE_FROM + " LEFT JOIN images ni ON ni.id = d.next_image_id"
        " WHERE d.name = ?",
        (name,),
    ).fetchall()
    for row in rows:
        if row[0] != name:
            continue
        device = _device(row[: len(_DEVICE_KEYS)])
        extra = dict(zip(
            ("id", "fqdn", "inventory_id", "mac_address", "boot_config", "next_image", "next_boot_config",
             "hardware_model"),
            row[len(_DEVICE_KEYS):-1],
        ))
        device.update(extra)
        device["server_down_since"] = _down_since(row[-1], dead_before)
        device["id"] = int(device["id"])
        device["state_since"] = state_since(c, device["id"], device["state"])
        return device
    return None


def state_since(c: Cursor, device_id: int, state: str) -> str | None:
    """When the device entered its current state (API time form): its newest "entering state"
    log line, or None once that line has been purged."""
    ts = c.scalar(
        "SELECT MAX(ts) FROM device_logs WHERE device_id = ? AND message = ?",
        (device_id, f"entering state {state}"),
    )
    return apitime(str(ts)) if ts is not None else None


def newest_log(c: Cursor, kind: str, owner_id: int, now: str, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most recent lines of a device or request log, newest first."""
    lines = logs.get_log(c, kind, owner_id, now, 0, limit)
    lines.reverse()
    return lines


def device_log_by_name(c: Cursor, name: str, now: str, limit: int) -> list[dict[str, Any]] | None:
    device_id = next((int(r[0]) for r in c.execute(
        "SELECT id, name FROM devices WHERE name = ?", (name,)).fetchall() if r[1] == name), None)
    if device_id is None:
        return None
    return newest_log(c, "device", device_id, now, limit)


def request_by_id(c: Cursor, request_id: int) -> dict[str, Any] | None:
    """The request page's data: the API's request object plus its state, owner and device state,
    and ``queue_deadline``: when it gives up waiting for a device (created + queue_timeout)."""
    found = get_request(c, request_id)
    if found is None:
        return None
    raw = c.scalar("SELECT created FROM requests WHERE id = ?", (request_id,))
    created = None if raw is None else parse_dbtime(str(raw))
    found["queue_deadline"] = (
        None if created is None else apitime(dbtime(created + timedelta(seconds=found["queue_timeout"])))
    )
    found["device_state"] = None
    if found["assigned_device"]:
        found["device_state"] = c.scalar(
            "SELECT state FROM devices WHERE name = ?", (found["assigned_device"],)
        )
    return found


def request_log(c: Cursor, request_id: int, now: str, limit: int) -> list[dict[str, Any]] | None:
    if request_id > MAX_REQUEST_ID or c.scalar("SELECT id FROM requests WHERE id = ?", (request_id,)) is None:
        return None
    return newest_log(c, "request", request_id, now, limit)


_REQUEST_KEYS = (
    "id", "state", "assignee", "requested_device", "assigned_device", "device_state", "image",
    "environment", "expires", "imaging_server", "priority",
)


def request_page(
    c: Cursor, include_closed: bool, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of requests, newest first, and how many there are in all."""
    where = "" if include_closed else " WHERE r.state <> 'closed'"
    total = int(c.scalar("SELECT COUNT(*) FROM requests r" + where))
    rows = c.execute(
        "SELECT r.id, r.state, r.assignee, r.requested_device, d.name, d.state, i.name, r.environment,"
        " r.expires, s.fqdn, r.priority"
        " FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
        " JOIN images i ON i.id = r.image_id"
        " LEFT JOIN device_requests dr ON dr.request_id = r.id"
        " LEFT JOIN devices d ON d.id = dr.device_id" + where
        + f" ORDER BY r.id DESC LIMIT {int(per_page)} OFFSET {int((page - 1) * per_page)}"
    ).fetchall()
    found = []
    for row in rows:
        entry = dict(zip(_REQUEST_KEYS, row))
        entry["id"] = int(entry["id"])
        entry["priority"] = int(entry["priority"])
        entry["expires"] = apitime(entry["expires"])
        found.append(entry)
    return found, total


def relay_boards(c: Cursor, server: str = "") -> list[dict[str, Any]]:
    """Every relay board (of imaging server ``server``, when given) with its owner, by server
    then name."""
    where, params = (" WHERE s.fqdn = ?", [server]) if server else ("", [])
    rows = c.execute(
        "SELECT b.name, b.fqdn, b.state, s.fqdn, b.health_since, b.health_reason FROM relay_boards b"
        " JOIN imaging_servers s ON s.id = b.imaging_server_id" + where + " ORDER BY s.fqdn, b.name",
        params,
    ).fetchall()
    # health_since/health_reason: why a controller is suspect (issue 15, mozpool.db.health)
    return [dict(zip(("name", "fqdn", "state", "imaging_server", "health_since", "health_reason"), r)) for r in rows]


def suspect_boards(c: Cursor) -> list[dict[str, Any]]:
    """The power controllers found suspect (issue 15), every server's, by server then name, each
    with how many devices wait for it in ``board_suspect``: the overview names them, since a
    dead board needs a person though its devices only wait."""
    rows = c.execute(
        "SELECT b.name, b.fqdn, b.state, s.fqdn, b.health_since, b.health_reason FROM relay_boards b"
        " JOIN imaging_servers s ON s.id = b.imaging_server_id WHERE b.state = 'suspect' ORDER BY s.fqdn, b.name"
    ).fetchall()
    boards = [dict(zip(("name", "fqdn", "state", "imaging_server", "health_since", "health_reason"), r)) for r in rows]
    for board in boards:
        board["waiting"] = len(board_health.devices_behind(c, board["fqdn"], states=("board_suspect",)))
    return boards


def wired_devices(c: Cursor, server: str = "") -> list[dict[str, Any]]:
    """Every device (of imaging server ``server``, when given) with what the lab map needs."""
    where, params = (" WHERE s.fqdn = ?", [server]) if server else ("", [])
    rows = c.execute(_DEVICE_COLUMNS + _DEVICE_FROM + where + " ORDER BY d.name", params).fetchall()
    return [_device(r) for r in rows]


def relay_board(c: Cursor, address: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The power controller at ``address`` (as relay_boards.fqdn: a board's ``host[:port]``, or
    ``pdudaemon://host:port/PDU``) or None, and the devices whose relay_info may name it (the
    caller parses them: the prefix match is loose)."""
    boards = [b for b in relay_boards(c) if b["fqdn"] == address]
    # A board's devices as host[:port]:bankB:relayN or proxr://host[:port]/B/N; another
    # controller's as <controller>/PORT.
    prefixes = [address + "/"] if "://" in address else [address + ":", "proxr://" + address + "/"]
    rows = c.execute(
        _DEVICE_COLUMNS + _DEVICE_FROM + " WHERE " + " OR ".join(["LOWER(d.relay_info) LIKE ? ESCAPE '!'"] * len(prefixes))
        + " ORDER BY d.name",
        [_like(p, anywhere=False) for p in prefixes],
    ).fetchall()
    return (boards[0] if boards else None), [_device(r) for r in rows]


def imaging_servers(c: Cursor, dead_before: str | None = None) -> list[dict[str, Any]]:
    """Every imaging server with its devices by category, open requests and relay boards, and
    ``down_since`` (its last heartbeat) when it has been silent since before ``dead_before``."""
    servers: dict[str, dict[str, Any]] = {
        fqdn: {"fqdn": fqdn, "devices": 0, "categories": {}, "open_requests": 0, "relay_boards": 0,
               "down_since": _down_since(last_seen, dead_before)}
        for fqdn, last_seen in c.execute("SELECT fqdn, last_seen FROM imaging_servers ORDER BY fqdn").fetchall()
    }
    for fqdn, cat, count in c.execute(
        "SELECT s.fqdn, " + CATEGORY_SQL + ", COUNT(*) FROM devices d"
        " JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id GROUP BY s.fqdn, " + CATEGORY_SQL
    ).fetchall():
        servers[fqdn]["devices"] += int(count)
        servers[fqdn]["categories"][cat] = int(count)
    for fqdn, count in c.execute(
        "SELECT s.fqdn, COUNT(*) FROM requests r JOIN imaging_servers s ON s.id = r.imaging_server_id"
        " WHERE r.state <> 'closed' GROUP BY s.fqdn"
    ).fetchall():
        servers[fqdn]["open_requests"] = int(count)
    for fqdn, count in c.execute(
        "SELECT s.fqdn, COUNT(*) FROM relay_boards b JOIN imaging_servers s ON s.id = b.imaging_server_id"
        " GROUP BY s.fqdn"
    ).fetchall():
        servers[fqdn]["relay_boards"] = int(count)
    return list(servers.values())


def images(c: Cursor) -> list[dict[str, Any]]:
    """Every image, hidden ones too, with its PXE config per hardware type and device count."""
    names = [r[0] for r in c.execute("SELECT name FROM images ORDER BY name").fetchall()]
    found = [image for image in (catalog.get_image(c, name) for name in names) if image is not None]
    pxe: dict[int, list[tuple[str, str]]] = {}
    for image_id, hwtype, model, config in c.execute(
        "SELECT ip.image_id, h.type, h.model, p.name FROM image_pxe_configs ip"
        " JOIN hardware_types h ON h.id = ip.hardware_type_id"
        " LEFT JOIN pxe_configs p ON p.id = ip.pxe_config_id ORDER BY h.type, h.model"
    ).fetchall():
        pxe.setdefault(int(image_id), []).append((f"{hwtype} {model}".strip(), config or ""))
    installed = dict(c.execute(
        "SELECT image_id, COUNT(*) FROM devices WHERE image_id IS NOT NULL GROUP BY image_id"
    ).fetchall())
    for image in found:
        image["pxe_configs"] = pxe.get(int(image["id"]), [])
        image["devices"] = int(installed.get(image["id"], 0))
    return found


def environments(c: Cursor) -> list[dict[str, Any]]:
    """Each environment devices are in, with its devices by category."""
    found: dict[str, dict[str, Any]] = {}
    for env, cat, count in c.execute(
        "SELECT d.environment, " + CATEGORY_SQL + ", COUNT(*) FROM devices d"
        " LEFT JOIN device_requests dr ON dr.device_id = d.id"
        " GROUP BY d.environment, " + CATEGORY_SQL + " ORDER BY d.environment"
    ).fetchall():
        entry = found.setdefault(env, {"name": env, "devices": 0, "categories": {}})
        entry["devices"] += int(count)
        entry["categories"][cat] = int(count)
    return list(found.values())


def pxe_configs(c: Cursor) -> list[dict[str, Any]]:
    """Every PXE config with its contents and the images that boot with it."""
    users: dict[str, list[str]] = {}
    for config, image, hwtype in c.execute(
        "SELECT p.name, i.name, h.type FROM image_pxe_configs ip JOIN pxe_configs p ON p.id = ip.pxe_config_id"
        " JOIN images i ON i.id = ip.image_id JOIN hardware_types h ON h.id = ip.hardware_type_id"
        " ORDER BY i.name, h.type"
    ).fetchall():
        users.setdefault(config, []).append(f"{image} ({hwtype})")
    rows = c.execute("SELECT name, description, contents, active FROM pxe_configs ORDER BY name").fetchall()
    return [
        {"name": r[0], "description": r[1], "contents": r[2], "active": bool(r[3]), "used_by": users.get(r[0], [])}
        for r in rows
    ]

"""Device rows: lists, details, states, owners and operator fields."""

from __future__ import annotations

from typing import Any

from mozpool.db import history
from mozpool.db.pool import Cursor, Database

_DETAIL_COLUMNS = (
    "SELECT d.id, d.name, d.fqdn, d.inventory_id, d.mac_address, s.fqdn, d.relay_info, d.state,"
    " d.comments, d.environment, i.name, d.boot_config, dr.request_id, d.failure, s.last_seen"
)
_DETAIL_FROM = (
    " FROM devices d"
    " JOIN imaging_servers s ON s.id = d.imaging_server_id"
    " LEFT JOIN images i ON i.id = d.image_id"
    " LEFT JOIN device_requests dr ON dr.device_id = d.id"
)
_DETAIL_SQL = _DETAIL_COLUMNS + _DETAIL_FROM
_DETAIL_KEYS = (
    "id", "name", "fqdn", "inventory_id", "mac_address", "imaging_server", "relay_info", "state",
    "comments", "environment", "image", "boot_config", "request_id", "failure",
)


def _detail(row: tuple, dead_before: str | None = None) -> dict[str, Any]:
    d = dict(zip(_DETAIL_KEYS, row))
    last_seen = row[len(_DETAIL_KEYS)]
    dead = dead_before is not None and last_seen is not None and str(last_seen) < dead_before
    #: when its imaging server was last heard from, if that server is dead (mozpool.liveness)
    d["unreachable_since"] = str(last_seen)[:19].replace(" ", "T") if dead else None
    d["id"] = int(d["id"])
    d["inventory_id"] = int(d["inventory_id"])
    if d["request_id"] is not None:
        d["request_id"] = int(d["request_id"])
    #: why a failed, locked-out or troubleshooting device is there (issue 15; mozpool.db.history)
    d["failure"] = history.parse_failure(d["failure"], d["state"])
    return d


def detail(row: tuple, dead_before: str | None = None) -> dict[str, Any]:
    """One device of ``list/?details`` from a row of :func:`view_rows`: the one conversion the
    database path and the pool view (mozpool.web.poolview) share, so a new key is one change."""
    return _detail(row, dead_before)


#: The keys of a details row, in column order (``s.last_seen`` follows them).
DETAIL_KEYS = _DETAIL_KEYS
#: What the pool view keeps of a device after the details' columns (and ``s.last_seen``).
VIEW_EXTRA = ("hardware_type", "imaging_server_id")
_VIEW_SQL = (
    _DETAIL_COLUMNS + ", h.type, d.imaging_server_id" + _DETAIL_FROM
    + " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
)


def view_rows(c: Cursor, ids: list[int] | None = None) -> list[tuple]:
    """Every device's row for the pool view (``ids``: only those), in the details' column order
    with :data:`VIEW_EXTRA` appended; a missing id is a deleted device."""
    if ids is None:
        return c.execute(_VIEW_SQL).fetchall()
    rows: list[tuple] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows += c.execute(_VIEW_SQL + f" WHERE d.id IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
    return rows


def list_names(db: Database) -> Any:
    def q(c: Cursor) -> list[str]:
        return [r[0] for r in c.execute("SELECT name FROM devices ORDER BY name").fetchall()]

    return db.runInteraction(q)


def list_details(db: Database, dead_before: str | None = None) -> Any:
    def q(c: Cursor) -> list[dict[str, Any]]:
        return [_detail(r, dead_before) for r in c.execute(_DETAIL_SQL + " ORDER BY d.name").fetchall()]

    return db.runInteraction(q)



def owner(c: Cursor, name: str) -> tuple[int, str] | None:
    """(device id, owning server's fqdn), or None for an unknown device."""
    row = c.execute(
        "SELECT d.id, s.fqdn FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " WHERE d.name = ?",
        (name,),
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])




def count_owned(c: Cursor, server_fqdn: str) -> int:
    """How many devices the server ``server_fqdn`` owns."""
    return int(
        c.scalar(
            "SELECT COUNT(*) FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id WHERE s.fqdn = ?",
            (server_fqdn,),
        )
    )


def all_states(db: Database) -> Any:
    """{name: state} for every device: the snapshot behind ``state/?cache=1``."""

    def q(c: Cursor) -> dict[str, str]:
        return dict(c.execute("SELECT name, state FROM devices").fetchall())

    return db.runInteraction(q)





def relay_board_owner(c: Cursor, name: str) -> tuple[str, str] | None:
    """(board fqdn, owning server fqdn) of a relay board, or None."""
    row = c.execute(
        "SELECT b.fqdn, s.fqdn FROM relay_boards b JOIN imaging_servers s ON s.id = b.imaging_server_id"
        " WHERE b.name = ?",
        (name,),
    ).fetchone()
    return None if row is None else (row[0], row[1])

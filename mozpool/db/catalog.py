"""Imaging servers, images, PXE configs, hardware types and environments."""

from __future__ import annotations

from typing import Any, Sequence

from mozpool.db.errors import Conflict
from mozpool.db.jsontext import loads_list
from mozpool.db.pool import Cursor, Database


def server_id(c: Cursor, fqdn: str) -> int:
    """The id of the imaging server ``fqdn``, inserting it if new (a race is 'already there')."""
    found = c.scalar("SELECT id FROM imaging_servers WHERE fqdn = ?", (fqdn,))
    if found is not None:
        return int(found)
    try:
        c.execute("INSERT INTO imaging_servers (fqdn) VALUES (?)", (fqdn,))
        return c.lastrowid
    except Conflict:
        return int(c.scalar("SELECT id FROM imaging_servers WHERE fqdn = ?", (fqdn,)))


def ensure_server(db: Database, fqdn: str) -> "Any":
    return db.runInteraction(server_id, fqdn)


def server_fqdns(db: Database) -> "Any":
    def q(c: Cursor) -> list[str]:
        return [r[0] for r in c.execute("SELECT fqdn FROM imaging_servers ORDER BY fqdn").fetchall()]

    return db.runInteraction(q)


def _image(row: tuple) -> dict[str, Any]:
    return {
        "id": row[0],
        "name": row[1],
        "boot_config_keys": [k for k in loads_list(row[2]) if isinstance(k, str)],
        "can_reuse": bool(row[3]),
        "hidden": bool(row[4]),
        "has_sut_agent": bool(row[5]),
    }


_IMAGE_COLUMNS = "id, name, boot_config_keys, can_reuse, hidden, has_sut_agent"


def list_images(db: Database) -> "Any":
    """Every image that is not hidden, by name."""

    def q(c: Cursor) -> list[dict[str, Any]]:
        rows = c.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE hidden = 0 ORDER BY name").fetchall()
        return [_image(r) for r in rows]

    return db.runInteraction(q)


def get_image(c: Cursor, name: str) -> dict[str, Any] | None:
    row = c.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE name = ?", (name,)).fetchone()
    return None if row is None else _image(row)


def get_images(c: Cursor, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The images of exactly these names (a case-insensitive collation's other matches left
    out), by name."""
    rows = c.execute(
        f"SELECT {_IMAGE_COLUMNS} FROM images WHERE name IN ({', '.join('?' * len(names))})", list(names)
    ).fetchall() if names else []
    return {image["name"]: image for image in map(_image, rows) if image["name"] in names}


def list_environments(db: Database) -> "Any":
    def q(c: Cursor) -> list[str]:
        rows = c.execute(
            "SELECT DISTINCT environment FROM devices WHERE environment IS NOT NULL ORDER BY environment"
        ).fetchall()
        return [r[0] for r in rows]

    return db.runInteraction(q)


def _pxe(row: tuple) -> dict[str, Any]:
    return {"name": row[0], "description": row[1], "contents": row[2], "active": bool(row[3])}


def list_pxe_configs(db: Database, active_only: bool = False) -> "Any":
    def q(c: Cursor) -> list[dict[str, Any]]:
        where = " WHERE active = 1" if active_only else ""
        rows = c.execute(f"SELECT name, description, contents, active FROM pxe_configs{where} ORDER BY name")
        return [_pxe(r) for r in rows.fetchall()]

    return db.runInteraction(q)


def get_pxe_config(c: Cursor, name: str) -> dict[str, Any] | None:
    row = c.execute(
        "SELECT name, description, contents, active FROM pxe_configs WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else _pxe(row)


def add_pxe_config(c: Cursor, name: str, description: str, contents: str, active: bool = True) -> int:
    """Insert a PXE config; :class:`Conflict` if the name is taken."""
    c.execute(
        "INSERT INTO pxe_configs (name, description, contents, active) VALUES (?, ?, ?, ?)",
        (name, description, contents, int(active)),
    )
    return c.lastrowid


def modify_pxe_config(
    c: Cursor,
    name: str,
    description: str | None = None,
    contents: str | None = None,
    active: bool | None = None,
) -> bool:
    """Change the given fields; False when no config has that name."""
    if c.scalar("SELECT id FROM pxe_configs WHERE name = ?", (name,)) is None:
        return False
    for column, value in (("description", description), ("contents", contents), ("active", active)):
        if value is not None:
            v = int(value) if column == "active" else value
            c.execute(f"UPDATE pxe_configs SET {column} = ? WHERE name = ?", (v, name))
    return True


def delete_pxe_config(c: Cursor, name: str) -> bool:
    """Delete a PXE config; False when unknown, :class:`Conflict` while an image uses it."""
    pxe_id = c.scalar("SELECT id FROM pxe_configs WHERE name = ?", (name,))
    if pxe_id is None:
        return False
    if c.scalar("SELECT COUNT(*) FROM image_pxe_configs WHERE pxe_config_id = ?", (pxe_id,)):
        raise Conflict(f"PXE config {name} is used by an image")
    c.execute("DELETE FROM pxe_configs WHERE id = ?", (pxe_id,))
    return True


def pxe_config_for(c: Cursor, device_id: int, image_name: str) -> dict[str, Any] | None:
    """The PXE config that boots ``image_name`` on the device's hardware type, or None."""
    row = c.execute(
        "SELECT p.name, p.description, p.contents, p.active FROM devices d"
        " JOIN image_pxe_configs ip ON ip.hardware_type_id = d.hardware_type_id"
        " JOIN images i ON i.id = ip.image_id"
        " JOIN pxe_configs p ON p.id = ip.pxe_config_id"
        " WHERE d.id = ? AND i.name = ?",
        (device_id, image_name),
    ).fetchone()
    return None if row is None else _pxe(row)


# --- liveness: every daemon says it is alive; a server silent too long is dead -----------------


def heartbeat(c: Cursor, fqdn: str, now: str) -> None:
    server_id(c, fqdn)
    c.execute("UPDATE imaging_servers SET last_seen = ? WHERE fqdn = ?", (now, fqdn))


def servers_alive(c: Cursor, cutoff: str) -> int:
    """How many servers have sent a heartbeat since ``cutoff``."""
    return int(c.scalar("SELECT COUNT(*) FROM imaging_servers WHERE last_seen >= ?", (cutoff,)) or 0)


def server_list(c: Cursor) -> list[dict[str, Any]]:
    """Every imaging server with its last heartbeat and how many devices it owns."""
    rows = c.execute(
        "SELECT s.fqdn, s.last_seen, COUNT(d.id) FROM imaging_servers s"
        " LEFT JOIN devices d ON d.imaging_server_id = s.id GROUP BY s.id, s.fqdn, s.last_seen ORDER BY s.fqdn"
    ).fetchall()
    return [{"fqdn": r[0], "last_seen": None if r[1] is None else str(r[1]), "devices": int(r[2])} for r in rows]


#: The servers dead by a cutoff, as a subquery: one id per row, or (in a wider read that
#: notes them, :func:`note_dead_servers`) joined with commas by GROUP_CONCAT.
DEAD_SERVERS_SQL = "SELECT id FROM imaging_servers WHERE last_seen IS NOT NULL AND last_seen < ?"


def dead_server_ids(c: Cursor, cutoff: str) -> list[int]:
    """Servers whose last heartbeat is older than ``cutoff``.  One that never sent one (a
    server row made by a fixture, or by a daemon of an older version) is not judged.  Read
    once per interaction (the heartbeats it does not write stay as its snapshot has them)."""
    key = ("dead_servers", cutoff)
    if key not in c.known:
        note_dead_servers(c, cutoff, [int(r[0]) for r in c.execute(DEAD_SERVERS_SQL, (cutoff,)).fetchall()])
    return list(c.known[key])


def note_dead_servers(c: Cursor, cutoff: str, ids: list[int]) -> None:
    """What a wider read of the interaction found for :func:`dead_server_ids`."""
    c.known[("dead_servers", cutoff)] = tuple(ids)

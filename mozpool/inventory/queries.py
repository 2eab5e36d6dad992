"""The inventory sync's SQL: one read of what the database holds, and one transaction per
change (spec bmm-protocols 7.5), journalled so /api/events followers see devices come and go."""

from __future__ import annotations

from mozpool.db import changes, logs
from mozpool.db.fixtures import _ensure as ensure_row
from mozpool.db.pool import Cursor
from mozpool.db.requests import note_claim
from mozpool.inventory.plan import BoardRow, Change, DeviceRow
from mozpool.timeutil import apitime

#: the source tag of the log lines the sync writes
SOURCE = "inventory"


def dump(c: Cursor) -> tuple[list[DeviceRow], list[BoardRow]]:
    """Every device and relay board in the sync's fields, in one snapshot."""
    devices = [
        DeviceRow(int(r[0]), r[1], r[2], int(r[3]), r[4], r[5], r[6], r[7], r[8])
        for r in c.execute(
            "SELECT d.id, d.name, d.fqdn, d.inventory_id, d.mac_address, s.fqdn, d.relay_info, h.type, h.model"
            " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
            " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
        ).fetchall()
    ]
    boards = [
        BoardRow(int(r[0]), r[1], r[2], r[3])
        for r in c.execute(
            "SELECT b.id, b.name, b.fqdn, s.fqdn FROM relay_boards b JOIN imaging_servers s ON s.id = b.imaging_server_id"
        ).fetchall()
    ]
    return devices, boards


# Shared rows are inserted when first named.  A duplicate-key error means another server inserted
# the row first (6.4); when this transaction's snapshot cannot see it yet, Conflict goes up and
# the change runs again in a new transaction (mozpool.inventory.sync).


def server_id(c: Cursor, fqdn: str) -> int:
    return ensure_row(c, "SELECT id FROM imaging_servers WHERE fqdn = ?", (fqdn,),
                      "INSERT INTO imaging_servers (fqdn) VALUES (?)", (fqdn,))


def hardware_type_id(c: Cursor, kind: str, model: str) -> int:
    key = (kind, model)
    return ensure_row(c, "SELECT id FROM hardware_types WHERE type = ? AND model = ?", key,
                      "INSERT INTO hardware_types (type, model) VALUES (?, ?)", key)


def _columns(c: Cursor, values: dict) -> dict:
    """The sync's fields as device columns: names resolved to ids."""
    out = {k: v for k, v in values.items() if k in ("name", "fqdn", "inventory_id", "mac_address", "relay_info")}
    if "imaging_server" in values:
        out["imaging_server_id"] = server_id(c, values["imaging_server"])
    return out


def _log(c: Cursor, device_id: int, message: str, now: str) -> None:
    logs.add_log(c, "device", device_id, SOURCE, message, now)


def insert_device(c: Cursor, change: Change, now: str) -> None:
    """A new device in state ``new`` due now, so its state machine picks it up at once."""
    v = dict(change.values)
    columns = _columns(c, v)
    columns["hardware_type_id"] = hardware_type_id(c, v["hardware_type"], v["hardware_model"])
    columns.update(state="new", state_counters="{}", state_timeout=now)
    names = ", ".join(columns)
    c.execute(f"INSERT INTO devices ({names}) VALUES ({', '.join('?' * len(columns))})", list(columns.values()))
    device_id = c.lastrowid
    changes.record(c, changes.DEVICE_STATE, now, device_id=device_id, state="new", old_state=None)
    _log(c, device_id, f"added by inventory sync (inventory id {v['inventory_id']}, relay {v['relay_info']}, "
                       f"imaging server {v['imaging_server']})", now)


def update_device(c: Cursor, change: Change, now: str) -> None:
    """Exactly the fields that differ; the state machine's columns stay as they are."""
    v = dict(change.values)
    columns = _columns(c, v)
    if "hardware_type" in v or "hardware_model" in v:
        kind = v.get("hardware_type", change.before.get("hardware_type"))
        model = v.get("hardware_model", change.before.get("hardware_model"))
        columns["hardware_type_id"] = hardware_type_id(c, kind, model or "")
    sets = ", ".join(f"{k} = ?" for k in columns)
    c.execute(f"UPDATE devices SET {sets} WHERE id = ?", [*columns.values(), change.row_id])
    if c.rowcount:
        said = ", ".join(f"{k} {change.before[k]!r} -> {val!r}" for k, val in v.items())
        _log(c, int(change.row_id), f"updated by inventory sync: {said}", now)  # type: ignore[arg-type]


def delete_device(c: Cursor, change: Change, now: str) -> None:
    """Its claim (the request is told in its log), its log lines, then the device (6.5).  The
    journal keeps a last line naming the device, since its row is gone when followers read it."""
    device_id = change.row_id
    row = c.execute(
        "SELECT d.name, s.fqdn FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id WHERE d.id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return
    name, server = row
    request_id = c.scalar("SELECT request_id FROM device_requests WHERE device_id = ?", (device_id,))
    if request_id is not None:
        c.execute("DELETE FROM device_requests WHERE device_id = ?", (device_id,))
        note_claim(c, int(request_id), None)
        changes.record(c, changes.REQUEST_DEVICE, now, request_id=int(request_id), device_id=None)
        logs.add_log(c, "request", int(request_id), SOURCE,
                     f"device {name} was deleted by inventory sync; this request no longer holds it", now)
    c.flush_later()  # this device's lines held back so far go before its log does
    message = f"deleted by inventory sync (inventory id {change.values.get('inventory_id')} is not in the inventory)"
    c.execute("INSERT INTO device_logs (device_id, ts, source, message) VALUES (?, ?, ?, ?)",
              (device_id, now, SOURCE, message))
    changes.record(c, changes.DEVICE_LOG, now, device_id=device_id, device=name, imaging_server=server,
                   id=c.lastrowid, timestamp=apitime(now), source=SOURCE, message=message)
    c.execute("DELETE FROM device_logs WHERE device_id = ?", (device_id,))
    c.execute("DELETE FROM devices WHERE id = ?", (device_id,))


def insert_board(c: Cursor, change: Change, now: str) -> None:
    v = change.values
    c.execute(
        "INSERT INTO relay_boards (name, fqdn, imaging_server_id, state, state_counters, state_timeout)"
        " VALUES (?, ?, ?, 'ready', '{}', ?)",
        (v["name"], v["fqdn"], server_id(c, v["imaging_server"]), now),
    )


def update_board(c: Cursor, change: Change, now: str) -> None:
    columns = {k: v for k, v in change.values.items() if k in ("name", "fqdn")}
    if "imaging_server" in change.values:
        columns["imaging_server_id"] = server_id(c, change.values["imaging_server"])
    sets = ", ".join(f"{k} = ?" for k in columns)
    c.execute(f"UPDATE relay_boards SET {sets} WHERE id = ?", [*columns.values(), change.row_id])


def delete_board(c: Cursor, change: Change, now: str) -> None:
    c.execute("DELETE FROM relay_boards WHERE id = ?", (change.row_id,))


_APPLY = {
    ("insert", "device"): insert_device, ("update", "device"): update_device, ("delete", "device"): delete_device,
    ("insert", "relay_board"): insert_board, ("update", "relay_board"): update_board,
    ("delete", "relay_board"): delete_board,
}


def apply_change(c: Cursor, change: Change, now: str) -> None:
    """One change, in the caller's transaction."""
    _APPLY[(change.action, change.table)](c, change, now)

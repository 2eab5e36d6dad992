"""Boot telemetry rows (issue 15): one row per PXE boot of a device, with the time this daemon
observed each milestone, written by :mod:`mozpool.health.telemetry` as the device's transitions
and our TFTP server's reads happen.  Purged with the logs."""

from __future__ import annotations

from typing import Any

from mozpool.db.pool import Cursor

#: The milestones of a boot, in the order a boot passes them (columns of ``boots``).
MILESTONES = (
    "started",  # PXE config written and power cycle started (pxe_power_cycling entered)
    "power_on",  # the relay cycle completed (power_cycle_ok)
    "pxe_fetched",  # our TFTP server sent the device its pxelinux.cfg/01-<mac>
    "init_started",  # the live image said mobile_init_started
    "stage_started",  # the second stage's first event (downloading, self_test_running, maint_mode)
    "extracting",  # *_extracting
    "rebooting",  # *_rebooting: installed, booting from the SD card
    "sut_verified",  # the SUT agent answered
    "sdcard_verified",  # the SD card check passed
    "ended",  # finished: see outcome
)
#: Rows a summary reads at most (the newest), whatever the window.
SUMMARY_ROWS = 20000


def _open_boot(c: Cursor, device_id: int) -> int | None:
    found = c.scalar("SELECT MAX(id) FROM boots WHERE device_id = ? AND ended IS NULL", (device_id,))
    return None if found is None else int(found)


def start(c: Cursor, device_id: int, server: str, ts: str) -> int:
    """A new boot of the device (an open one ends as ``retried``): with the image it installs
    (``next_image``) and its hardware type."""
    end(c, device_id, ts, "retried")
    row = c.execute(
        "SELECT i.name, h.type FROM devices d LEFT JOIN images i ON i.id = d.next_image_id"
        " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id WHERE d.id = ?",
        (device_id,),
    ).fetchone()
    image, hwtype = row if row is not None else (None, None)
    c.execute(
        "INSERT INTO boots (device_id, image, hardware_type, server, started) VALUES (?, ?, ?, ?, ?)",
        (device_id, image, hwtype, server, ts),
    )
    return int(c.lastrowid)


def mark(c: Cursor, device_id: int, milestone: str, ts: str) -> bool:
    """Record the first time the device's open boot passed ``milestone``; False without one."""
    if milestone not in MILESTONES[1:-1]:
        raise ValueError(milestone)
    boot = _open_boot(c, device_id)
    if boot is None:
        return False
    c.execute(f"UPDATE boots SET {milestone} = ? WHERE id = ? AND {milestone} IS NULL", (ts, boot))
    return True


def end(c: Cursor, device_id: int, ts: str, outcome: str) -> bool:
    """End the device's open boot with ``outcome``; False without one."""
    boot = _open_boot(c, device_id)
    if boot is None:
        return False
    c.execute("UPDATE boots SET ended = ?, outcome = ? WHERE id = ?", (ts, outcome[:32], boot))
    return True


def device_by_mac(c: Cursor, mac: str) -> int | None:
    """The device with this MAC address (12 lowercase hex digits), if one."""
    found = c.scalar("SELECT id FROM devices WHERE mac_address = ?", (mac,))
    return None if found is None else int(found)


def _boot(row: tuple) -> dict[str, Any]:
    keys = ("id", "device", "image", "hardware_type", "server", *MILESTONES, "outcome")
    boot = dict(zip(keys, row))
    boot["id"] = int(boot["id"])
    return boot


_SELECT = (
    "SELECT b.id, d.name, b.image, b.hardware_type, b.server, " + ", ".join(f"b.{m}" for m in MILESTONES)
    + ", b.outcome FROM boots b LEFT JOIN devices d ON d.id = b.device_id"
)


def since(c: Cursor, cutoff: str) -> list[dict[str, Any]]:
    """Boots started at or after ``cutoff`` (at most :data:`SUMMARY_ROWS`, the newest)."""
    rows = c.execute(_SELECT + f" WHERE b.started >= ? ORDER BY b.id DESC LIMIT {SUMMARY_ROWS}", (cutoff,)).fetchall()
    return [_boot(r) for r in rows]


def latest(c: Cursor, device_id: int) -> dict[str, Any] | None:
    """The device's newest boot."""
    row = c.execute(_SELECT + " WHERE b.device_id = ? ORDER BY b.id DESC LIMIT 1", (device_id,)).fetchone()
    return None if row is None else _boot(row)


def purge_before(c: Cursor, cutoff: str, batch: int) -> int:
    """Delete up to ``batch`` boots started before ``cutoff``; how many went."""
    ids = [r[0] for r in c.execute(f"SELECT id FROM boots WHERE started < ? LIMIT {int(batch)}", (cutoff,)).fetchall()]
    if ids:
        c.execute(f"DELETE FROM boots WHERE id IN ({', '.join('?' * len(ids))})", ids)
    return len(ids)

"""The device columns LifeGuard reads and writes besides the machine row itself.

Each function runs inside one ``Database.runInteraction`` and returns plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from mozpool.bmm.interfaces import DeviceInfo
from mozpool.db import catalog, changes
from mozpool.db.pool import Cursor


@dataclass(frozen=True)
class DeviceFacts:
    """What the entry actions look at, read afresh in each operation (the row is the truth)."""

    info: DeviceInfo
    image: str | None
    image_has_sut_agent: bool
    next_image: str | None
    next_boot_config: str | None


def device_facts(c: Cursor, device_id: int) -> DeviceFacts | None:
    row = c.execute(
        "SELECT d.name, d.fqdn, d.mac_address, d.relay_info, i.name, i.has_sut_agent, n.name, d.next_boot_config"
        " FROM devices d"
        " LEFT JOIN images i ON i.id = d.image_id"
        " LEFT JOIN images n ON n.id = d.next_image_id"
        " WHERE d.id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    return DeviceFacts(
        info=DeviceInfo(name=row[0], fqdn=row[1], mac_address=row[2], relay_info=row[3] or None),
        image=row[4],
        image_has_sut_agent=bool(row[5]),
        next_image=row[6],
        next_boot_config=row[7],
    )


def pxe_contents(c: Cursor, device_id: int, image: str | None) -> str | None:
    """The PXE config text that boots ``image`` on this device's hardware; None is "NotFound"."""
    if image is None:
        return None
    found = catalog.pxe_config_for(c, device_id, image)
    return None if found is None else str(found["contents"])


def set_next(c: Cursor, device_id: int, image: str | None, boot_config: str | None) -> None:
    """next_image/next_boot_config; an image name with no row stores NULL."""
    image_id = None if image is None else c.scalar("SELECT id FROM images WHERE name = ?", (image,))
    c.execute(
        "UPDATE devices SET next_image_id = ?, next_boot_config = ? WHERE id = ?", (image_id, boot_config, device_id)
    )


def clear_image(c: Cursor, device_id: int, now: str) -> None:
    """The SD card is about to be (or has been) overwritten: what is on it is unknown.
    Journalled, so every server's pool view shows the image gone."""
    c.execute("UPDATE devices SET image_id = NULL, boot_config = NULL, pristine = 0 WHERE id = ?", (device_id,))
    changes.record(c, changes.DEVICE_ROW, now, device_id=device_id)


def promote_next(c: Cursor, device_id: int, now: str) -> bool:
    """image := next_image, then next := NULL/NULL, when next_image is set; True if it was.
    The device is pristine until a request is handed it (issue 14's warm pool)."""
    if c.scalar("SELECT next_image_id FROM devices WHERE id = ?", (device_id,)) is None:
        return False
    c.execute(
        "UPDATE devices SET image_id = next_image_id, boot_config = next_boot_config,"
        " next_image_id = NULL, next_boot_config = NULL, pristine = 1 WHERE id = ?",
        (device_id,),
    )
    changes.record(c, changes.DEVICE_ROW, now, device_id=device_id)  # the pool view shows the new image
    return True


def is_claimed(c: Cursor, device_id: int) -> bool:
    return c.scalar("SELECT COUNT(*) FROM device_requests WHERE device_id = ?", (device_id,)) != 0


def record_imaging_result(c: Cursor, device_id: int, result: str) -> tuple[int, str | None] | None:
    """Write ``result`` on the device's claim, then name the claiming request and its server.

    None when no request claims the device; the server is None when it is unknown."""
    c.execute("UPDATE device_requests SET imaging_result = ? WHERE device_id = ?", (result, device_id))
    row = c.execute(
        "SELECT dr.request_id, s.fqdn FROM device_requests dr"
        " LEFT JOIN requests r ON r.id = dr.request_id"
        " LEFT JOIN imaging_servers s ON s.id = r.imaging_server_id"
        " WHERE dr.device_id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    return int(row[0]), row[1]


def transient_devices(c: Cursor, server_fqdn: str, states: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, state) of this server's devices stored in one of ``states``."""
    marks = ", ".join("?" for _ in states)
    rows = c.execute(
        "SELECT d.name, d.state FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
        f" WHERE s.fqdn = ? AND d.state IN ({marks}) ORDER BY d.name",
        (server_fqdn, *states),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]

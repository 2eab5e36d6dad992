"""The rows BMM's facade reads and writes (mozpool.bmm.facade), so that no SQL sits inline in it.

Each function runs inside one ``Database.runInteraction`` and returns plain data.
"""

from __future__ import annotations

from mozpool.bmm.interfaces import DeviceInfo
from mozpool.db import catalog
from mozpool.db.pool import Cursor


def device_info(c: Cursor, name: str) -> DeviceInfo | None:
    """The device columns BMM needs, or None for an unknown name."""
    row = c.execute("SELECT name, fqdn, mac_address, relay_info FROM devices WHERE name = ?", (name,)).fetchone()
    return None if row is None else DeviceInfo(*row)


def prepare_power_cycle(c: Cursor, name: str, pxe_config: str, boot_config: str | None) -> str | None:
    """Store ``boot_config`` (None or "" clears it) as the device's next boot config; the
    contents of PXE config ``pxe_config``, or None when there is no such config."""
    cfg = catalog.get_pxe_config(c, pxe_config)
    c.execute("UPDATE devices SET next_boot_config = ? WHERE name = ?", (boot_config or None, name))
    return None if cfg is None else cfg["contents"]

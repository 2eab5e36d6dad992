"""A local file as the inventory, for small labs: CSV with a header row, or YAML (a list of
mappings, or ``devices:`` holding one), one device per row with the keys of :data:`COLUMNS`.
``power`` (a power location with its driver, ``pdudaemon://host:port/PDU/PORT``) may stand in
for ``relay``, and wins when a row has both.

``inventory_id`` may be left out: devices are then matched to the database by name
(:func:`mozpool.inventory.rules.assign_ids`), as a spreadsheet of host names suggests.  The file
is small and local, so it is read at once on the reactor thread.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from mozpool.inventory.model import InventoryError, System

COLUMNS = ("hostname", "inventory_id", "mac", "imaging_server", "relay", "power", "hardware_type", "hardware_model")
#: a CSV header must name these (a misspelt column would otherwise skip every device); ``power``
#: may stand in for ``relay``
REQUIRED = ("hostname", "mac", "imaging_server", "relay", "hardware_type")


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class FileInventory:
    field_names = {"relay_info": "relay", "imaging_server": "imaging_server", "mac": "mac",
                   "hardware_type": "hardware_type"}

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        return f"the file {self.path}"

    async def fetch(self) -> list[System]:
        try:
            with open(self.path, encoding="utf-8-sig") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InventoryError(f"cannot read {self.path}: {e}") from None
        if self.path.lower().endswith((".yaml", ".yml")):
            rows = self._yaml(text)
        else:
            rows = self._csv(text)
        return self._systems(rows)

    def _csv(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        reader = csv.DictReader(io.StringIO(text))
        header = [(h or "").strip().lower() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header and not (c == "relay" and "power" in header)]
        if missing:
            raise InventoryError(f"{self.path}: the header row lacks {', '.join(missing)} "
                                 f"(columns: {', '.join(COLUMNS)}; inventory_id and hardware_model optional,"
                                 " power may stand in for relay)")
        reader.fieldnames = header
        try:
            return [(f"line {reader.line_num}", row) for row in reader]
        except csv.Error as e:
            raise InventoryError(f"{self.path}: {e}") from None

    def _yaml(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InventoryError(f"{self.path}: {e}") from None
        if isinstance(data, dict) and "devices" in data:
            data = data["devices"]
        if data is None:
            data = []
        if not isinstance(data, list):
            raise InventoryError(f"{self.path}: expected a list of devices")
        rows = []
        for n, entry in enumerate(data, 1):
            if not isinstance(entry, dict):
                raise InventoryError(f"{self.path}: device {n} is not a mapping")
            unknown = sorted(str(k) for k in entry if k not in COLUMNS)
            if unknown:
                raise InventoryError(f"{self.path}: device {n}: unknown key {unknown[0]} (keys: {', '.join(COLUMNS)})")
            if isinstance(entry.get("mac"), int):
                raise InventoryError(f"{self.path}: device {n}: the MAC address read as a number; quote it")
            rows.append((f"device {n}", entry))
        return rows

    def _systems(self, rows: list[tuple[str, dict[str, Any]]]) -> list[System]:
        systems = []
        first: dict[Any, str] = {}
        for where, row in rows:
            hostname = _cell(row.get("hostname"))
            if hostname is None or hostname.startswith("#"):
                if any(_cell(v) for k, v in row.items() if k != "hostname") and hostname is None:
                    raise InventoryError(f"{self.path}: {where}: no hostname")
                continue
            inventory_id = _cell(row.get("inventory_id"))
            if inventory_id is not None:
                if not inventory_id.isdigit() or int(inventory_id) < 1:
                    raise InventoryError(f"{self.path}: {where}: inventory_id {inventory_id!r} is not a whole number above 0")
            for key in (("hostname", hostname.lower()), ("inventory_id", inventory_id)):
                if key[1] is not None:
                    if key in first:
                        raise InventoryError(f"{self.path}: {where}: {key[0]} {key[1]} is listed again (first at {first[key]})")
                    first[key] = where
            systems.append(System(
                hostname=hostname, inventory_id=int(inventory_id) if inventory_id else None, mac=_cell(row.get("mac")),
                imaging_server=_cell(row.get("imaging_server")),
                relay_info=_cell(row.get("power")) or _cell(row.get("relay")),
                hardware_type=_cell(row.get("hardware_type")), hardware_model=_cell(row.get("hardware_model")),
            ))
        return systems

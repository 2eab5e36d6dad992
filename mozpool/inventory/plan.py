"""The merge (spec bmm-protocols 7.5) and the failsafes (7.6), as one pure function of what the
database holds and what the inventory lists: the same for every source, testable without I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from mozpool.inventory.model import InventoryDevice, Skipped, SyncAborted
from mozpool.inventory.rules import Selection, assign_ids, derive_boards

#: the fields compared and written, per table (7.4's table; boards 1.6)
DEVICE_FIELDS = ("name", "fqdn", "inventory_id", "mac_address", "imaging_server", "relay_info", "hardware_type",
                 "hardware_model")
BOARD_FIELDS = ("name", "fqdn", "imaging_server")


@dataclass(frozen=True)
class DeviceRow:
    """A device as the database holds it, in the sync's fields."""

    id: int
    name: str
    fqdn: str
    inventory_id: int
    mac_address: str
    imaging_server: str
    relay_info: str | None
    hardware_type: str | None
    hardware_model: str | None


@dataclass(frozen=True)
class BoardRow:
    id: int
    name: str
    fqdn: str
    imaging_server: str


@dataclass(frozen=True)
class Change:
    """One insert, update or delete of one row: one transaction when applied."""

    action: str  # insert | update | delete
    table: str  # device | relay_board
    fqdn: str
    row_id: int | None = None
    #: insert: every field; update: the new values of the fields that differ; delete: the row
    values: Mapping[str, Any] = field(default_factory=dict)
    #: update: the old values of those fields
    before: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        text = f"{self.action} {self.table} {self.fqdn}"
        if self.action == "update":
            text += ": " + ", ".join(f"{k} {self.before[k]!r} -> {v!r}" for k, v in self.values.items())
        return text


@dataclass(frozen=True)
class ChangeSet:
    """What one run would do, and what it read to decide."""

    devices: list[Change]
    boards: list[Change]
    kept: list[InventoryDevice]
    skipped: list[Skipped]
    notes: list[str]
    #: devices in the database before the run
    db_devices: int

    @property
    def changes(self) -> list[Change]:
        """Every change, in the order they are applied: devices (deletes, updates, inserts, so a
        name a deleted device frees can be taken), then boards the same way."""
        return self.devices + self.boards

    def count(self, table: str, action: str) -> int:
        return sum(1 for c in self.changes if c.table == table and c.action == action)

    def abort_reason(self, ship_it: bool) -> str | None:
        """Why this change set must not be applied unattended (7.6), or None."""
        if ship_it:
            return None
        if not self.kept and self.db_devices:
            return (f"the inventory lists no devices ({len(self.skipped)} systems skipped): refusing to delete "
                    f"every device ({self.db_devices} in the database); pass --ship-it if that is right")
        limit = max(5, self.db_devices // 10, len(self.kept) // 10)
        if len(self.devices) > limit:
            return f"{len(self.devices)} changes: pass --ship-it to make these changes"
        return None


def _merge(table: str, fields: tuple[str, ...], key: str, db_rows: Iterable[Any],
           wanted: Iterable[Mapping[str, Any]]) -> list[Change]:
    """Deletes, updates, inserts that make ``db_rows`` equal ``wanted`` on ``fields``, matched by
    ``key``.  Rows sharing a key in the database (made by hand) beyond the first are deleted."""
    by_key: dict[Any, dict[str, Any]] = {}
    deletes: list[Change] = []
    for row in sorted(db_rows, key=lambda r: r.id):
        values = asdict(row)
        row_id = values.pop("id")
        if values[key] in by_key:
            deletes.append(Change("delete", table, values["fqdn"], row_id, values))
        else:
            by_key[values[key]] = {"id": row_id, **values}
    target = {w[key]: w for w in wanted}
    updates: list[Change] = []
    inserts: list[Change] = []
    for k, row in by_key.items():
        if k not in target:
            deletes.append(Change("delete", table, row["fqdn"], row["id"], {f: row[f] for f in fields}))
            continue
        new = {f: target[k][f] for f in fields if target[k][f] != row[f]}
        if new:
            updates.append(Change("update", table, target[k]["fqdn"], row["id"], new, {f: row[f] for f in new}))
    for k, w in target.items():
        if k not in by_key:
            inserts.append(Change("insert", table, w["fqdn"], None, {f: w[f] for f in fields}))
    order = lambda c: c.fqdn  # noqa: E731
    return sorted(deletes, key=order) + sorted(updates, key=order) + sorted(inserts, key=order)


def plan(db_devices: list[DeviceRow], db_boards: list[BoardRow], selection: Selection) -> ChangeSet:
    """The change set that brings the database in line with the inventory's kept systems;
    SyncAborted when the inventory contradicts itself (an id twice, a board on two servers)."""
    devices = assign_ids(selection.devices, {r.name: r.inventory_id for r in db_devices})
    twice = sorted(i for i, n in Counter(d.inventory_id for d in devices).items() if n > 1)
    if twice:
        raise SyncAborted(f"the inventory lists inventory id {twice[0]} more than once; nothing changed")
    boards, notes = derive_boards(devices)
    return ChangeSet(
        devices=_merge("device", DEVICE_FIELDS, "inventory_id", db_devices, [asdict(d) for d in devices]),
        boards=_merge("relay_board", BOARD_FIELDS, "fqdn", db_boards, [asdict(b) for b in boards]),
        kept=devices,
        skipped=selection.skipped,
        notes=notes,
        db_devices=len(db_devices),
    )

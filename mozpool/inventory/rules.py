"""The rules every source's systems go through (spec bmm-protocols 7.4), and the power
controllers derived from the kept devices (1.6): ProXR relay boards as ever, and for a
``relay_info`` naming another driver (``pdudaemon://host:port/PDU/PORT``) the controller that
driver names (``pdudaemon://host:port/PDU``).  Pure functions: no I/O, no clock."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from mozpool.bmm.power import controller_of
from mozpool.inventory.model import InventoryDevice, Skipped, SyncAborted, System

_HEX12 = re.compile(r"[0-9a-f]{12}\Z")
#: column widths the database holds (SQLite does not enforce them, so they are checked here)
LIMITS = {"name": 32, "fqdn": 256, "imaging_server": 255, "hardware_type": 32, "hardware_model": 32}
_LABELS = {"imaging_server": "imaging server", "hardware_type": "hardware type", "hardware_model": "hardware model"}


@dataclass(frozen=True)
class Selection:
    """The systems the sync keeps, and those it skips with the reason."""

    devices: list[InventoryDevice]
    skipped: list[Skipped]


def normalise_mac(mac: str) -> str:
    """``00:1A:2b-...`` -> ``001a2b...`` (separators removed, lower case)."""
    return re.sub(r"[:.\-\s]", "", mac).lower()


def _why_skipped(s: System, names: Mapping[str, str], ignore: re.Pattern[str] | None) -> str | None:
    if s.skip:
        return s.skip
    missing = [names.get(f, f) for f in ("relay_info", "imaging_server") if not getattr(s, f)]
    if missing:
        return "missing " + ", ".join(missing)
    if not s.mac:
        return f"no MAC address ({names.get('mac', 'mac')})"
    assert s.imaging_server is not None
    if ignore is not None and ignore.match(s.imaging_server):
        return f"ignored imaging server {s.imaging_server}"
    if not s.hardware_type:
        return f"no hardware type ({names.get('hardware_type', 'hardware_type')})"
    if not _HEX12.match(normalise_mac(s.mac)):
        return f"MAC address {s.mac!r} is not 12 hex digits"
    if not s.hostname.isascii() or not s.imaging_server.isascii():
        return "host name or imaging server is not ASCII"
    values = {"name": s.hostname.split(".", 1)[0], "fqdn": s.hostname, "imaging_server": s.imaging_server,
              "hardware_type": s.hardware_type, "hardware_model": s.hardware_model or ""}
    if not values["name"]:
        return "no host name"
    for key, limit in LIMITS.items():
        if len(values[key]) > limit:
            return f"{_LABELS.get(key, key)} {values[key]!r} is longer than {limit} characters"
    return None


def select(systems: Iterable[System], field_names: Mapping[str, str], ignore_re: str = "") -> Selection:
    """Keep or skip each system (7.4).  Two systems with one short name cannot both be devices:
    the one with the lowest inventory id is kept, the others skipped."""
    ignore = re.compile(ignore_re) if ignore_re else None
    kept: list[InventoryDevice] = []
    skipped: list[Skipped] = []
    for s in sorted(systems, key=lambda s: s.hostname):
        reason = _why_skipped(s, field_names, ignore)
        if reason:
            skipped.append(Skipped(s.hostname, reason))
            continue
        assert s.mac and s.imaging_server and s.relay_info and s.hardware_type
        kept.append(InventoryDevice(
            name=s.hostname.split(".", 1)[0], fqdn=s.hostname, inventory_id=s.inventory_id,
            mac_address=normalise_mac(s.mac), imaging_server=s.imaging_server, relay_info=s.relay_info,
            hardware_type=s.hardware_type, hardware_model=s.hardware_model or "",
        ))
    first: dict[str, InventoryDevice] = {}
    for d in sorted(kept, key=lambda d: (d.inventory_id is None, d.inventory_id or 0, d.fqdn)):
        if d.name in first:
            other = first[d.name]
            skipped.append(Skipped(d.fqdn, f"name {d.name} is already {other.fqdn}'s (inventory id {other.inventory_id})"))
        else:
            first[d.name] = d
    return Selection(sorted(first.values(), key=lambda d: d.fqdn), sorted(skipped, key=lambda s: s.hostname))


def assign_ids(devices: list[InventoryDevice], db_ids_by_name: Mapping[str, int]) -> list[InventoryDevice]:
    """Give devices listed without an inventory id (a file without that column) one: the id of
    the database's device of that name when no listed device claims it, else a new one past
    every id in use.  So a spreadsheet of host names keeps matching the same rows."""
    claimed = {d.inventory_id for d in devices if d.inventory_id is not None}
    next_id = max([0, *claimed, *db_ids_by_name.values()]) + 1
    out = []
    for d in devices:
        if d.inventory_id is None:
            found = db_ids_by_name.get(d.name)
            if found is not None and found not in claimed:
                d = replace(d, inventory_id=found)
            else:
                d = replace(d, inventory_id=next_id)
                next_id += 1
            claimed.add(d.inventory_id)  # type: ignore[arg-type]
        out.append(d)
    return out


@dataclass(frozen=True)
class Board:
    name: str
    fqdn: str
    imaging_server: str


def board_address(relay_info: str) -> str | None:
    """The board part of ``host[:port]:bankB:relayN`` (split from the right, 1.5), or None when
    ``relay_info`` is not of that form."""
    parts = relay_info.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not re.fullmatch(r"bank\d+", parts[1]) or not re.fullmatch(r"relay\d+", parts[2]):
        return None
    return parts[0]


def board_name(address: str) -> str:
    """The first DNS label of the board's host, with ``-<port>`` when the address has a port
    (1.6).  An IP address is not a DNS name: it is kept whole, so boards 10.0.0.5 and 10.0.0.6
    stay distinct."""
    host, _, port = address.partition(":")
    try:
        ipaddress.ip_address(host)
        label = host
    except ValueError:
        label = host.split(".", 1)[0]
    return f"{label}-{port}" if port else label


def controller_address(relay_info: str) -> str | None:
    """The power controller of a ``relay_info``: a ProXR board's ``host[:port]`` (as 1.6 has it),
    or what the driver its scheme names calls the controller; None when there is none."""
    if "://" in relay_info:
        return controller_of(relay_info)
    return board_address(relay_info)


def controller_name(controller: str) -> str:
    """A controller's ``relay_boards.name``: :func:`board_name` of a board's address, or of the
    last part of a controller with a scheme (a pdudaemon PDU's name), else of its host."""
    if "://" not in controller:
        return board_name(controller)
    split = urlsplit(controller)
    last = unquote(split.path.rstrip("/").rsplit("/", 1)[-1]) or split.hostname or controller
    return board_name(last)


def derive_boards(devices: Iterable[InventoryDevice]) -> tuple[list[Board], list[str]]:
    """One board per distinct board address among the kept devices, with their imaging server,
    and notes on devices that give no board.  A board wired to devices of two imaging servers
    aborts the run (7.4)."""
    boards: dict[str, Board] = {}
    names: dict[str, str] = {}
    left_out: set[str] = set()
    notes: list[str] = []
    for d in sorted(devices, key=lambda d: d.fqdn):
        address = controller_address(d.relay_info)
        if address is None:
            if "://" in d.relay_info:
                notes.append(f"{d.fqdn}: power location {d.relay_info!r} names no power controller MozPool knows;"
                             " no relay board for it")
            else:
                notes.append(f"{d.fqdn}: relay {d.relay_info!r} is not host[:port]:bankN:relayN; no relay board for it")
            continue
        if address in left_out:
            continue
        board = boards.get(address)
        if board is not None:
            if board.imaging_server != d.imaging_server:
                raise SyncAborted(
                    f"relay board {address} is wired to devices of two imaging servers "
                    f"({board.imaging_server} and {d.imaging_server}, e.g. {d.fqdn}); nothing changed"
                )
            continue
        name = controller_name(address)
        if not address.isascii() or len(address) > 255 or len(name) > 32:
            notes.append(f"relay board {address!r} cannot be stored (ASCII, 255 characters, name of 32); left out")
            left_out.add(address)
            continue
        if name in names:
            notes.append(f"relay boards {names[name]} and {address} would both be named {name}; {address} left out")
            left_out.add(address)
            continue
        names[name] = address
        boards[address] = Board(name, address, d.imaging_server)
    return [boards[a] for a in sorted(boards)], notes

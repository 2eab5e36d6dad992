"""What every inventory source produces, and the two ways a sync stops.

A source lists :class:`System` records, complete or not at all; the shared rules
(:mod:`mozpool.inventory.rules`) turn them into :class:`InventoryDevice` rows or skip them with
a reason, the same way whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol


class InventoryError(Exception):
    """The inventory could not be read completely (an HTTP error, a timeout, an answer of the
    wrong shape, an unreadable file).  Nothing is changed after one."""


class SyncAborted(Exception):
    """The run stopped on purpose, with the reason for the operator (a failed fetch, the
    failsafe, a board on two servers, a part-way failure)."""


class LeaseHeld(SyncAborted):
    """Another run (this server's or another's) holds the sync's lease."""


@dataclass(frozen=True)
class System:
    """One system as a source lists it, before the rules of spec 7.4 keep or skip it.  A field
    the source does not have is None."""

    hostname: str
    #: the source's key for the system; None only from a file without an inventory_id column
    inventory_id: int | None
    mac: str | None = None
    imaging_server: str | None = None
    relay_info: str | None = None
    hardware_type: str | None = None
    hardware_model: str | None = None
    #: a reason only the source can judge (decommissioned, several MACs, ...): skip with it
    skip: str | None = None


@dataclass(frozen=True)
class InventoryDevice:
    """A kept system: exactly the device columns the sync owns (spec 7.4's table)."""

    name: str
    fqdn: str
    inventory_id: int | None
    mac_address: str
    imaging_server: str
    relay_info: str
    hardware_type: str
    hardware_model: str


@dataclass(frozen=True)
class Skipped:
    hostname: str
    reason: str


class InventorySource(Protocol):
    """One place the device list comes from.  A typing Protocol rather than a zope Interface:
    sources are plain classes that type checkers match by shape; nothing adapts or registers them."""

    #: how this source names the fields a system may lack (relay_info, imaging_server, mac,
    #: hardware_type), for the skip reasons an operator reads
    field_names: Mapping[str, str]

    def describe(self) -> str:
        """Where the list comes from, for log lines."""

    async def fetch(self) -> list[System]:
        """Every system the inventory lists (its filter applied), or InventoryError: never a part."""

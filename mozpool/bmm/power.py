"""The power drivers, and the one :class:`IPowerControl` the daemon uses: each device's operation
goes to the driver its ``relay_info`` names.

A ``relay_info`` is ``SCHEME://...``: ``proxr://host[:port]/BANK/RELAY`` (a ProXR relay board,
``mozpool.bmm.relay``), ``pdudaemon://host[:port]/PDU/PORT`` (a PDU or smart plug behind
pdudaemon, ``mozpool.bmm.pdudaemon``).  A string without a scheme is ProXR's
``host[:port]:bankB:relayN`` (spec bmm-protocols 1.5), so every existing row keeps working.

Each driver's client is made once (lazily), so its per-controller queues are shared by every
device; a pool may mix drivers.  Adding a driver is one module with a ``DRIVER =
PowerDriver(scheme, parse, make)`` and one line in :data:`drivers`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from zope.interface import implementer

from mozpool.bmm import pdudaemon, relay
from mozpool.bmm.interfaces import (
    DriverContext,
    IPowerControl,
    Location,
    PowerConfigError,
    PowerDriver,
    PowerLocation,
    PowerResult,
)
from mozpool.logconfig import Logger

log = Logger()

#: scheme -> driver: the registry
drivers: dict[str, PowerDriver] = {d.scheme: d for d in (
    relay.DRIVER,
    pdudaemon.DRIVER,
)}

#: the driver of a ``relay_info`` (or controller) without a scheme
DEFAULT_SCHEME = relay.SCHEME


def scheme_of(text: str) -> str:
    """The scheme a ``relay_info`` or controller address names (lower-cased), or the default."""
    head, sep, _ = text.strip().partition("://")
    return head.lower() if sep else DEFAULT_SCHEME


def driver_for(text: str, table: Mapping[str, PowerDriver] | None = None) -> PowerDriver:
    table = drivers if table is None else table
    scheme = scheme_of(text)
    driver = table.get(scheme)
    if driver is None:
        raise PowerConfigError(f"unknown power driver {scheme!r} in {text.strip()!r} (known: {', '.join(sorted(table))})")
    return driver


def parse_location(relay_info: Optional[str], table: Mapping[str, PowerDriver] | None = None) -> PowerLocation:
    """The device's power location, parsed by its driver; PowerConfigError when it has none or
    it cannot be used."""
    if relay_info is None or not relay_info.strip():
        raise PowerConfigError("no relay configured")
    return driver_for(relay_info, table).parse(relay_info.strip())


def controller_of(relay_info: Optional[str]) -> Optional[str]:
    """The controller (``relay_boards.fqdn``) of a ``relay_info``, or None when it has none."""
    try:
        return parse_location(relay_info).controller
    except PowerConfigError:
        return None


def kind_of(controller: str) -> str:
    """What a controller is, for people: "ProXR relay board", "pdudaemon PDU"."""
    driver = drivers.get(scheme_of(controller))
    return driver.kind if driver is not None else "power controller"


@implementer(IPowerControl)
class PowerControl:
    """Dispatches each operation to the device's driver.  ``table`` defaults to :data:`drivers`."""

    def __init__(self, context: DriverContext, table: Mapping[str, PowerDriver] | None = None) -> None:
        self.context = context
        self.table = dict(drivers if table is None else table)
        #: scheme -> the driver's client, made on first use
        self.clients: dict[str, IPowerControl] = {}

    def client(self, scheme: str) -> IPowerControl:
        found = self.clients.get(scheme)
        if found is None:
            found = self.clients[scheme] = self.table[scheme].make(self.context)
        return found

    def _dispatch(self, location: Location, what: str,
                  op: Callable[[IPowerControl, PowerLocation], Deferred[PowerResult]]) -> Deferred[PowerResult]:
        if location is not None and not isinstance(location, str):
            return op(self.client(location.scheme), location)
        try:
            parsed = parse_location(location, self.table)
        except PowerConfigError as e:
            log.warn("{what}: {reason}", what=what, reason=str(e))
            return succeed(PowerResult(False, str(e)))
        return op(self.client(parsed.scheme), parsed)

    def power_on(self, location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return self._dispatch(location, "power on", lambda c, where: c.power_on(where, deadline))

    def power_off(self, location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return self._dispatch(location, "power off", lambda c, where: c.power_off(where, deadline))

    def power_cycle(self, location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return self._dispatch(location, "power-cycle", lambda c, where: c.power_cycle(where, deadline))

    def get_status(self, location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        return self._dispatch(location, "get_status", lambda c, where: c.get_status(where, deadline))

    def test_controller(self, controller: str, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        try:
            scheme = driver_for(controller, self.table).scheme
        except PowerConfigError as e:
            return succeed(PowerResult(False, str(e)))
        return self.client(scheme).test_controller(controller, deadline)

    def drained(self) -> Deferred[None]:
        """Fires when every driver's queued operations have finished (shutdown, tests)."""
        waits = [c.drained() for c in self.clients.values() if hasattr(c, "drained")]
        return DeferredList(waits).addCallback(lambda _: None)

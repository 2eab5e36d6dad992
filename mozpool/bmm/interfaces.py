"""What the layers above need from BMM, as one interface over the wire-level clients.

LifeGuard drives devices only through :class:`IDeviceHardware`; the implementation
(``mozpool.bmm.facade``) combines the power drivers (:class:`IPowerControl`: ProXR relay boards,
pdudaemon), ping, the SUT agent client and the PXE files, and logs every outcome against the
device.  Tests give LifeGuard a recording fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Union

from twisted.internet.defer import Deferred
from zope.interface import Interface


@dataclass(frozen=True)
class DeviceInfo:
    """The device columns BMM needs."""

    name: str
    fqdn: str
    mac_address: str
    relay_info: str | None


# --------------------------------------------------------------------------- power control
#
# Power is switched by drivers, one per kind of controller (a ProXR relay board, pdudaemon and
# the PDUs behind it, ...).  A device's ``relay_info`` names its driver by a scheme
# (``proxr://host:port/bank/relay``, ``pdudaemon://host:port/pdu-name/port``); a string without
# one is ProXR's ``host[:port]:bankB:relayN``.  The registry of drivers is
# ``mozpool.bmm.power``.


class PowerConfigError(ValueError):
    """A ``relay_info`` (or a controller address) a driver cannot use: a per-device
    configuration error, never raised out of BMM."""


@dataclass(frozen=True)
class PowerResult:
    """Outcome of one power operation.  Truthiness is ``ok``.

    - ``reason``: why it failed, for the caller's log;
    - ``status``: the device's power read back (``True`` on, ``False`` off) after a successful
      ``get_status``, else ``None``;
    - ``note``: what the caller should know about a success, e.g. ``no read-back`` from a
      driver that cannot check that the outlet really switched.
    """

    ok: bool
    reason: str = ""
    status: Optional[bool] = None
    note: str = ""

    def __bool__(self) -> bool:
        return self.ok


class PowerLocation(Protocol):
    """Where one device's power is switched, as a driver parses its ``relay_info``."""

    #: the driver's scheme (``proxr``, ``pdudaemon``, ...)
    @property
    def scheme(self) -> str: ...

    #: the controller the outlet is on, as ``relay_boards.fqdn`` names it: operations on one
    #: controller are serialised, the lab map groups by it, the relay test takes it
    @property
    def controller(self) -> str: ...

    #: the outlet on that controller, for people (``bank 2 relay 5``, ``3``)
    @property
    def outlet(self) -> str: ...


Location = Union[str, PowerLocation, None]


class IPowerControl(Interface):
    """Power control of devices, as LifeGuard and the web API need it; every driver and the
    registry that dispatches to them provide it.

    Every method returns a Deferred that fires with a :class:`PowerResult` within the method's
    deadline (``deadline`` overrides the driver's default), queue time included, and never
    errbacks.  ``location`` is the ``relay_info`` text (``None``/empty means "no relay
    configured") or a location the driver parsed.
    """

    def power_on(location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        """Give the device power."""

    def power_off(location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        """Take the device's power away."""

    def power_cycle(location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        """Power off, pause, power on; verified by reading the outlet back where the driver can
        (else the result's ``note`` says ``no read-back``)."""

    def get_status(location: Location, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        """Read the device's power into ``PowerResult.status``; a driver without read-back
        fails with a reason saying so."""

    def test_controller(controller: str, deadline: Optional[float] = None) -> Deferred[PowerResult]:
        """Check that a controller (a ``relay_boards.fqdn``) answers, without switching
        anything."""


@dataclass(frozen=True)
class DriverContext:
    """What a driver may need to build its client, once per daemon."""

    #: the reactor (IReactorTime and IReactorTCP): every deadline runs on it
    reactor: Any
    #: a treq-like HTTP client (``get`` returning responses with ``code`` and ``content()``)
    http: Any = None
    #: True under ``--fakes``: the far ends are simulated, so pauses scale with ``time_scale``
    simulated: bool = False
    time_scale: float = 1.0


@dataclass(frozen=True)
class PowerDriver:
    """One row of the driver registry (``mozpool.bmm.power.drivers``)."""

    scheme: str
    #: ``relay_info`` -> the driver's location; PowerConfigError when it cannot be used
    parse: Callable[[str], PowerLocation]
    #: the driver's client for the whole daemon (one, so its per-controller queues are shared)
    make: Callable[[DriverContext], IPowerControl]
    #: a word for people: "ProXR relay board", "pdudaemon PDU"
    kind: str = "power controller"


class IDeviceHardware(Interface):
    """Bounded hardware operations on one device.  No method raises: failures fire False
    (or are logged), within the operation's bound."""

    def power_cycle(device: DeviceInfo) -> Any:
        """Relay off, verify, pause, on, verify.  Deferred[bool]: True when the cycle completed."""

    def power_off(device: DeviceInfo) -> Any:
        """Turn the relay off.  Deferred[bool]."""

    def ping(device: DeviceInfo) -> Any:
        """Deferred[bool]: the device answered (bounded at 10 s)."""

    def sut_verify(device: DeviceInfo) -> Any:
        """Deferred[bool]: the SUT agent answered with the device root."""

    def sut_sdcard_check(device: DeviceInfo) -> Any:
        """Deferred[bool]: a small file written through the SUT agent came back intact."""

    def set_pxe(device: DeviceInfo, contents: str) -> None:
        """Write the device's PXE config file (``%IPADDRESS%`` substituted), atomically."""

    def clear_pxe(device: DeviceInfo) -> None:
        """Remove the device's PXE config file; a missing file is fine."""


class IBMM(Interface):
    """Hardware actions on devices and relay boards of this server."""

    def power_cycle(name: str, pxe_config: str | None, boot_config: str | None) -> Any:
        """Set up the PXE config (or remove it when ``pxe_config`` is None), store
        ``boot_config`` (None or "" clears it) as the next boot config when ``pxe_config`` is
        given, then *start* a relay power-cycle.  Fires when started."""

    def power_off(name: str) -> Any:
        """Start turning the device's relay off.  Fires when started."""

    def clear_pxe(name: str) -> Any:
        """Remove the device's PXE config file."""

    def ping(name: str) -> Any:
        """Ping the device; fires with a bool within 10 s."""

    def relay_test(relay: str) -> Any:
        """Check the power controller (relay board, pdudaemon PDU) of that name answers;
        fires with a bool within about 11 s."""

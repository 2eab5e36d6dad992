"""What the layers above need from BMM, as one interface over the wire-level clients.

LifeGuard drives devices only through :class:`IDeviceHardware`; the implementation
(``mozpool.bmm.facade``) combines the ProXR relay client, ping, the SUT agent client and the
PXE files, and logs every outcome against the device.  Tests give LifeGuard a recording fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zope.interface import Interface


@dataclass(frozen=True)
class DeviceInfo:
    """The device columns BMM needs."""

    name: str
    fqdn: str
    mac_address: str
    relay_info: str | None


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
        """Check the relay board answers; fires with a bool within about 11 s."""

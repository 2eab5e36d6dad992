"""The seams between the HTTP API and the layers that act: MozPool's broker, LifeGuard and BMM.

The API validates everything it can from the database and the body, then calls one method of one
of these collaborators.  Each method returns a Deferred; the exceptions below are the only
failures the API turns into a status of its own (anything else is a 500, i.e. a bug).
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface


class DeviceHeld(Exception):
    """Request creation named a device held by another open request (HTTP 409).

    The request was still created (and closed); ``request`` is its public object (spec 3.4)."""

    def __init__(self, message: str, request: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class StateMismatch(Exception):
    """A conditional state change found the device in another state (HTTP 409)."""

    def __init__(self, device: str, current: str, expected: str) -> None:
        super().__init__(f"{device} is in state {current}, not {expected}")
        self.device = device
        self.current = current
        self.expected = expected


class IBroker(Interface):
    """MozPool's request layer (requests and their state machines), owner of the requests."""

    def create_request(
        device: str, assignee: str, duration: int, image: str, environment: str, boot_config: str
    ) -> Any:
        """Create a request owned by this server and apply ``find_device``.

        ``device`` is a name or ``"any"``; ``environment`` is ``"any"`` for no restriction;
        ``boot_config`` is JSON text.  Fires with the public request object (spec 3.4), or fails
        with :class:`DeviceHeld`."""

    def renew(request_id: int, duration: int) -> Any:
        """Set ``expires`` to now + ``duration`` seconds.  Fires with None."""

    def return_request(request_id: int) -> Any:
        """Apply ``close``.  Fires with None."""

    def request_event(request_id: int, event: str, body: dict[str, Any]) -> Any:
        """Feed ``event`` (with its already validated body) to the request's machine."""


class ILifeGuard(Interface):
    """The device state machines of this server."""

    def device_event(name: str, event: str, body: dict[str, Any]) -> Any:
        """Feed ``event`` to the device's machine; events the state ignores are logged only.

        For ``please_image`` the body holds a string ``image`` and a JSON-text ``boot_config``."""

    def state_change(name: str, old: str, new: str) -> Any:
        """Enter ``new`` if the device is in ``old`` (or ``unknown``/unrecognised); fails with
        :class:`StateMismatch` otherwise."""


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

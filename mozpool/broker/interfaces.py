"""What the HTTP API asks of the MozPool layer."""

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


class IBroker(Interface):
    """MozPool's request layer (requests and their state machines), owner of the requests."""

    def create_request(
        device: str, assignee: str, duration: int, image: str, environment: str, boot_config: str,
        created_by: str | None = None,
    ) -> Any:
        """Create a request owned by this server and apply ``find_device``.

        ``device`` is a name or ``"any"``; ``environment`` is ``"any"`` for no restriction;
        ``boot_config`` is JSON text; ``created_by`` names the token that asked (a ``user`` may
        renew and return only its own requests).  Fires with the public request object (spec 3.4), or fails
        with :class:`DeviceHeld`."""

    def renew(request_id: int, duration: int) -> Any:
        """Set ``expires`` to now + ``duration`` seconds.  Fires with None."""

    def return_request(request_id: int) -> Any:
        """Apply ``close``.  Fires with None."""

    def request_event(request_id: int, event: str, body: dict[str, Any]) -> Any:
        """Feed ``event`` (with its already validated body) to the request's machine."""

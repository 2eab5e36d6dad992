"""What the HTTP API asks of the MozPool layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zope.interface import Interface


@dataclass(frozen=True)
class RequestSpec:
    """What a new request asks for (spec http-api.md 3.4), as the HTTP API validated it."""

    assignee: str
    #: seconds until the request expires unless renewed
    duration: int
    image: str
    #: ``"any"`` for no restriction
    environment: str = "any"
    #: JSON text of exactly the image's ``boot_config_keys``
    boot_config: str = "{}"
    #: the token that asked (a ``user`` may renew and return only its own requests); None: no token
    created_by: str | None = None
    #: 0-100: higher is served first (issue 14)
    priority: int = 50
    #: seconds to wait for a device before failing with failed_device_busy
    queue_timeout: int = 600


class DeviceHeld(Exception):
    """Request creation named a device held by another open request (HTTP 409).

    The request was still created (and closed); ``request`` is its public object (spec 3.4)."""

    def __init__(self, message: str, request: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class IBroker(Interface):
    """MozPool's request layer (requests and their state machines), owner of the requests."""

    def create_request(device: str, spec: RequestSpec) -> Any:
        """Create a request for ``device`` (a name or ``"any"``) owned by this server and apply
        ``find_device``.  Fires with the public request object (spec 3.4), or fails with
        :class:`DeviceHeld`."""

    def renew(request_id: int, duration: int) -> Any:
        """Set ``expires`` to now + ``duration`` seconds.  Fires with None."""

    def return_request(request_id: int) -> Any:
        """Apply ``close``.  Fires with None."""

    def request_event(request_id: int, event: str, body: dict[str, Any]) -> Any:
        """Feed ``event`` (with its already validated body) to the request's machine."""

    def queue_place(request_id: int) -> Any:
        """Fires with where a waiting request stands in the queue (``position``, ``ahead``,
        ``eta``, ``why``), or None when it is not waiting for a device."""

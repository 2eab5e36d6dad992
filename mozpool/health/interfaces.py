"""What the HTTP API and the UI ask of the health layer."""

from __future__ import annotations

from typing import Any

from zope.interface import Interface


class IHealth(Interface):
    """Explanations and boot telemetry over the whole pool (every server's devices and requests)."""

    def explain_device(name: str) -> Any:
        """A Deferred firing with why the device is in its state and what happens next
        (``/api/device/{device}/why/``); fails with UnknownObject for an unknown device."""

    def explain_request(request_id: int) -> Any:
        """The same for a request (``/api/request/{id}/why/``)."""

    def boot_summary(hours: int) -> Any:
        """A Deferred firing with p50/p95 of each boot phase per image and hardware type, over the
        boots started in the last ``hours`` (``/api/pool/boots/``, ``/metrics``)."""

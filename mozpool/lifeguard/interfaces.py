"""What the HTTP API asks of LifeGuard."""

from __future__ import annotations

from typing import Any

from zope.interface import Interface


#: The live-boot protocol's events (state-machines.md 3): what a device posts about itself while
#: its live image runs.  A device's per-boot token may post these and nothing else.
DEVICE_EVENTS = frozenset({
    "mobile_init_started", "android_downloading", "android_extracting", "android_rebooting",
    "b2g_downloading", "b2g_extracting", "b2g_rebooting", "maint_mode", "self_test_running",
    "self_test_ok", "failed_self_test",
})


class StateMismatch(Exception):
    """A conditional state change found the device in another state (HTTP 409)."""

    def __init__(self, device: str, current: str, expected: str) -> None:
        super().__init__(f"{device} is in state {current}, not {expected}")
        self.device = device
        self.current = current
        self.expected = expected


class ILifeGuard(Interface):
    """The device state machines of this server."""

    def device_event(name: str, event: str, body: dict[str, Any]) -> Any:
        """Feed ``event`` to the device's machine; events the state ignores are logged only.

        For ``please_image`` the body holds a string ``image`` and a JSON-text ``boot_config``."""

    def quarantine_status() -> Any:
        """Deferred of this server's quarantine cap: ``{"imaging_server", "quarantines", "cap",
        "window"}`` (nominal seconds), or None when fault isolation is off (issue 15)."""

    def state_change(name: str, old: str, new: str) -> Any:
        """Enter ``new`` if the device is in ``old`` (or ``unknown``/unrecognised); fails with
        :class:`StateMismatch` otherwise."""

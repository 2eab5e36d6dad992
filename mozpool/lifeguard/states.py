"""The device states, said once: every name, its nominal timeout and the groups it belongs to
(state-machines.md 1.3, http-api.md 6.2, and the two health states of issue 15).

The device machine (``lifeguard/machine.py``) builds its Automat states from :data:`TIMEOUTS`;
validation, the OpenAPI document and the UI import :data:`DEVICE_STATES` and the groups from
here, so a state added here is accepted, documented and shown everywhere at once.  This module
imports nothing, so the web layer can read it without the machine.
"""

from __future__ import annotations

#: Every device state and its nominal timeout in seconds (None: no timer), section 1.3.
TIMEOUTS: dict[str, float | None] = {
    # steady and initial
    "new": 0,
    "unknown": None,
    "locked_out": None,
    "troubleshooting": None,
    "ready": 600,
    # power-cycle-only path
    "pc_power_cycling": 60,
    "pc_rebooting": 120,
    "pc_pinging": 10,
    "pc_sut_rebooting": 10,
    # PXE path: entry points (transient)
    "start_pxe_boot": None,
    "start_self_test": None,
    "start_maintenance": None,
    # PXE path: boot and live image
    "pxe_power_cycling": 60,
    "pxe_booting": 180,
    "mobile_init_started": 10,
    # Android / B2G install
    "android_downloading": 180,
    "android_extracting": 600,
    "b2g_downloading": 180,
    "b2g_extracting": 300,
    # verification and wrap-up
    "sut_verifying": 45,
    "sut_verify_power_cycle": 60,
    "sut_sdcard_verifying": 200,
    "operation_complete": 60,
    # maintenance and self-test
    "maintenance_mode": None,
    "self_test_running": 3600,
    # health (issue 15): waiting for a suspect power controller, or held past the server's cap.
    # Their timers are safety nets; the held timer is the configured window (DeviceKind).
    "board_suspect": 3600,
    "held": 600,
    # failure states: no timer
    "failed_power_cycling": None,
    "failed_pxe_booting": None,
    "failed_mobile_init_started": None,
    "failed_sut_verifying": None,
    "failed_sut_sdcard_verifying": None,
    "failed_android_downloading": None,
    "failed_android_extracting": None,
    "failed_android_pinging": None,
    "failed_b2g_downloading": None,
    "failed_b2g_extracting": None,
    "failed_b2g_pinging": None,
    "failed_self_test": None,
}

#: Every device state name: the valid ``{new}`` of a state change.
DEVICE_STATES = frozenset(TIMEOUTS)

FAILED_STATES = tuple(s for s in TIMEOUTS if s.startswith("failed_"))

#: Public states (http-api.md 6.2) besides the ``failed_`` ones.
PUBLIC_STATES = ("new", "ready", "maintenance_mode", "locked_out", "troubleshooting", "unknown")

#: Health states (issue 15): the device is not judged while its power controller is suspect
#: (``board_suspect``), or waits past the server's cap on automatic quarantines (``held``).
HEALTH_STATES = ("board_suspect", "held")

#: The states LifeGuard passes through while working (transient in http-api.md 6.2).
TRANSIENT_STATES = tuple(
    s for s in TIMEOUTS if s not in PUBLIC_STATES and s not in HEALTH_STATES and s not in FAILED_STATES
)

#: Failure states whose entry goes straight on to a self-test (the request still hears
#: ``failed-bad-device``).
AUTO_SELF_TEST = frozenset(
    {
        "failed_sut_verifying",
        "failed_sut_sdcard_verifying",
        "failed_android_downloading",
        "failed_android_extracting",
        "failed_android_pinging",
        "failed_b2g_downloading",
        "failed_b2g_extracting",
        "failed_b2g_pinging",
    }
)

#: States that accept all four please_* events, and those that accept the basic two (1.2); the
#: health states accept the basic two, so an operator can always test or service a device.
FULL_PLEASE = ("new", "unknown", "troubleshooting", "ready")
BASIC_PLEASE = ("maintenance_mode", "self_test_running", *HEALTH_STATES, *FAILED_STATES)

#: States whose entry action always moves on: a row left in one by a crash has no deadline,
#: so the service re-enters them at start-up.
TRANSIENT = ("start_pxe_boot", "start_self_test", "start_maintenance")

#: States waiting for a person besides the ``failed_`` ones (the UI's "needs a person").
PARKED_STATES = ("locked_out", "troubleshooting", "unknown", "held")

assert set(PUBLIC_STATES) | set(HEALTH_STATES) | set(TRANSIENT_STATES) | set(FAILED_STATES) == DEVICE_STATES

"""Boot telemetry (issue 15): for every PXE boot, the times MozPool itself observes -- the power
cycle, the PXE config fetched over our own TFTP server, each live-boot event, SUT verification --
stored per boot (:mod:`mozpool.db.boots`) and summarised per image and hardware type (p50/p95 of
each phase), so a slow image or a slow network shows up before devices start failing.

Two hooks feed it, both wired by the tap:

- :meth:`BootTelemetry.observe` sees every device transition inside the transaction that writes
  it (``MachineRunner.observers``): entering ``pxe_power_cycling`` starts a boot, the live-boot
  events and verification mark its milestones, ``ready`` or a failure ends it;
- :meth:`BootTelemetry.tftp_read` is the TFTP server's ``on_read`` hook: a completed read of
  ``pxelinux.cfg/01-<mac>`` marks the PXE config fetched.
"""

from __future__ import annotations

import math
import re
from calendar import timegm
from datetime import datetime, timedelta
from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.db import boots, history
from mozpool.db.pool import Cursor, Database
from mozpool.logconfig import Logger
from mozpool.timeutil import DB_FORMAT, deadline_text, utcnow

log = Logger()

#: Where a boot's transition marks a milestone: (from state, to state) -> milestone.
MARKS = {
    ("pxe_power_cycling", "pxe_booting"): "power_on",
    ("pxe_booting", "mobile_init_started"): "init_started",
    ("mobile_init_started", "android_downloading"): "stage_started",
    ("mobile_init_started", "b2g_downloading"): "stage_started",
    ("mobile_init_started", "self_test_running"): "stage_started",
    ("mobile_init_started", "maintenance_mode"): "stage_started",
    ("android_downloading", "android_extracting"): "extracting",
    ("b2g_downloading", "b2g_extracting"): "extracting",
    ("android_extracting", "sut_verifying"): "rebooting",
    ("b2g_extracting", "sut_verifying"): "rebooting",
    ("sut_verifying", "sut_sdcard_verifying"): "sut_verified",
    ("sut_sdcard_verifying", "operation_complete"): "sdcard_verified",
}
#: The states a PXE boot passes through; leaving them ends the boot.
BOOT_PATH = frozenset({
    "pxe_power_cycling", "pxe_booting", "mobile_init_started", "android_downloading", "android_extracting",
    "b2g_downloading", "b2g_extracting", "sut_verifying", "sut_verify_power_cycle", "sut_sdcard_verifying",
    "operation_complete", "self_test_running",
})
#: Phases of a boot: (name, from milestone, to milestone).  ``total`` counts completed boots only.
PHASES = (
    ("power_cycle", "started", "power_on"),
    ("pxe_fetch", "power_on", "pxe_fetched"),
    ("live_boot", "pxe_fetched", "init_started"),
    ("second_stage", "init_started", "stage_started"),
    ("download", "stage_started", "extracting"),
    ("extract", "extracting", "rebooting"),
    ("reboot", "rebooting", "sut_verified"),
    ("sdcard_check", "sut_verified", "sdcard_verified"),
    ("total", "started", "ended"),
)
QUANTILES = (0.5, 0.95)
#: A boot's PXE config file under the TFTP root (spec bmm-protocols.md: pxelinux.cfg/01-<mac>).
_PXE_FILE = re.compile(r"^/?pxelinux\.cfg/01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})$")
#: The window /metrics summarises, in hours; and how long one summary is reused.
METRICS_HOURS = 24
SUMMARY_CACHE_SECONDS = 30.0


def actions(old: str | None, new: str) -> list[tuple[str, str]]:
    """What a device transition does to its boots: ("start", ""), ("mark", milestone) or
    ("end", outcome), in order."""
    if new == "pxe_power_cycling":
        return [("start", "")]
    done: list[tuple[str, str]] = []
    milestone = MARKS.get((old or "", new))
    if milestone is not None:
        done.append(("mark", milestone))
    if old in BOOT_PATH and new not in BOOT_PATH:
        # ready after an install or a self-test; maintenance_mode is the maintenance image up
        done.append(("end", "complete" if new in ("ready", "maintenance_mode") else new))
    return done


def _seconds(text: Any) -> float | None:
    if text is None:
        return None
    text = str(text)
    try:
        whole = datetime.strptime(text[:19], DB_FORMAT)
    except ValueError:
        return None
    fraction = float("0" + text[19:]) if len(text) > 20 and text[19] == "." else 0.0
    return timegm(whole.timetuple()) + fraction


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted ``values`` (not empty)."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def summarise(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per image and hardware type: boots, outcomes, and count/p50/p95/max seconds per phase."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    for boot in rows:
        key = (boot.get("image") or "unknown", boot.get("hardware_type") or "unknown")
        group = groups.setdefault(key, {"image": key[0], "hardware_type": key[1], "boots": 0, "outcomes": {}})
        group["boots"] += 1
        outcome = boot.get("outcome") or "running"
        group["outcomes"][outcome] = group["outcomes"].get(outcome, 0) + 1
        for phase, start, end in PHASES:
            if phase == "total" and boot.get("outcome") != "complete":
                continue
            a, b = _seconds(boot.get(start)), _seconds(boot.get(end))
            if a is not None and b is not None and b >= a:
                samples.setdefault(key, {}).setdefault(phase, []).append(round(b - a, 3))
    out = []
    for key in sorted(groups):
        phases = {}
        for phase, _, _ in PHASES:
            values = sorted(samples.get(key, {}).get(phase, []))
            if values:
                phases[phase] = {"count": len(values), "p50": quantile(values, 0.5), "p95": quantile(values, 0.95),
                                 "max": values[-1], "sum": round(sum(values), 3)}
        out.append({**groups[key], "phases": phases})
    return out


class BootTelemetry:
    """Records boots as the machines and the TFTP server observe them; summarises them."""

    def __init__(self, db: Database, clock: IReactorTime) -> None:
        self.db = db
        self.clock = clock
        #: TFTP reads being recorded (waited for by tests and at shutdown)
        self.writes: set[defer.Deferred[Any]] = set()
        self._cached: tuple[float, int, dict[str, Any]] | None = None

    # -- recording ------------------------------------------------------------------------------

    def observe(self, c: Cursor, entry: history.Entry) -> None:
        """A :data:`mozpool.statemachine.queries.Observer`: runs in the transition's transaction."""
        if entry.kind != history.DEVICE:
            return
        for what, value in actions(entry.old, entry.new):
            if what == "start":
                boots.start(c, entry.object_id, entry.server, entry.ts)
            elif what == "mark":
                boots.mark(c, entry.object_id, value, entry.ts)
            else:
                boots.end(c, entry.object_id, entry.ts, value)

    def tftp_read(self, filename: str, host: str) -> None:
        """The TFTP server's hook, called when it has sent a whole file: a device's PXE config
        marks its open boot's ``pxe_fetched``.  Never raises; the write is not awaited."""
        found = _PXE_FILE.match(filename)
        if found is None:
            return
        mac = found.group(1).replace("-", "")
        d = self.db.runInteraction(_fetched, mac, deadline_text(self.clock.seconds()))
        self.writes.add(d)

        def done(result: Any) -> Any:
            self.writes.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.warn("boot telemetry: PXE read by {host} not recorded: {error}",
                                        host=host, error=f.getErrorMessage()))

    # -- reading ----------------------------------------------------------------------------------

    async def summary(self, hours: int = METRICS_HOURS) -> dict[str, Any]:
        """Boots started in the last ``hours``, summarised (reused for a few seconds: a scrape and
        the UI ask often, the answer changes slowly)."""
        now = self.clock.seconds()
        if self._cached is not None and self._cached[1] == hours and now - self._cached[0] < SUMMARY_CACHE_SECONDS:
            return self._cached[2]
        cutoff = (utcnow(self.clock) - timedelta(hours=hours)).strftime(DB_FORMAT)
        rows = await self.db.runInteraction(boots.since, cutoff)
        result = {"hours": hours, "since": cutoff.replace(" ", "T"), "groups": summarise(rows)}
        self._cached = (now, hours, result)
        return result


def _fetched(c: Cursor, mac: str, ts: str) -> bool:
    device_id = boots.device_by_mac(c, mac)
    return device_id is not None and boots.mark(c, device_id, "pxe_fetched", ts)

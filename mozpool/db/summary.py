"""The pool summary report: every device in exactly one category."""

from __future__ import annotations

from typing import Any, Iterable

from mozpool.db import catalog, history
from mozpool.db.pool import Cursor, Database

CATEGORIES = ("in_use", "idle", "processing", "failed")


def category(state: str, held: bool) -> str:
    if state.startswith("failed_"):
        return "failed"
    if held:
        return "in_use"
    if state == "ready":
        return "idle"
    return "processing"


#: The columns of a summary row, in the order :func:`report` reads them.
ROW_SQL = (
    "SELECT d.name, d.state, h.type, s.fqdn, d.environment, d.comments, dr.request_id, d.failure"
    " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
    " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
    " LEFT JOIN device_requests dr ON dr.device_id = d.id ORDER BY d.name"
)


def report(rows: Iterable[tuple], servers: Iterable[dict[str, Any]], dead_before: str | None) -> dict[str, Any]:
    """The summary of ``rows`` (as :data:`ROW_SQL`, in name order) and ``servers`` (as
    ``catalog.server_list``): the one conversion the database path and the pool view
    (mozpool.web.poolview) share.  A row's eighth column, when there is one, is the device's
    stored failure summary (mozpool.db.history): each failed device says why, and
    ``failure_phases`` counts the failed devices by the state they failed in."""
    by_category = {k: 0 for k in CATEGORIES}
    by_type: dict[str, dict[str, int]] = {}
    failed = []
    phases: dict[str, int] = {}
    total = 0
    for row in rows:
        name, state, hwtype, server, env, comments, request_id = row[:7]
        total += 1
        cat = category(state, request_id is not None)
        hwtype = hwtype or "unknown"
        by_category[cat] += 1
        t = by_type.setdefault(hwtype, {"total": 0, **{k: 0 for k in CATEGORIES}})
        t["total"] += 1
        t[cat] += 1
        if cat == "failed":
            failure = history.parse_failure(row[7] if len(row) > 7 else None, state)
            failed.append({"name": name, "state": state, "hardware_type": hwtype,
                           "imaging_server": server, "environment": env, "comments": comments, "failure": failure})
            phase = failure["phase"] if failure else "unknown"
            phases[phase] = phases.get(phase, 0) + 1
    unreachable = []
    if dead_before is not None:
        unreachable = [
            {"fqdn": s["fqdn"], "last_seen": s["last_seen"][:19].replace(" ", "T"), "devices": s["devices"]}
            for s in servers if s["last_seen"] is not None and s["last_seen"] < dead_before
        ]
    return {"total": total, "by_category": by_category, "by_hardware_type": by_type,
            "failed_devices": failed, "failure_phases": dict(sorted(phases.items())),
            "unreachable_servers": unreachable}


def pool_summary(db: Database, dead_before: str | None = None) -> Any:
    """Counts by category and hardware type, the failed devices, and the imaging servers silent
    since before ``dead_before`` with their devices (``generated_at`` is the caller's)."""

    def q(c: Cursor) -> dict[str, Any]:
        rows = c.execute(ROW_SQL).fetchall()
        return report(rows, catalog.server_list(c) if dead_before is not None else [], dead_before)

    return db.runInteraction(q)

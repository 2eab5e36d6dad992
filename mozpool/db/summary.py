"""The pool summary report: every device in exactly one category."""

from __future__ import annotations

from typing import Any

from mozpool.db import catalog
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


def pool_summary(db: Database, dead_before: str | None = None) -> Any:
    """Counts by category and hardware type, the failed devices, and the imaging servers silent
    since before ``dead_before`` with their devices (``generated_at`` is the caller's)."""

    def q(c: Cursor) -> dict[str, Any]:
        rows = c.execute(
            "SELECT d.name, d.state, h.type, s.fqdn, d.environment, d.comments, dr.request_id"
            " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
            " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id"
            " LEFT JOIN device_requests dr ON dr.device_id = d.id ORDER BY d.name"
        ).fetchall()
        by_category = {k: 0 for k in CATEGORIES}
        by_type: dict[str, dict[str, int]] = {}
        failed = []
        for name, state, hwtype, server, env, comments, request_id in rows:
            cat = category(state, request_id is not None)
            hwtype = hwtype or "unknown"
            by_category[cat] += 1
            t = by_type.setdefault(hwtype, {"total": 0, **{k: 0 for k in CATEGORIES}})
            t["total"] += 1
            t[cat] += 1
            if cat == "failed":
                failed.append({"name": name, "state": state, "hardware_type": hwtype,
                               "imaging_server": server, "environment": env, "comments": comments})
        unreachable = []
        if dead_before is not None:
            unreachable = [
                {"fqdn": s["fqdn"], "last_seen": s["last_seen"][:19].replace(" ", "T"), "devices": s["devices"]}
                for s in catalog.server_list(c) if s["last_seen"] is not None and s["last_seen"] < dead_before
            ]
        return {"total": len(rows), "by_category": by_category, "by_hardware_type": by_type,
                "failed_devices": failed, "unreachable_servers": unreachable}

    return db.runInteraction(q)

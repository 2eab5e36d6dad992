"""The UI's device tables served from the pool view (mozpool.web.poolview) instead of the
database: the same answers as their namesakes in :mod:`mozpool.web.ui.queries` (a test holds
each pair equal), with filtering, sorting and paging done in memory.

:data:`FROM_VIEW` maps each of those query functions to its counterpart here, so the UI swaps a
database read for a view read in one place (``OperatorUI._read``).
"""

from __future__ import annotations

from typing import Any, Callable

from mozpool.web.poolview import PoolView
from mozpool.web.ui import queries
from mozpool.web.ui.queries import PARKED_STATES, DeviceQuery

#: DEVICE_SORTS' columns as they appear in a UI row (the hardware type's raw value, NULL
#: included, sorts as SQL sorts it).
_SORT_FIELDS = {
    "name": "name", "state": "state", "category": "category", "hardware_type": "raw_hardware_type",
    "environment": "environment", "image": "image", "imaging_server": "imaging_server", "request": "request_id",
    "comments": "comments",
}


def _rows(view: PoolView) -> list[dict[str, Any]]:
    """Every device as a UI row, in name order, with its raw hardware type for sorting."""
    out = []
    for entry in view.entries():
        row = view.ui_row(entry)
        row["raw_hardware_type"] = view.raw_hardware_type(entry)
        out.append(row)
    return out


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("raw_hardware_type", None)
    return row


def _matches(row: dict[str, Any], query: DeviceQuery) -> bool:
    if query.name and query.name.lower() not in row["name"].lower():
        return False
    for key, value in query.filters.items():
        if key == "hardware_type":
            if row["raw_hardware_type"] != (None if value == "unknown" else value):
                return False
        elif row[key] != value:
            return False
    if query.held == "yes" and row["request_id"] is None:
        return False
    if query.held == "no" and row["request_id"] is not None:
        return False
    return True


def device_page(view: PoolView, query: DeviceQuery) -> tuple[list[dict[str, Any]], int]:
    """queries.device_page from memory: NULLs first ascending and last descending, the name
    breaking ties, as both back-ends order."""
    field = _SORT_FIELDS[query.sort]
    found = [r for r in _rows(view) if _matches(r, query)]
    found.sort(key=lambda r: (r[field] is not None, r[field] if r[field] is not None else 0, r["name"]),
               reverse=query.descending)
    start = (query.page - 1) * query.per_page
    return [_public(r) for r in found[start:start + query.per_page]], len(found)


def needs_a_human(view: PoolView, limit: int) -> tuple[list[dict[str, Any]], int]:
    """queries.needs_a_human from memory: failed devices first, then the parked ones."""
    failed, parked = [], []
    for entry in view.entries():
        if entry.state.startswith("failed_"):
            failed.append(entry)
        elif entry.state in PARKED_STATES:
            parked.append(entry)
    chosen = (failed + parked)[:limit]
    return [view.ui_row(e) for e in chosen], len(failed) + len(parked)


def category_counts(view: PoolView) -> dict[str, dict[str, int]]:
    """queries.category_counts from memory."""
    counts: dict[str, dict[str, int]] = {}
    for row in _rows(view):
        per_type = counts.setdefault(row["hardware_type"], {})
        per_type[row["category"]] = per_type.get(row["category"], 0) + 1
    return counts


def wired_devices(view: PoolView, server: str = "") -> list[dict[str, Any]]:
    """queries.wired_devices from memory."""
    return [_public(r) for r in _rows(view) if not server or r["imaging_server"] == server]


def down_servers(view: PoolView, dead_before: str | None) -> dict[str, str]:
    """queries.down_servers from memory (the view reads the heartbeats five times an interval)."""
    found = {}
    for fqdn, last_seen in view.servers.values():
        since = queries._down_since(last_seen, dead_before)
        if since is not None:
            found[fqdn] = since
    return found


FROM_VIEW: dict[Callable[..., Any], Callable[..., Any]] = {
    queries.device_page: device_page,
    queries.needs_a_human: needs_a_human,
    queries.category_counts: category_counts,
    queries.wired_devices: wired_devices,
    queries.down_servers: down_servers,
}

"""Retention: old log lines and long-expired requests are deleted by the daemon itself,
in small batches so no statement holds locks for long.  Idempotent, so several servers on one
database may all run it."""

from __future__ import annotations

from datetime import timedelta

from mozpool.db import boots, changes, history
from mozpool.db.pool import Cursor, Database
from mozpool.timeutil import dbtime, parse_dbtime

BATCH = 1000
#: The change journal is only read by live followers; a day covers any restart or outage.
CHANGE_RETENTION_DAYS = 1.0


def _cutoff(now: str, days: float) -> str:
    start = parse_dbtime(now)
    assert start is not None
    return dbtime(start - timedelta(days=days))


def _marks(ids: list) -> str:
    return ", ".join("?" * len(ids))


async def purge(db: Database, now: str, log_retention_days: float = 14, request_retention_days: float = 7) -> dict[str, int]:
    """Delete what is past retention; return how many rows of each kind went."""
    counts = {"device_logs": 0, "request_logs": 0, "requests": 0, "changes": 0, "state_history": 0, "boots": 0}
    change_cutoff = _cutoff(now, CHANGE_RETENTION_DAYS)
    while (n := await db.runInteraction(changes.purge_before, change_cutoff, BATCH)):
        counts["changes"] += n
    log_cutoff = _cutoff(now, log_retention_days)
    for table in ("device_logs", "request_logs"):

        def batch(c: Cursor, table: str = table) -> int:
            ids = [r[0] for r in c.execute(f"SELECT id FROM {table} WHERE ts < ? LIMIT {BATCH}", (log_cutoff,)).fetchall()]
            if ids:
                c.execute(f"DELETE FROM {table} WHERE id IN ({_marks(ids)})", ids)
            return len(ids)

        while (n := await db.runInteraction(batch)):
            counts[table] += n
    # The state history and boot telemetry (issue 15) are kept as long as the logs they cite.
    while (n := await db.runInteraction(history.purge_before, log_cutoff, BATCH)):
        counts["state_history"] += n
    while (n := await db.runInteraction(boots.purge_before, log_cutoff, BATCH)):
        counts["boots"] += n

    request_cutoff = _cutoff(now, request_retention_days)

    def request_batch(c: Cursor) -> tuple[int, int]:
        ids = [r[0] for r in c.execute(f"SELECT id FROM requests WHERE expires < ? LIMIT {BATCH}", (request_cutoff,)).fetchall()]
        if not ids:
            return 0, 0
        m = _marks(ids)
        held = [r[0] for r in c.execute(f"SELECT request_id FROM device_requests WHERE request_id IN ({m})", ids)
                .fetchall()]
        c.execute(f"DELETE FROM device_requests WHERE request_id IN ({m})", ids)
        for request_id in held:  # a claim going is journalled, as everywhere (the pool view follows it)
            changes.record(c, changes.REQUEST_DEVICE, now, request_id=int(request_id), device_id=None)
        c.flush_later()  # lines held back so far go before the logs do
        gone_logs = c.execute(f"DELETE FROM request_logs WHERE request_id IN ({m})", ids).rowcount
        c.execute(f"DELETE FROM requests WHERE id IN ({m})", ids)
        return len(ids), gone_logs

    while True:
        n, gone_logs = await db.runInteraction(request_batch)
        if not n:
            return counts
        counts["requests"] += n
        counts["request_logs"] += gone_logs

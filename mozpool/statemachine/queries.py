"""The SQL of a machine's persisted part, for either table (``devices`` or ``requests``): its
state, ``state_counters`` (JSON text) and ``state_timeout``, each change journalled and logged
in the transaction that makes it (spec state-machines.md R-1).

``table``, ``column`` and ``log_kind`` come from a :class:`~mozpool.statemachine.core.MachineKind`,
never from input.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from mozpool.db import changes, history, logs
from mozpool.db.pool import Cursor

#: Sees every transition inside the transaction that writes it (``observer(cursor, entry)``):
#: boot telemetry (mozpool.health.telemetry) is one.
Observer = Callable[[Cursor, history.Entry], None]


def load_row(c: Cursor, table: str, column: str, key: str) -> tuple[Any, ...] | None:
    """(id, key, state, counters text, timeout) of the machine addressed by ``key``, or None."""
    return c.execute(
        f"SELECT id, {column}, state, state_counters, state_timeout FROM {table} WHERE {column} = ?", (key,)
    ).fetchone()


def write_state(
    c: Cursor, table: str, log_kind: str, row_id: int, state: str, timeout: str | None, counters: str,
    now: str, log_lines: Sequence[str] = (), old_state: str | None = None,
    transition: history.Entry | None = None, observers: Sequence[Observer] = (), held: Sequence[logs.Line] = (),
) -> None:
    """Write state, deadline and counters, and :func:`record_state` the change, all in this one
    transaction."""
    c.execute(
        f"UPDATE {table} SET state = ?, state_timeout = ?, state_counters = ? WHERE id = ?",
        (state, timeout, counters, row_id),
    )
    record_state(c, log_kind, row_id, state, now, log_lines, old_state, transition, observers, held)


def record_state(
    c: Cursor, log_kind: str, row_id: int, state: str, now: str, log_lines: Sequence[str] = (),
    old_state: str | None = None, transition: history.Entry | None = None, observers: Sequence[Observer] = (),
    held: Sequence[logs.Line] = (),
) -> None:
    """What goes with a state's write: ``held`` lines (logged earlier in the operation) then
    ``log_lines`` to the machine's log; a change from ``old_state`` to the change journal; a
    ``transition`` to the state history (with the device's failure summary, which the journal
    carries too), shown to each of ``observers`` (boot telemetry)."""
    logs.add_lines(c, log_kind, row_id, held)
    failure = history.record(c, transition) if transition is not None else None
    if old_state is not None and old_state != state:
        extra = {"failure": failure} if failure is not None else {}
        changes.record(
            c, f"{log_kind}_state", now, **{f"{log_kind}_id": row_id}, state=state, old_state=old_state, **extra
        )
    for line in log_lines:
        logs.add_log(c, log_kind, row_id, "statemachine", line, now)
    if transition is not None:
        for observe in observers:
            observe(c, transition)


def set_counters(c: Cursor, table: str, row_id: int, counters: str) -> None:
    c.execute(f"UPDATE {table} SET state_counters = ? WHERE id = ?", (counters, row_id))


def due_keys(c: Cursor, table: str, column: str, server_fqdn: str, now: str) -> list[str]:
    """Keys of ``server_fqdn``'s machines whose deadline is ``now`` or earlier."""
    rows = c.execute(
        f"SELECT t.{column} FROM {table} t JOIN imaging_servers s ON s.id = t.imaging_server_id"
        " WHERE s.fqdn = ? AND t.state_timeout IS NOT NULL AND t.state_timeout <= ?",
        (server_fqdn, now),
    ).fetchall()
    return [str(r[0]) for r in rows]

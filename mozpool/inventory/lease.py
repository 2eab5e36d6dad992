"""A lease in the database: at most one holder at a time for work any server could do but only
one should (the inventory sync), whatever the number of servers on the database.

The row is taken with one guarded UPDATE (``... WHERE expires <= now``): InnoDB and SQLite both
apply it to the latest committed row under a write lock, so of two servers racing exactly one
sees a row to change.  The very first take inserts the row, and a duplicate-key error there is
"someone else has it" (spec 6.4: never check-then-insert).  Releasing moves ``expires`` to the
past and keeps the row, so later takes are always the single UPDATE.  A holder that dies keeps
the lease until it expires; holders must finish (or stop) their work before then.
"""

from __future__ import annotations

from dataclasses import dataclass

from mozpool.db.errors import Conflict
from mozpool.db.pool import Cursor

#: what a released lease's ``expires`` is set to
RELEASED = "1970-01-01 00:00:00"


@dataclass(frozen=True)
class Holder:
    holder: str
    expires: str


def take(c: Cursor, name: str, holder: str, now: str, until: str) -> Holder | None:
    """Take the lease ``name`` for ``holder`` until ``until`` when it is free (or expired at
    ``now``): None when taken, else who holds it."""
    c.execute("UPDATE leases SET holder = ?, expires = ? WHERE name = ? AND expires <= ?", (holder, until, name, now))
    if c.rowcount == 1:
        return None
    current = c.execute("SELECT holder, expires FROM leases WHERE name = ?", (name,)).fetchone()
    if current is not None:
        return Holder(current[0], str(current[1]))
    try:
        c.execute("INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)", (name, holder, until))
    except Conflict:
        return Holder("another server (taking it at this moment)", until)
    return None


def release(c: Cursor, name: str, holder: str) -> bool:
    """Give the lease back, if ``holder`` still holds it."""
    c.execute("UPDATE leases SET expires = ? WHERE name = ? AND holder = ?", (RELEASED, name, holder))
    return c.rowcount == 1


def holder_of(c: Cursor, name: str, now: str) -> Holder | None:
    """Who holds the lease now, or None."""
    row = c.execute("SELECT holder, expires FROM leases WHERE name = ? AND expires > ?", (name, now)).fetchone()
    return None if row is None else Holder(row[0], str(row[1]))

"""UTC times from an injected clock, in the two text forms the project uses.

The database stores ``YYYY-MM-DD HH:MM:SS``; the API writes ``YYYY-MM-DDTHH:MM:SS``.  "Now" always
comes from an ``IReactorTime`` so tests can drive it with ``task.Clock``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from twisted.internet.interfaces import IReactorTime

DB_FORMAT = "%Y-%m-%d %H:%M:%S"


def utcnow(clock: IReactorTime) -> datetime:
    """The clock's time as a naive UTC datetime, truncated to whole seconds."""
    return datetime.fromtimestamp(int(clock.seconds()), tz=timezone.utc).replace(tzinfo=None)


def dbtime(when: datetime) -> str:
    return when.strftime(DB_FORMAT)


def dbnow(clock: IReactorTime, offset: float = 0.0) -> str:
    """Now (plus ``offset`` seconds) in the database's text form."""
    return dbtime(utcnow(clock) + timedelta(seconds=offset))


def deadline_text(seconds: float) -> str:
    """An absolute POSIX time as a state deadline: the database form plus milliseconds (left out
    when zero, as MySQL's DATETIME(3) reads back), rounded up so a deadline never falls early
    (deadlines scaled by ``time_scale`` are often sub-second)."""
    millis = math.ceil(round(seconds * 1000, 3))
    whole, ms = divmod(millis, 1000)
    when = datetime.fromtimestamp(whole, tz=timezone.utc).replace(tzinfo=None)
    return f"{dbtime(when)}.{ms:03d}" if ms else dbtime(when)


def parse_dbtime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text[:19], DB_FORMAT)
    except ValueError:
        return None


def apitime(text: str | None) -> str | None:
    """Database time text to the API's ISO form; None stays None."""
    if text is None:
        return None
    return text[:19].replace(" ", "T")

"""UTC times from an injected clock, in the two text forms the project uses.

The database stores ``YYYY-MM-DD HH:MM:SS``; the API writes ``YYYY-MM-DDTHH:MM:SS``.  "Now" always
comes from an ``IReactorTime`` so tests can drive it with ``task.Clock``.
"""

from __future__ import annotations

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
